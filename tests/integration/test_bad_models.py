"""Bad model files make the replica exit non-zero with one line naming the
problem: truncated ONNX, an unsupported op, a missing initializer, parity
vectors that do not match, and a config that disagrees with the graph.

Usage: test_bad_models.py BUILD_DIR REPO_ROOT
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
REPLICA = os.path.join(BUILD, "replica", "corral-replica")


class BadModels(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="corral-badmodel-")
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(self.tmp, "digits"))
        self.model_path = os.path.join(self.tmp, "digits", "1", "model.onnx")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def run_replica(self, *mode, env=None):
        args = [REPLICA, "--model-repo", self.tmp, "--model", "digits"] + list(mode)
        p = subprocess.run(args, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **(env or {})))
        return p.returncode, p.stderr.strip().splitlines(), p.stdout

    def expect_failure(self, *words):
        for mode in (["--verify"], ["--listen", "tcp://127.0.0.1:0"]):
            rc, lines, _ = self.run_replica(*mode)
            self.assertNotEqual(rc, 0, "replica %s accepted a bad model" % mode)
            self.assertEqual(len(lines), 1, "expected one line, got %r" % lines)
            for w in words:
                self.assertIn(w.lower(), lines[0].lower(), lines[0])

    def edit_model(self, fn):
        m = onnx.load(self.model_path)
        fn(m)
        onnx.save(m, self.model_path)

    def test_good_model_verifies(self):
        rc, lines, out = self.run_replica("--verify")
        self.assertEqual(rc, 0, lines)
        self.assertIn("max abs diff", out)
        self.assertIn("logits", out)

    def test_truncated_onnx(self):
        with open(self.model_path, "rb") as f:
            data = f.read()
        with open(self.model_path, "wb") as f:
            f.write(data[: len(data) // 2])
        self.expect_failure("model.onnx")

    def test_unsupported_op(self):
        def fn(m):
            m.graph.node[-1].op_type = "FancyNewOp"
        self.edit_model(fn)
        self.expect_failure("FancyNewOp")

    def test_missing_initializer(self):
        removed = []

        def fn(m):
            init = m.graph.initializer[0]
            removed.append(init.name)
            m.graph.initializer.remove(init)
        self.edit_model(fn)
        self.expect_failure(removed[0])

    def test_parity_mismatch(self):
        path = os.path.join(self.tmp, "digits", "1", "vectors", "0", "output_0.pb")
        t = onnx.TensorProto()
        with open(path, "rb") as f:
            t.ParseFromString(f.read())
        arr = numpy_helper.to_array(t).copy()
        arr.flat[0] += 0.5
        with open(path, "wb") as f:
            f.write(numpy_helper.from_array(arr, t.name).SerializeToString())
        self.expect_failure("parity", "logits")

    def test_config_disagrees_with_graph(self):
        cfg_path = os.path.join(self.tmp, "digits", "config.json")
        with open(cfg_path) as f:
            text = f.read()
        with open(cfg_path, "w") as f:
            f.write(text.replace('"input"', '"pixels"'))
        self.expect_failure("config.json", "pixels")

    def test_cuda_without_device(self):
        # Devices are hidden, so this holds on a machine with a GPU too.
        rc, lines, _ = self.run_replica("--listen", "tcp://127.0.0.1:0", "--device", "cuda:0",
                                        env={"CUDA_VISIBLE_DEVICES": ""})
        self.assertNotEqual(rc, 0)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("cuda:0", lines[0])


if __name__ == "__main__":
    testrun.main()
