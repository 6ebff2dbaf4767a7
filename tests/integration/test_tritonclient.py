"""The router driven by tritonclient.http, the client Triton users already have,
unmodified: server and model metadata, readiness, model configuration and the
repository index, statistics, infer with JSON and with binary tensor data,
classification, async infer, the request-body helpers, request options
(priority, timeout, parameters, headers, compression), and the model control
calls corral does not serve.

Usage: test_tritonclient.py BUILD_DIR REPO_ROOT
"""
import json
import os
import shutil
import sys
import tempfile
import unittest
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_protocol_util import stop_and_check, DTYPES, make_repo, sample, start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]

try:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except ImportError as exc:  # the venv always has it; reported to ctest as a skip if not
    testrun.skip_all("tritonclient is not installed (%s)" % exc)

# digits with a batching section: every setting differs from its default, so the model
# configuration shows each one came from the replica.
BATCHING = {"max_batch_size": 8, "batch_buckets": [2, 8], "max_queue_delay_us": 100,
            "max_queue_size": 64, "default_timeout_us": 2000000, "priority_levels": 2,
            "default_priority": 2, "preserve_ordering": True}


def add_batched(repo):
    d = os.path.join(repo, "batched")
    shutil.copytree(os.path.join(repo, "digits"), d)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["name"] = "batched"
    cfg["batching"] = BATCHING
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)


class WithTritonClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-triton-")
        make_repo(cls.tmp.name, ROOT)
        add_batched(cls.tmp.name)
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            cls.ref = json.load(f)
        cls.c = start_cluster(BUILD, cls.tmp.name,
                              [("digits", []), ("dtypes", []), ("batched", [])])
        cls.url = "127.0.0.1:%d" % cls.c.port
        cls.client = httpclient.InferenceServerClient(cls.url, concurrency=4)

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
        self.assertIn("model_configuration", sm["extensions"])
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
        self.assertEqual(self.client.get_inference_statistics("digits", "1")["model_stats"][0]
                         ["version"], "1")
        every = self.client.get_inference_statistics()["model_stats"]
        self.assertEqual(sorted(e["name"] for e in every), ["batched", "digits", "dtypes"])

    def assert_raises_status(self, status, fn, *args, **kw):
        with self.assertRaises(InferenceServerException) as cm:
            fn(*args, **kw)
        self.assertEqual(cm.exception.status(), status, cm.exception)
        return str(cm.exception)

    def test_model_config(self):
        cfg = self.client.get_model_config("digits")
        self.assertEqual(cfg["name"], "digits")
        self.assertEqual(cfg["platform"], "onnxruntime_onnx")
        self.assertEqual(cfg["max_batch_size"], 0)
        self.assertEqual([(t["name"], t["data_type"], t["dims"]) for t in cfg["input"]],
                         [("input", "TYPE_FP32", [-1, 64])])
        self.assertEqual([(t["name"], t["data_type"], t["dims"]) for t in cfg["output"]],
                         [("logits", "TYPE_FP32", [-1, 10])])
        self.assertNotIn("dynamic_batching", cfg)
        self.assertEqual(cfg["version_policy"], {"specific": {"versions": [1]}})
        self.assertEqual([(g["kind"], g["count"]) for g in cfg["instance_group"]],
                         [("KIND_CPU", 1)])
        self.assertEqual(self.client.get_model_config("digits", "1"), cfg)
        # Every datatype by Triton's enum name.
        cfg = self.client.get_model_config("dtypes")
        self.assertEqual([t["data_type"] for t in cfg["input"]],
                         ["TYPE_" + dt for dt in DTYPES])
        self.assertEqual([t["data_type"] for t in cfg["output"]],
                         ["TYPE_" + dt for dt in DTYPES])
        self.assertIn("unknown model 'nosuch'",
                      self.assert_raises_status("404", self.client.get_model_config, "nosuch"))
        self.assertIn("unknown version '9'", self.assert_raises_status(
            "404", self.client.get_model_config, "digits", "9"))

    def test_model_config_batched(self):
        cfg = self.client.get_model_config("batched")
        self.assertEqual(cfg["max_batch_size"], 8)
        # The batch dimension is implicit in Triton's dims.
        self.assertEqual(cfg["input"][0]["dims"], [64])
        self.assertEqual(cfg["output"][0]["dims"], [10])
        db = cfg["dynamic_batching"]
        self.assertEqual(db["preferred_batch_size"], [2, 8])
        self.assertEqual(db["max_queue_delay_microseconds"], 100)
        self.assertIs(db["preserve_ordering"], True)
        self.assertEqual(db["priority_levels"], 2)
        self.assertEqual(db["default_priority_level"], 2)
        self.assertEqual(db["default_queue_policy"]["default_timeout_microseconds"], 2000000)
        self.assertEqual(db["default_queue_policy"]["max_queue_size"], 64)
        # Metadata keeps the full shape; the two agree once the batch dimension is added.
        md = self.client.get_model_metadata("batched")
        self.assertEqual(md["inputs"][0]["shape"], [-1] + cfg["input"][0]["dims"])
        # A batch of 4 through a batching model, the way perf_analyzer sends it.
        rows = self.ref["inputs"][:4]
        x = np.array(rows, dtype=np.float32)
        inp = httpclient.InferInput("input", [4, 64], "FP32")
        inp.set_data_from_numpy(x)
        res = self.client.infer("batched", [inp], priority=1, timeout=5000000)
        np.testing.assert_allclose(res.as_numpy("logits"),
                                   np.array(self.ref["logits"][:4], dtype=np.float32), atol=1e-4)

    def test_repository_index(self):
        idx = self.client.get_model_repository_index()
        self.assertEqual(idx, [{"name": m, "version": "1", "state": "READY", "reason": ""}
                               for m in ("batched", "digits", "dtypes")])

    def test_async_infer(self):
        reqs = []
        for k in range(8):
            x = np.array(self.ref["inputs"][k:k + 1], dtype=np.float32)
            inp = httpclient.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(x, binary_data=k % 2 == 0)
            reqs.append(self.client.async_infer("digits", [inp], request_id="a%d" % k))
        for k, r in enumerate(reqs):
            res = r.get_result(timeout=30)
            self.assertEqual(res.get_response()["id"], "a%d" % k)
            np.testing.assert_allclose(res.as_numpy("logits")[0], self.ref["logits"][k],
                                       atol=1e-4)

    def test_request_body_helpers(self):
        # The static helpers build and read the bodies for a transport of the user's own.
        x = np.array(self.ref["inputs"][:2], dtype=np.float32)
        inp = httpclient.InferInput("input", [2, 64], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput("logits", binary_data=True)
        body, json_size = httpclient.InferenceServerClient.generate_request_body(
            [inp], outputs=[out], request_id="raw-1")
        req = urllib.request.Request("http://%s/v2/models/digits/infer" % self.url, data=body,
                                     headers={"Inference-Header-Content-Length": str(json_size)})
        with urllib.request.urlopen(req, timeout=30) as resp:
            hlen = resp.headers.get("Inference-Header-Content-Length")
            data = resp.read()
        res = httpclient.InferenceServerClient.parse_response_body(
            data, header_length=int(hlen) if hlen else None)
        self.assertEqual(res.get_response()["id"], "raw-1")
        np.testing.assert_allclose(res.as_numpy("logits"),
                                   np.array(self.ref["logits"][:2], dtype=np.float32), atol=1e-4)

    def test_request_options(self):
        x = np.array(self.ref["inputs"][:1], dtype=np.float32)
        want = np.array(self.ref["logits"][:1], dtype=np.float32)
        inp = httpclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        res = self.client.infer("digits", [inp], headers={"X-Request-ID": "hdr-1"},
                                query_params={"test": "1"}, timeout=10000000, priority=1)
        np.testing.assert_allclose(res.as_numpy("logits"), want, atol=1e-4)
        self.assertEqual(res.get_response()["id"], "hdr-1")
        # The server may answer uncompressed whatever the client accepts; the client reads it.
        res = self.client.infer("digits", [inp], response_compression_algorithm="gzip")
        np.testing.assert_allclose(res.as_numpy("logits"), want, atol=1e-4)
        for algo in ("gzip", "deflate"):
            msg = self.assert_raises_status("415", self.client.infer, "digits", [inp],
                                            request_compression_algorithm=algo)
            self.assertIn("uncompressed", msg)

    def test_model_control_not_served(self):
        # The replica table is the scheduler's: explicit model control is refused, clearly.
        for fn in (self.client.load_model, self.client.unload_model):
            self.assertIn("corralctl apply", self.assert_raises_status("501", fn, "digits"))

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
