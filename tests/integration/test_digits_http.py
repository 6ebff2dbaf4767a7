"""End to end: the bundled digits model served by two real replicas behind the
real router, every held-out sample sent over HTTP and checked against PyTorch.

Usage: test_digits_http.py BUILD_DIR REPO_ROOT
"""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
MODELS = os.path.join(ROOT, "models")


def infer_body(rows, name="input", datatype="FP32", shape=None, id=None):
    body = {"inputs": [{"name": name, "datatype": datatype,
                        "shape": shape or [len(rows), len(rows[0])],
                        "data": [v for r in rows for v in r]}]}
    if id is not None:
        body["id"] = id
    return body


class DigitsOverHttp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            cls.ref = json.load(f)
        cls.c = Cluster(BUILD, MODELS)
        cls.c.replica("digits")
        cls.c.replica("digits")
        cls.c.router()
        cls.c.wait_ready()

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def assert_ok_infer(self):
        status, body = self.c.http("POST", "/v2/models/digits/infer",
                                   infer_body([self.ref["inputs"][0]], id="after-error"))
        self.assertEqual(status, 200, body)
        self.assertEqual(body["id"], "after-error")

    def test_every_heldout_sample_matches_pytorch(self):
        ref = self.ref
        n = len(ref["inputs"])
        self.assertGreater(n, 100)
        correct = 0
        worst = 0.0
        for i, (x, want_logits, want_pred, label) in enumerate(
                zip(ref["inputs"], ref["logits"], ref["predictions"], ref["labels"])):
            status, body = self.c.http("POST", "/v2/models/digits/infer",
                                       infer_body([x], id="s%d" % i))
            self.assertEqual(status, 200, body)
            self.assertEqual(body["model_name"], "digits")
            self.assertEqual(body["id"], "s%d" % i)
            out = body["outputs"][0]
            self.assertEqual(out["name"], "logits")
            self.assertEqual(out["datatype"], "FP32")
            self.assertEqual(out["shape"], [1, 10])
            got = out["data"]
            worst = max(worst, max(abs(a - b) for a, b in zip(got, want_logits)))
            pred = max(range(10), key=lambda k: got[k])
            self.assertEqual(pred, want_pred, "sample %d" % i)
            correct += pred == label
        self.assertLessEqual(worst, 1e-4)
        self.assertAlmostEqual(correct / n, ref["accuracy"], places=9)
        print("held-out samples: %d, accuracy %.4f, max abs logit diff vs PyTorch %.3g" %
              (n, correct / n, worst))

    def test_batched_request_matches_pytorch(self):
        rows = self.ref["inputs"][:32]
        status, body = self.c.http("POST", "/v2/models/digits/infer", infer_body(rows))
        self.assertEqual(status, 200, body)
        out = body["outputs"][0]
        self.assertEqual(out["shape"], [32, 10])
        for r in range(32):
            for k in range(10):
                self.assertAlmostEqual(out["data"][r * 10 + k], self.ref["logits"][r][k], delta=1e-4)

    def test_nested_data_and_requested_output(self):
        x = self.ref["inputs"][1]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [x]}],
                "outputs": [{"name": "logits"}]}
        status, resp = self.c.http("POST", "/v2/models/digits/infer", body)
        self.assertEqual(status, 200, resp)
        for a, b in zip(resp["outputs"][0]["data"], self.ref["logits"][1]):
            self.assertAlmostEqual(a, b, delta=1e-4)

    def test_health_and_metadata(self):
        self.assertEqual(self.c.http("GET", "/v2/health/live")[0], 200)
        self.assertEqual(self.c.http("GET", "/v2/health/ready")[0], 200)
        self.assertEqual(self.c.http("GET", "/v2/models/digits/ready")[0], 200)
        status, md = self.c.http("GET", "/v2/models/digits")
        self.assertEqual(status, 200, md)
        self.assertEqual(md["name"], "digits")
        self.assertEqual(md["inputs"], [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
        self.assertEqual(md["outputs"], [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}])
        self.assertIn("1", md["versions"])

    def bad(self, method, path, body, want_status, *words, headers=None):
        status, resp = self.c.http(method, path, body, headers=headers)
        self.assertEqual(status, want_status, resp)
        self.assertIsInstance(resp, dict, resp)
        msg = resp.get("error", "")
        for w in words:
            self.assertIn(w.lower(), msg.lower(), "error %r lacks %r" % (msg, w))
        self.assert_ok_infer()
        return msg

    def test_bad_requests_get_clear_errors_and_server_keeps_serving(self):
        x = self.ref["inputs"][0]
        p = "/v2/models/digits/infer"
        self.bad("POST", p, '{"inputs": [', 400, "json")
        self.bad("POST", p, {"id": "x"}, 400, "inputs")
        self.bad("POST", p, infer_body([x], name="pixels"), 400, "pixels", "input")
        self.bad("POST", p, infer_body([x[:32], x[32:]], shape=[2, 32]), 400, "shape", "64")
        self.bad("POST", p, infer_body([[int(v) for v in x]], datatype="INT64"), 400,
                 "INT64", "FP32")
        bad_len = infer_body([x])
        bad_len["inputs"][0]["data"] = x[:63]
        self.bad("POST", p, bad_len, 400, "63", "64")
        self.bad("POST", "/v2/models/nosuch/infer", infer_body([x]), 404, "nosuch")
        self.bad("GET", "/v2/nosuch/path", None, 404)
        self.bad("GET", p, None, 405)
        self.bad("POST", p, infer_body([x], datatype="FP33"), 400, "FP33")


if __name__ == "__main__":
    testrun.main()
