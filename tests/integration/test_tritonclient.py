"""The router driven by tritonclient.http, the client Triton users already have,
unmodified: server and model metadata, readiness, statistics, infer with JSON
and with binary tensor data, and classification.

Usage: test_tritonclient.py BUILD_DIR REPO_ROOT
"""
import json
import os
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_protocol_util import stop_and_check, DTYPES, make_repo, sample, start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]

try:
    import tritonclient.http as httpclient
except ImportError as exc:  # the venv always has it; reported to ctest as a skip if not
    testrun.skip_all("tritonclient is not installed (%s)" % exc)


class WithTritonClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-triton-")
        make_repo(cls.tmp.name, ROOT)
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            cls.ref = json.load(f)
        cls.c = start_cluster(BUILD, cls.tmp.name, [("digits", []), ("dtypes", [])])
        cls.client = httpclient.InferenceServerClient("127.0.0.1:%d" % cls.c.port)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        try:
            stop_and_check(cls.c)
        finally:
            cls.tmp.cleanup()

    def test_health_and_metadata(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("digits"))
        self.assertTrue(self.client.is_model_ready("digits", "1"))
        self.assertFalse(self.client.is_model_ready("nosuch"))
        sm = self.client.get_server_metadata()
        self.assertEqual(sm["name"], "corral")
        self.assertIn("binary_tensor_data", sm["extensions"])
        md = self.client.get_model_metadata("digits")
        self.assertEqual(md["inputs"][0], {"name": "input", "datatype": "FP32", "shape": [-1, 64]})
        self.assertEqual(self.client.get_model_metadata("digits", "1")["name"], "digits")

    def infer_digits(self, rows, binary_in, binary_out, class_count=0):
        x = np.array(rows, dtype=np.float32)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary_out,
                                              class_count=class_count)
        return self.client.infer("digits", [inp], outputs=[out], request_id="tc-1")

    def test_infer_json_and_binary(self):
        rows = self.ref["inputs"][:4]
        want = np.array(self.ref["logits"][:4], dtype=np.float32)
        for binary_in in (False, True):
            for binary_out in (False, True):
                res = self.infer_digits(rows, binary_in, binary_out)
                np.testing.assert_allclose(res.as_numpy("logits"), want, atol=1e-4)
                self.assertEqual(res.get_response()["id"], "tc-1")
        # No requested outputs: tritonclient asks for all of them as binary.
        x = np.array(rows, dtype=np.float32)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = self.client.infer("digits", [inp], model_version="1")
        np.testing.assert_allclose(res.as_numpy("logits"), want, atol=1e-4)

    def test_every_datatype_through_tritonclient(self):
        inputs, outputs = [], []
        for k, dt in enumerate(DTYPES):
            arr = sample(dt, json_safe=(k % 2 == 1))
            i = httpclient.InferInput("x_" + dt.lower(), [2, 3], dt)
            i.set_data_from_numpy(arr, binary_data=(k % 2 == 0))
            inputs.append((i, arr))
            outputs.append(httpclient.InferRequestedOutput("y_" + dt.lower(),
                                                           binary_data=(k % 3 == 0)))
        res = self.client.infer("dtypes", [i for i, _ in inputs], outputs=outputs)
        for (i, arr), dt in zip(inputs, DTYPES):
            np.testing.assert_array_equal(res.as_numpy("y_" + dt.lower()), arr, err_msg=dt)

    def test_classification(self):
        row = self.ref["inputs"][7]
        for binary_out in (False, True):
            res = self.infer_digits([row], True, binary_out, class_count=3)
            top = res.as_numpy("logits")
            self.assertEqual(top.shape, (1, 3))
            first = top[0][0]
            first = first.decode() if isinstance(first, bytes) else str(first)
            fields = first.split(":")
            self.assertEqual(int(fields[1]), self.ref["predictions"][7])
            self.assertAlmostEqual(float(fields[0]), max(self.ref["logits"][7]), places=4)

    def test_statistics(self):
        self.infer_digits(self.ref["inputs"][:1], True, True)
        st = self.client.get_inference_statistics("digits")
        entry = st["model_stats"][0]
        self.assertEqual(entry["name"], "digits")
        self.assertGreaterEqual(entry["inference_count"], 1)
        self.assertIn("compute_infer", entry["inference_stats"])

    def test_errors_raise(self):
        x = np.zeros((1, 63), dtype=np.float32)
        inp = httpclient.InferInput("input", [1, 63], "FP32")
        inp.set_data_from_numpy(x)
        with self.assertRaises(Exception) as cm:
            self.client.infer("digits", [inp])
        self.assertIn("64", str(cm.exception))
        with self.assertRaises(Exception):
            self.client.get_model_metadata("nosuch")


if __name__ == "__main__":
    testrun.main()
