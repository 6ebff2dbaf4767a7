"""`corral-scheduler --check FILE` as an operator runs it: the real binary on configs
that point at the repository's own models/ (digits, version 1), checked for exit
status, the printed plan (settings with defaults filled in, each replica's device and
cores) and the exact error lines of a bad config.

The scheduler places within the cores it may use (its affinity), so each run is pinned
to two cores the test chose, and the expected core sets follow from that choice, not
from the binary. GPUs come from a stub nvidia-smi on PATH, or CUDA_VISIBLE_DEVICES,
so the plan is the same with or without a real GPU.

Usage: test_sched_check.py BUILD_DIR REPO_ROOT
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
SCHED = os.path.join(BUILD, "scheduler", "corral-scheduler")
MODELS = os.path.realpath(os.path.join(ROOT, "models"))
ALLOWED = sorted(os.sched_getaffinity(0))
CORES = ALLOWED[:2]  # the two cores every run is pinned to


def cpus(cores):
    """[0, 1, 2, 5] as the plan writes it: "cpu:0-2,5"."""
    runs = []
    for c in sorted(cores):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "cpu:" + ",".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in runs)


class Check(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="corral-sched-check-")
        # A stub nvidia-smi that lists two GPUs, in nvidia-smi's own format.
        self.bin = os.path.join(self.tmp, "bin")
        os.mkdir(self.bin)
        smi = os.path.join(self.bin, "nvidia-smi")
        with open(smi, "w") as f:
            f.write("#!/bin/sh\n[ \"$1\" = -L ] || exit 1\n"
                    "echo 'GPU 0: Stub GPU (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n"
                    "echo 'GPU 1: Stub GPU (UUID: GPU-11111111-1111-1111-1111-111111111111)'\n")
        os.chmod(smi, 0o755)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def write(self, cfg, name="cluster.json"):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))
        return path

    def run_sched(self, *args, cuda_visible=None, cwd=None):
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        if cuda_visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = cuda_visible
        p = subprocess.run([SCHED] + list(args), capture_output=True, text=True, timeout=60,
                           env=env, cwd=cwd or self.tmp,
                           preexec_fn=lambda: os.sched_setaffinity(0, CORES))
        return p.returncode, p.stdout, p.stderr

    def plan_settings(self, out):
        """{"router.listen": "...", ...} from the plan's "KEY  VALUE" lines."""
        settings = {}
        for line in out.splitlines()[1:]:
            if line and not line.startswith(" ") and not line.startswith("models["):
                key, _, value = line.partition(" ")
                settings[key] = value.strip()
        return settings

    def replica_lines(self, out):
        return [line.split(None, 1) for line in out.splitlines() if line.startswith("  ")]

    def test_good_config_prints_the_plan(self):
        # A relative model_repository resolves against the config's folder, not the
        # current directory (here "/").
        rel = os.path.relpath(MODELS, self.tmp)
        path = self.write({"model_repository": rel,
                           "router": {"listen": "127.0.0.1:18000", "threads": 2},
                           "health": {"interval_ms": 250},
                           "models": [{"name": "digits", "version": 1, "replicas": 2,
                                       "devices": ["cpu"], "threads": 1}]})
        rc, out, err = self.run_sched("--check", path, cwd="/")
        self.assertEqual(rc, 0, err)
        self.assertEqual(err, "")
        self.assertEqual(out.splitlines()[0], "corral-scheduler: %s is valid; the plan "
                         "(--check starts nothing):" % os.path.realpath(path))
        s = self.plan_settings(out)
        expected = {
            "model_repository": MODELS,
            "router.listen": "127.0.0.1:18000",
            "router.rpc_listen": "tcp://127.0.0.1:8001",  # defaults from here on,
            "router.threads": "2",
            "router.control_listen": "127.0.0.1:8003",
            "admin.listen": "127.0.0.1:8002",
            "health.interval_ms": "250",
            "health.timeout_ms": "500",
            "health.failure_threshold": "3",
            "rollout.max_surge": "1",
            "rollout.drain_timeout_ms": "30000",
            "rollout.soak_ms": "2000",
            "rollout.canary_percent": "0 (no canary)",
            "rollout.ready_timeout_ms": "300000",
            "oversubscribe": "false",
        }
        for k, v in expected.items():
            self.assertEqual(s.get(k), v, "%s in\n%s" % (k, out))
        self.assertIn("2 cores this process may use (%s), 2 GPUs (nvidia-smi -L)" % cpus(CORES),
                      s["machine"])
        self.assertEqual(self.replica_lines(out), [
            ["digits#0", "device cpu, cores %s, --threads 1" % cpus(CORES[:1])],
            ["digits#1", "device cpu, cores %s, --threads 1" % cpus(CORES[1:])],
        ])
        self.assertEqual(s["total"], "2 CPU replicas on 2 of 2 cores, 0 GPU replicas on 0 of 2 GPUs")

    def test_gpu_and_fixed_placement(self):
        path = self.write({"model_repository": MODELS,
                           "models": [{"name": "digits", "version": 1, "replicas": 3,
                                       "devices": ["cuda:1", "cpu:%d" % CORES[1], "cuda:0"]}]})
        rc, out, err = self.run_sched("--check", path)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.replica_lines(out), [
            ["digits#0", "device cuda:1, CUDA_VISIBLE_DEVICES=1 (cuda:0 inside the replica), "
                         "--threads 1"],
            ["digits#1", "device cpu:%d, cores cpu:%d, --threads 1" % (CORES[1], CORES[1])],
            ["digits#2", "device cuda:0, CUDA_VISIBLE_DEVICES=0 (cuda:0 inside the replica), "
                         "--threads 1"],
        ])
        # With CUDA_VISIBLE_DEVICES set, cuda:N is its N-th entry, as for any CUDA program.
        rc, out, err = self.run_sched("--check", path, cuda_visible="GPU-abc,5")
        self.assertEqual(rc, 0, err)
        self.assertIn("CUDA_VISIBLE_DEVICES=5 (cuda:0", self.replica_lines(out)[0][1])
        self.assertIn("CUDA_VISIBLE_DEVICES=GPU-abc (cuda:0", self.replica_lines(out)[2][1])

    def test_bad_config_lists_every_error(self):
        path = self.write({"model_repository": MODELS,
                           "router": {"listen": "localhost", "rpc_listen": "ipc:///tmp/x"},
                           "rollout": {"max_surge": 1, "canary_percent": 10, "canary": 5},
                           "models": [{"name": "digits", "version": 7, "replicas": 1},
                                      {"name": "nosuch", "version": 1, "replicas": 1},
                                      {"name": "digits2", "version": 1, "replicas": "two",
                                       "devices": ["cuda:0"]}]})
        rc, out, err = self.run_sched("--check", path, cuda_visible="")
        self.assertEqual(rc, 1, err)
        self.assertEqual(out, "")
        self.assertEqual(err.splitlines(), [
            "corral-scheduler: %s: 8 errors; nothing was started" % os.path.realpath(path),
            "router.listen: expected HOST:PORT with a port from 0 to 65535 (e.g. "
            "127.0.0.1:8000, [::1]:8000), got \"localhost\"",
            "router.rpc_listen: expected tcp://HOST:PORT or \"off\" (e.g. tcp://127.0.0.1:8001), "
            "got \"ipc:///tmp/x\"",
            "rollout.canary: unknown key (expected one of max_surge, drain_timeout_ms, "
            "soak_ms, canary_percent, ready_timeout_ms)",
            "models[0].version: no version 7 of model 'digits': %s/digits/7/model.onnx does "
            "not exist" % MODELS,
            "models[1].name: no model 'nosuch' in the model repository: %s/nosuch/config.json "
            "does not exist" % MODELS,
            "models[2].replicas: expected an integer >= 0, got \"two\"",
            "models[2].name: no model 'digits2' in the model repository: "
            "%s/digits2/config.json does not exist" % MODELS,
            "models[2].devices[0]: cuda:0 is a device that does not exist (this machine has no "
            "GPU, per CUDA_VISIBLE_DEVICES)",
        ])

    def test_version_alias(self):
        """"version": "production" resolves through models/digits/aliases.json, and the plan
        says what it resolved to; an unknown alias names the file and the aliases there."""
        repo = os.path.join(self.tmp, "repo")
        d = os.path.join(repo, "digits")
        os.makedirs(d)
        shutil.copy(os.path.join(MODELS, "digits", "config.json"), d)
        for v in ("1", "3"):
            os.makedirs(os.path.join(d, v))
            shutil.copy(os.path.join(MODELS, "digits", "1", "model.onnx"), os.path.join(d, v))
        with open(os.path.join(d, "aliases.json"), "w") as f:
            json.dump({"production": 3, "staging": 1}, f)
        cfg = {"model_repository": repo,
               "models": [{"name": "digits", "version": "production", "replicas": 1}]}
        rc, out, err = self.run_sched("--check", self.write(cfg))
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^models\[0\] +digits version production \(3\): 1 replica, "
                              r"threads 1, devices cpu$")
        cfg["models"][0]["version"] = "prod"
        rc, out, err = self.run_sched("--check", self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertEqual(err.splitlines()[1:], [
            "models[0].version: no alias 'prod' in %s/digits/aliases.json (aliases: production, "
            "staging)" % os.path.realpath(repo)])

    def test_oversubscription(self):
        cfg = {"model_repository": MODELS,
               "models": [{"name": "digits", "version": 1, "replicas": 3}]}
        rc, out, err = self.run_sched("--check", self.write(cfg))
        self.assertEqual(rc, 1, out)
        self.assertEqual(err.splitlines()[1:], [
            "models: the CPU replicas need 3 cores (replicas x threads: digits 3 x 1) but this "
            "process may use 2 (%s); lower replicas or threads, or set \"oversubscribe\": true "
            "to share cores" % cpus(CORES)])
        cfg["oversubscribe"] = True
        rc, out, err = self.run_sched("--check", self.write(cfg))
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.replica_lines(out), [
            ["digits#0", "device cpu, cores %s, --threads 1, shared (oversubscribe)"
             % cpus(CORES[:1])],
            ["digits#1", "device cpu, cores %s, --threads 1" % cpus(CORES[1:])],
            ["digits#2", "device cpu, cores %s, --threads 1, shared (oversubscribe)"
             % cpus(CORES[:1])],
        ])

    def test_unreadable_and_malformed_files(self):
        rc, out, err = self.run_sched("--check", os.path.join(self.tmp, "absent.json"))
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("absent.json: cannot read the config: No such file or directory", err)
        path = self.write('{"models": [1,}')
        rc, out, err = self.run_sched("--check", path)
        self.assertEqual((rc, out), (1, ""))
        self.assertEqual(err.splitlines()[1], "%s: line 1, column 15: unexpected token near '}'"
                         % os.path.realpath(path))

    def test_usage(self):
        rc, out, err = self.run_sched("--help")
        self.assertEqual(rc, 0)
        self.assertIn("--check FILE", out)
        self.assertIn("--config FILE", out)
        for args in ([], ["--check"], ["--bogus"], ["--check", "a", "b"],
                     ["--check", "a", "--config", "a"], ["--check", "a", "--state-dir", "d"]):
            rc, out, err = self.run_sched(*args)
            self.assertEqual(rc, 2, "%s: %s" % (args, err))
            self.assertIn("usage: corral-scheduler", err)
        # --config validates as --check does and starts nothing on an error.
        path = self.write({"model_repository": MODELS, "models": [], "router": {"thread": 1}})
        rc, out, err = self.run_sched("--config", path, "--state-dir",
                                      os.path.join(os.path.dirname(path), "state"))
        self.assertEqual(rc, 1, err)
        self.assertIn("1 error; nothing was started", err)
        self.assertIn("router.thread: unknown key", err)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(path), "state")))

    def test_bundled_example_is_valid(self):
        # deploy/cluster.json, documented in docs/operations.md, must stay valid.
        rc, out, err = self.run_sched("--check", os.path.join(ROOT, "deploy", "cluster.json"))
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.plan_settings(out)["router.listen"], "127.0.0.1:8000")
        self.assertEqual(len(self.replica_lines(out)), 2)


if __name__ == "__main__":
    if len(ALLOWED) < 2:
        testrun.skip_all("these checks pin the scheduler to two cores; this process may use "
                         "only %s" % ALLOWED)
    testrun.main()
