#!/usr/bin/env python3
"""corral's engine against ONNX Runtime and PyTorch on the same models, one thread each.

Usage: engine_vs_ort.py --build BUILD_DIR [--rows resnet18:1,mlp:64] [--min-seconds S]
                        [--rounds N] [--no-rss] [--docs docs/benchmarks.md]
(bench/engine_vs_ort.sh finds the python and the build directory and calls this.)

Each model of bench/models/zoo.py that a row names is exported once with
deploy/export/export.py (--seed 0) into WORK/models (default BUILD_DIR/bench-models).
Then, for every row, three timings of the same computation on the same .onnx file or
module, each in process after a warm-up, as the median of many runs:

  corral  corral-engine-bench (engine_run, --threads 1, OMP_NUM_THREADS=1)
  ort     onnxruntime.InferenceSession, intra- and inter-op threads 1, sequential
  torch   the zoo's nn.Module, torch.set_num_threads(1), inference_mode

The three run one after another, --rounds times, and each reports the median of the
medians of its rounds, so that a burst of other work on the machine is spread over
all of them. One line per row:

  model=resnet18 batch=1 corral_ms=... ort_ms=... torch_ms=... corral/ort=0.93

Then, unless --no-rss, one real corral-replica per model behind a real router
serves a few requests of each row's batch size and its resident memory is read
from /proc (VmRSS now, VmHWM the peak) next to the model's weights (the sum of its
initializers' bytes) and its largest plan arena (from the replica's metadata when
it reports one, else the arena_bytes corral-engine-bench printed for the model's rows). --docs FILE rewrites the "## Engine" section of FILE with the table.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from bench.models import zoo  # noqa: E402

EXPORT = ROOT / "deploy" / "export" / "export.py"
SEED = 0
DEFAULT_ROWS = "resnet18:1,resnet18:32,mobilenet_v2:1,mlp:1,mlp:64"
# The length of the transformer's sequences when a row names it.
SEQ_LEN = 16
# What the issue asks of the replica's memory: weights + largest arena + this.
RSS_SLACK = 30 << 20
LABELS = {"mlp": "MLP 784-512-10"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_rows(text):
    rows = []
    for item in text.split(","):
        name, _, b = item.partition(":")
        if name not in zoo.SPECS or not b.isdigit() or int(b) < 1:
            raise SystemExit("engine_vs_ort: row '%s' must be MODEL:BATCH with MODEL one of %s"
                             % (item, ", ".join(zoo.SPECS)))
        rows.append((name, int(b)))
    return rows


def export(name, repo, fresh):
    onnx_path = repo / name / "1" / "model.onnx"
    if onnx_path.is_file() and not fresh:
        return onnx_path
    spec = zoo.SPECS[name]
    cmd = [sys.executable, str(EXPORT), "--builder", "bench.models.zoo:%s" % name, "--seed", str(SEED),
           "--output", spec["output"], "--repo", str(repo), "--name", name, "--version", "1",
           "--overwrite", "--atol", "1e-3", "--no-verify-replica",
           # Unbatched, as the replica memory figures were measured: a batching section
           # would add a warmed plan per batch bucket.
           "--no-batching"]
    for s in spec["inputs"]:
        cmd += ["--input", s]
    log("exporting %s..." % name)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT))
    if res.returncode != 0:
        raise SystemExit("engine_vs_ort: exporting %s failed:\n%s" % (name, res.stdout[-3000:]))
    return onnx_path


def make_input(name, batch, rng):
    if name == "transformer":
        return rng.randint(0, zoo.TRANSFORMER_VOCAB, size=(batch, SEQ_LEN)).astype(np.int64)
    if name == "mlp":
        return rng.standard_normal((batch, 784)).astype(np.float32)
    return rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)


def time_loop(fn, min_runs, min_seconds, warmup=3):
    """Median milliseconds of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_corral(tool, onnx_path, name, batch, min_runs, min_seconds):
    """(median ms, plan arena bytes or None, None) or (None, None, why the engine could not run it)."""
    cmd = [str(tool), str(onnx_path), "--batch", str(batch), "--threads", "1", "--runs", str(min_runs),
           "--min-seconds", str(min_seconds), "--dyn", str(SEQ_LEN)]
    if name == "transformer":
        cmd += ["--int-max", str(zoo.TRANSFORMER_VOCAB)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    m = re.search(r"median_ms=([0-9.]+)", res.stdout)
    if res.returncode != 0 or not m:
        why = (res.stderr.strip().splitlines() or ["exit status %d" % res.returncode])[-1]
        return None, None, why
    a = re.search(r"arena_bytes=([0-9]+)", res.stdout)
    return float(m.group(1)), int(a.group(1)) if a else None, None


def ort_session(onnx_path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def scrub(msg, repo):
    """A message without this machine's paths: model files are named relative to the repository."""
    msg = msg.replace(str(repo) + os.sep, "")
    return re.sub(r"(?<![\w.])/\S*/", "", msg)


def fmt_ms(v):
    if v is None:
        return "n/a"
    return "%.4f" % v if v < 1 else "%.3f" % v if v < 100 else "%.1f" % v


def fmt_mb(v):
    if v is None:
        return "n/a"
    return "%.1f" % (v / (1 << 20)) if v >= (1 << 20) else "%.3f" % (v / (1 << 20))


def bench_rows(rows, paths, tool, args):
    import torch
    torch.set_num_threads(1)
    rng = np.random.RandomState(SEED)
    models, sessions, results = {}, {}, []
    for name, batch in rows:
        x = make_input(name, batch, rng)
        if name not in models:
            torch.manual_seed(SEED)
            models[name] = zoo.build(name).eval()
            sessions[name] = ort_session(paths[name])
        model, sess = models[name], sessions[name]
        in_name = sess.get_inputs()[0].name
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                model(xt)

        def run_ort():
            sess.run(None, {in_name: x})

        c_meds, o_meds, t_meds, why, arena = [], [], [], None, None
        repo = paths[name].parents[2]
        for _ in range(args.rounds):
            c, arena, why = time_corral(tool, paths[name], name, batch, args.min_runs, args.min_seconds)
            if c is not None:
                c_meds.append(c)
            o_meds.append(time_loop(run_ort, args.min_runs, args.min_seconds))
            t_meds.append(time_loop(run_torch, args.min_runs, args.min_seconds))
        why = scrub(why, repo) if why else None
        c = statistics.median(c_meds) if c_meds else None
        o = statistics.median(o_meds)
        t = statistics.median(t_meds)
        ratio = "%.2f" % (c / o) if c is not None else "n/a"
        print("model=%s batch=%d corral_ms=%s ort_ms=%s torch_ms=%s corral/ort=%s"
              % (name, batch, fmt_ms(c), fmt_ms(o), fmt_ms(t), ratio), flush=True)
        if why:
            log("  corral could not run %s: %s" % (name, why))
        results.append({"model": name, "batch": batch, "corral": c, "ort": o, "torch": t, "why": why,
                        "arena": arena})
    return results


def weights_bytes(onnx_path):
    import onnx
    from onnx import helper
    m = onnx.load(str(onnx_path), load_external_data=False)
    total = 0
    for t in m.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        total += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


def vector_batches(onnx_path):
    """Batch sizes of the parity vectors beside the model (the replica plans each at start)."""
    import onnx
    out = set()
    for f in sorted((onnx_path.parent / "vectors").glob("*/input_0.pb")):
        dims = onnx.load_tensor(str(f)).dims
        if dims:
            out.add(int(dims[0]))
    return out


def plan_arenas(tool, onnx_path, name, batches):
    """{batch: arena bytes of the engine's plan at that batch size}, from one run each."""
    out = {}
    for b in sorted(batches):
        _, arena, _ = time_corral(tool, onnx_path, name, b, 1, 0)
        if arena is not None:
            out[b] = arena
    return out


def find_arena(obj):
    """The largest number under a key naming an arena anywhere in a metadata answer."""
    best = None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if "arena" in str(k).lower():
                for num in re.findall(r"\d+", str(v)) if not isinstance(v, (int, float)) else [v]:
                    best = max(best or 0, int(num))
            sub = find_arena(v)
            if sub is not None:
                best = max(best or 0, sub)
    elif isinstance(obj, list):
        for v in obj:
            sub = find_arena(v)
            if sub is not None:
                best = max(best or 0, sub)
    return best


def measure_rss(rows, paths, repo, build, tool):
    from cluster import Cluster, ProcessFailed, infer_binary, proc_memory
    out = []
    rng = np.random.RandomState(SEED + 1)
    for name in dict.fromkeys(n for n, _ in rows):
        batches = sorted({1} | {b for n, b in rows if n == name})
        weights = weights_bytes(paths[name])
        rec = {"model": name, "weights": weights, "rss": None, "hwm": None, "arena": None, "why": None,
               "arena_all": None}
        # The replica keeps a plan for each shape it has run: the parity vectors' batch sizes
        # at start, then the requests'. Their arenas, as the engine reports them.
        arenas = plan_arenas(tool, paths[name], name, set(batches) | vector_batches(paths[name]))
        if arenas:
            rec["arena_all"] = sum(arenas.values())
        with Cluster(str(build), str(repo)) as c:
            try:
                # A batch of 32 images on one thread takes about a second: the stall limit
                # must not take that for a hung executor.
                c.replica(name, "--threads", "1", "--stall-ms", "600000")
                c.router()
                c.wait_ready()
                pid = c.replicas[0][1].p.pid
                for b in batches:
                    x = make_input(name, b, rng)
                    dt = "INT64" if x.dtype == np.int64 else "FP32"
                    in_name = zoo.SPECS[name]["inputs"][0].split(":")[0]
                    for _ in range(3):
                        status, body = infer_binary(c, name, [(in_name, dt, x)])
                        if status != 200:
                            raise ProcessFailed("infer at batch %d answered %d: %s" % (b, status, body))
                status, md = c.http("GET", "/v2/models/%s" % name)
                rec["arena"] = find_arena(md) if status == 200 else None
                if rec["arena"] is None and arenas:
                    rec["arena"] = max(arenas.values())
                mem = proc_memory(pid)
                rec["rss"], rec["hwm"] = mem.get("VmRSS"), mem.get("VmHWM")
            except (ProcessFailed, OSError) as ex:
                lines = [l for l in str(ex).splitlines() if l.strip()]
                rec["why"] = scrub(lines[-1] if lines else str(ex), repo)
        budget = weights + (rec["arena"] or 0) + RSS_SLACK
        verdict = "n/a" if rec["hwm"] is None or rec["arena"] is None else \
            ("ok" if rec["hwm"] <= budget else "over")
        print("model=%s rss_mb=%s hwm_mb=%s weights_mb=%s arena_mb=%s budget_mb=%s rss<=budget=%s "
              "all_plans_arena_mb=%s plan_batches=%s"
              % (name, fmt_mb(rec["rss"]), fmt_mb(rec["hwm"]), fmt_mb(weights), fmt_mb(rec["arena"]),
                 fmt_mb(budget) if rec["arena"] is not None else "n/a", verdict, fmt_mb(rec["arena_all"]),
                 ",".join(str(b) for b in sorted(arenas)) or "n/a"), flush=True)
        if rec["why"]:
            log("  replica for %s: %s" % (name, rec["why"]))
        out.append(rec)
    return out


def links_cuda(build):
    """True when corral-replica is linked against the CUDA libraries (a CORRAL_CUDA build)."""
    try:
        res = subprocess.run(["ldd", str(Path(build) / "replica" / "corral-replica")],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return False
    return "libcublas" in res.stdout or "libcudart" in res.stdout


def machine_line():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import onnxruntime
    import torch
    return "%s, %d cores visible; onnxruntime %s, torch %s" % (cpu, os.cpu_count() or 0,
                                                             onnxruntime.__version__, torch.__version__)


def markdown(results, rss, args, cuda_linked):
    lines = ["## Engine", "",
             "`bench/engine_vs_ort.sh`: the same .onnx file (exported from `bench/models/zoo.py` with",
             "`--seed 0`) timed in process, one thread each, after a warm-up: the median of %d"
             % args.rounds,
             "round%s of at least %d runs and %g s each, taken in turn for the three runtimes."
             % ("" if args.rounds == 1 else "s", args.min_runs, args.min_seconds),
             "corral: `corral-engine-bench` (engine_run); ONNX Runtime:",
             "intra- and inter-op threads 1, sequential, all graph optimizations; PyTorch:",
             "`torch.set_num_threads(1)`, eval, `inference_mode`.", "",
             "Measured on: %s." % machine_line(), "",
             "| model | batch | corral ms | ONNX Runtime ms | PyTorch ms | corral/ORT |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ratio = "%.2f" % (r["corral"] / r["ort"]) if r["corral"] is not None else "n/a"
        lines.append("| %s | %d | %s | %s | %s | %s |" % (LABELS.get(r["model"], r["model"]), r["batch"],
                                                          fmt_ms(r["corral"]), fmt_ms(r["ort"]),
                                                          fmt_ms(r["torch"]), ratio))
    notes = [r for r in results if r["why"]]
    if notes:
        lines.append("")
        for r in notes:
            lines.append("n/a: the engine could not run %s: %s" % (r["model"], r["why"]))
    if rss:
        lines += ["", "Replica memory: one `corral-replica --threads 1` per model after warm-up and three",
                  "requests of each batch size above (VmRSS and its peak VmHWM from /proc). The replica",
                  "keeps one plan per shape it has run: at start the parity vectors' batch sizes (1, 3,",
                  "8, 2), then the requests'. Largest arena: from the replica's metadata when it reports",
                  "one, else the largest `arena_bytes` (`engine_plan_info`) that `corral-engine-bench`",
                  "prints for those batch sizes; all plans: their sum. Target: peak RSS at most",
                  "weights + largest plan arena + 30 MB.",
                  "The replica measured was linked against the CUDA libraries (cudart, cuBLAS),\n"
                  "which it loads even with `--device cpu`." if cuda_linked else
                  "The replica measured was built without the CUDA backend (`-DCORRAL_CUDA=OFF`).", "",
                  "| model | RSS MB | peak RSS MB | weights MB | largest arena MB | weights + arena + 30 MB |"
                  " all plans' arenas MB |",
                  "|---|---|---|---|---|---|---|"]
        for r in rss:
            budget = r["weights"] + (r["arena"] or 0) + RSS_SLACK
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                LABELS.get(r["model"], r["model"]), fmt_mb(r["rss"]), fmt_mb(r["hwm"]), fmt_mb(r["weights"]),
                fmt_mb(r["arena"]), fmt_mb(budget) if r["arena"] is not None else "n/a",
                fmt_mb(r["arena_all"])))
        notes = [r for r in rss if r["why"]]
        if notes:
            lines.append("")
            for r in notes:
                lines.append("n/a: the replica for %s did not serve: %s" % (r["model"], r["why"]))
    return "\n".join(lines) + "\n"


def update_docs(path, section):
    """Replaces the '## Engine' section of the file (up to the next '## ' heading), or appends it."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    m = re.search(r"^## Engine[ \t]*\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if m:
        text = text[:m.start()] + section + ("\n" if text[m.end():] else "") + text[m.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", required=True, help="CMake build directory (bench/, replica/, router/)")
    p.add_argument("--work", help="where exported models go (default BUILD/bench-models)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help="MODEL:BATCH,... (default %s)" % DEFAULT_ROWS)
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three timings per row (default 3)")
    p.add_argument("--min-runs", type=int, default=10, help="timed runs per round at least (default 10)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="seconds per round at least (default 1)")
    p.add_argument("--fresh", action="store_true", help="export the models again even if present")
    p.add_argument("--no-rss", action="store_true", help="skip the replica memory measurement")
    p.add_argument("--no-timing", action="store_true", help="skip the timings (memory only)")
    p.add_argument("--docs", metavar="FILE", help="rewrite the '## Engine' section of FILE with the results")
    args = p.parse_args()
    if args.rounds < 1 or args.min_runs < 1 or args.min_seconds < 0:
        p.error("--rounds and --min-runs must be at least 1, --min-seconds at least 0")
    rows = parse_rows(args.rows)
    build = Path(args.build).resolve()
    tool = build / "bench" / "corral-engine-bench"
    if not os.access(tool, os.X_OK):
        p.error("%s is missing: build the corral-engine-bench target (bench/CMakeLists.txt)" % tool)
    repo = Path(args.work).resolve() / "models" if args.work else build / "bench-models"
    paths = {name: export(name, repo, args.fresh) for name in dict.fromkeys(n for n, _ in rows)}

    if not args.no_timing:
        log("timing (%d rounds, >= %d runs and >= %g s each): %s" % (args.rounds, args.min_runs,
                                                                    args.min_seconds, machine_line()))
    results = [] if args.no_timing else bench_rows(rows, paths, tool, args)
    rss = [] if args.no_rss else measure_rss(rows, paths, repo, build, tool)
    if rss:
        log("corral-replica %s linked against the CUDA libraries" % ("is" if links_cuda(build) else "is not"))
    if args.docs:
        update_docs(args.docs, markdown(results, rss, args, links_cuda(build)))
        log("wrote the Engine section of %s" % args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
