"""Verification: does the exported model reproduce PyTorch's outputs?

Two independent runtimes answer: onnxruntime (the reference ONNX runtime, when it is
installed) and corral-replica --verify, which loads the version from the temporary
repository exactly as a serving replica would and replays its parity vectors. The
export is published only when both agree with PyTorch within --atol and --rtol.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from corral_export_common import REPO_ROOT, ExportError, log

def max_abs_diff(got, want):
    import numpy as np
    if got.shape != want.shape:
        return float("inf"), "shape %s, expected %s" % (list(got.shape), list(want.shape))
    if got.size == 0:
        return 0.0, None
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    d = np.where(both_nan, 0.0, np.abs(g - w))
    d = np.where(np.isnan(d), np.inf, d)
    return float(d.max()), None


def within(got, want, atol, rtol):
    import numpy as np
    if got.shape != want.shape:
        return False
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    ok = (np.abs(g - w) <= atol + rtol * np.abs(w)) | (np.isnan(g) & np.isnan(w)) | (g == w)
    return bool(ok.all())


def have_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        return False


def verify_onnxruntime(model_path, specs, out_names, vectors, atol, rtol):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    except Exception as ex:
        raise ExportError("onnxruntime cannot load the exported model: %s" % ex)
    worst = {n: 0.0 for n in out_names}
    failures = []
    for k, (ins, outs) in enumerate(vectors):
        try:
            got = sess.run(out_names, {s.name: a for s, a in zip(specs, ins)})
        except Exception as ex:
            raise ExportError("onnxruntime failed on parity vector %d (%s): %s"
                              % (k, ", ".join("%s%s" % (s.name, list(a.shape)) for s, a in zip(specs, ins)),
                                 str(ex).strip().splitlines()[0]))
        for n, g, w in zip(out_names, got, outs):
            d, why = max_abs_diff(g, w)
            worst[n] = max(worst[n], d)
            if why:
                failures.append("vector %d, output '%s': %s" % (k, n, why))
            elif not within(g, w, atol, rtol):
                failures.append("vector %d, output '%s': max abs diff %.3g" % (k, n, d))
    return worst, failures


def find_replica(args):
    if args.replica:
        if not os.path.isfile(args.replica) or not os.access(args.replica, os.X_OK):
            raise ExportError("--replica '%s' is not an executable file" % args.replica)
        return args.replica
    env = os.environ.get("CORRAL_REPLICA")
    if env:
        if not os.path.isfile(env) or not os.access(env, os.X_OK):
            raise ExportError("$CORRAL_REPLICA '%s' is not an executable file" % env)
        return env
    on_path = shutil.which("corral-replica")
    if on_path:
        return on_path
    local = REPO_ROOT / "build" / "replica" / "corral-replica"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    raise ExportError("cannot find corral-replica to verify the export (looked at --replica, $CORRAL_REPLICA, "
                      "PATH and %s); build it (cmake --build build --target corral-replica), point --replica "
                      "at it, or pass --no-verify-replica to verify with onnxruntime only" % local)


def verify_replica(binary, repo, name, version):
    cmd = [binary, "--verify", "--model-repo", str(repo), "--model", name, "--version", str(version),
           "--device", "cpu"]
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    except subprocess.TimeoutExpired:
        raise ExportError("corral-replica --verify did not finish within 600 s")
    except OSError as ex:
        raise ExportError("cannot run %s: %s" % (binary, ex))
    text = res.stdout.decode("utf-8", "replace").rstrip()
    for line in text.splitlines()[-40:]:
        log("  replica: " + line)
    return res.returncode, text
