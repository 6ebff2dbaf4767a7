#!/usr/bin/env python3
"""Checks the bundled digits model against its committed reference data.

Usage: test_export_digits.py [--replica PATH_TO_corral-replica] [unittest options]

models/digits (config, ONNX graph, parity vectors, labels, weights, sample request)
and tests/data/digits_heldout.json are produced together by models/digits/train.py.
These tests catch any of them drifting from the others: the ONNX graph must
reproduce PyTorch's held-out logits and accuracy, the weights file must rebuild the
same network, and, given corral-replica, the replica must accept the published
version.
"""

import json
import os
import subprocess
import sys
import unittest
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import take_replica_arg  # noqa: E402
import testrun  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "digits"
HELDOUT = ROOT / "tests" / "data" / "digits_heldout.json"
REPLICA = os.environ.get("CORRAL_REPLICA") or None
# The operators engine v0 runs; the bundled model must stay within them.
ENGINE_V0_OPS = {"Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "Softmax", "Flatten",
                 "Reshape", "Identity", "Constant", "Dropout"}


class DigitsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ref = json.loads(HELDOUT.read_text())
        cls.cfg = json.loads((MODEL / "config.json").read_text())
        cls.x = np.asarray(cls.ref["inputs"], dtype=np.float32)

    def need_replica(self):
        if not REPLICA:
            self.skipTest("no corral-replica given (--replica or $CORRAL_REPLICA)")

    def test_reference_data_is_consistent(self):
        n = len(self.ref["labels"])
        self.assertEqual(self.x.shape, (n, 64))
        self.assertEqual(len(self.ref["logits"]), n)
        self.assertTrue(((self.x >= 0) & (self.x <= 16)).all(), "inputs are raw pixels 0..16")
        logits = np.asarray(self.ref["logits"], dtype=np.float32)
        self.assertEqual(logits.argmax(axis=1).tolist(), self.ref["predictions"])
        acc = float(np.mean(np.asarray(self.ref["predictions"]) == np.asarray(self.ref["labels"])))
        self.assertAlmostEqual(acc, self.ref["accuracy"], places=12)
        self.assertGreater(acc, 0.95)

    def test_config(self):
        self.assertEqual(self.cfg["name"], "digits")
        self.assertEqual(self.cfg["inputs"], [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
        self.assertEqual(self.cfg["outputs"], [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}])
        labels = (MODEL / self.cfg["labels"]).read_text().splitlines()
        self.assertEqual(labels, [str(i) for i in range(10)])

    def test_onnx_reproduces_heldout_logits(self):
        path = MODEL / "1" / "model.onnx"
        self.assertLess(path.stat().st_size, 100_000)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        self.assertLessEqual(ops, ENGINE_V0_OPS, "ops beyond engine v0: %s" % (ops - ENGINE_V0_OPS))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {"input": self.x})[0]
        np.testing.assert_allclose(got, np.asarray(self.ref["logits"], dtype=np.float32), atol=1e-4, rtol=0)
        self.assertEqual(got.argmax(axis=1).tolist(), self.ref["predictions"])

    def test_weights_rebuild_the_same_network(self):
        sys.path.insert(0, str(ROOT))
        try:
            from models.digits.model import build
        finally:
            sys.path.remove(str(ROOT))
        m = build()
        m.load_state_dict(torch.load(str(MODEL / "digits.pt"), map_location="cpu", weights_only=True))
        m.eval()
        with torch.no_grad():
            got = m(torch.from_numpy(self.x)).numpy()
        np.testing.assert_allclose(got, np.asarray(self.ref["logits"], dtype=np.float32), atol=1e-5, rtol=0)

    def test_parity_vectors_match_onnx(self):
        sess = ort.InferenceSession(str(MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        vdirs = sorted((MODEL / "1" / "vectors").iterdir(), key=lambda p: int(p.name))
        self.assertGreaterEqual(len(vdirs), 4)
        for d in vdirs:
            t_in, t_out = onnx.TensorProto(), onnx.TensorProto()
            t_in.ParseFromString((d / "input_0.pb").read_bytes())
            t_out.ParseFromString((d / "output_0.pb").read_bytes())
            self.assertEqual((t_in.name, t_out.name), ("input", "logits"))
            got = sess.run(["logits"], {"input": numpy_helper.to_array(t_in)})[0]
            np.testing.assert_allclose(got, numpy_helper.to_array(t_out), atol=self.cfg["parity"]["atol"], rtol=0)

    def test_sample_request(self):
        body = json.loads((MODEL / "sample.json").read_text())
        (inp,) = body["inputs"]
        self.assertEqual((inp["name"], inp["shape"], inp["datatype"]), ("input", [1, 64], "FP32"))
        self.assertEqual(inp["data"], self.ref["inputs"][0])
        readme = (MODEL / "README.md").read_text()
        self.assertIn("true label is **%d**" % self.ref["labels"][0], readme)

    def test_replica_verifies_published_version(self):
        self.need_replica()
        res = subprocess.run([REPLICA, "--verify", "--model-repo", str(ROOT / "models"), "--model", "digits",
                              "--version", "1", "--device", "cpu"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        self.assertEqual(res.returncode, 0, res.stdout.decode())


def main():
    global REPLICA
    REPLICA, rest = take_replica_arg(sys.argv[1:])
    argv = [sys.argv[0]] + rest
    prog = unittest.main(argv=argv, exit=False, verbosity=2)
    return testrun.verdict(prog.result)


if __name__ == "__main__":
    sys.exit(main())
