"""libcorral, its example and corralctl against a real router's RPC endpoint.

Usage: test_client.py BUILD_DIR REPO_ROOT
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_protocol_util import stop_and_check, make_repo, start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]


def run(*argv, timeout=60):
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


class Client(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-client-")
        make_repo(cls.tmp.name, ROOT)
        cls.c = start_cluster(BUILD, cls.tmp.name, [("digits", []), ("dtypes", []),
                                                    ("dtypes", [])], router_args=["--threads", "2"])

    @classmethod
    def tearDownClass(cls):
        try:
            stop_and_check(cls.c)
        finally:
            cls.tmp.cleanup()

    def test_thousand_async_requests(self):
        p = run(os.path.join(BUILD, "tests", "test_client_async"), self.c.rpc_url, timeout=120)
        print(p.stdout.strip())
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_example_program(self):
        p = run(os.path.join(BUILD, "client", "corral-client-example"), self.c.rpc_url)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("200 answered", p.stdout)

    def test_corralctl(self):
        ctl = os.path.join(BUILD, "client", "corralctl")
        sample = os.path.join(ROOT, "models", "digits", "sample.json")
        p = run(ctl, "infer", "--rpc", self.c.rpc_url, "--model", "digits", "--id", "ctl-1", sample)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual((out["model_name"], out["model_version"], out["id"]),
                         ("digits", "1", "ctl-1"))
        self.assertEqual(out["outputs"][0]["shape"], [1, 10])
        with open(os.path.join(ROOT, "models", "digits", "sample.label")) as f:
            label = int(f.read().split()[0])
        logits = out["outputs"][0]["data"]
        self.assertEqual(max(range(10), key=lambda k: logits[k]), label)
        p = run(ctl, "infer", "--rpc", self.c.rpc_url, "--model", "nosuch", sample)
        self.assertEqual(p.returncode, 1)
        self.assertIn("NOT_FOUND", p.stderr)
        p = run(ctl, "status", "--http", "127.0.0.1:%d" % self.c.port)
        self.assertEqual(p.returncode, 0, p.stderr)
        rows = [ln.split() for ln in p.stdout.splitlines()[1:] if "tcp://" in ln]
        self.assertEqual([r[2] for r in rows], ["ready"] * 3, p.stdout)
        self.assertIn("model dtypes: 2 ready replicas", p.stdout)
        p = run(ctl, "health", "--rpc", self.c.rpc_url)
        self.assertEqual((p.returncode, p.stdout), (0, "live: yes\nready: yes\n"))
        self.assertEqual(run(ctl, "frobnicate").returncode, 2)


if __name__ == "__main__":
    testrun.main()
