"""GET /metrics: Prometheus text that promtool accepts, and counts that match
exactly what the test sent: a known mixed workload (JSON and binary HTTP, RPC,
errors the router answers itself and one a replica refuses) through a router
with several threads over two batching replicas. Counts are compared with
equality; what depends on timing (how requests grouped into batches) is held
to its invariants instead: executions <= requests, the batch-size
histogram's sum equals the inferences and its count equals the executions.

Usage: test_metrics.py BUILD_DIR REPO_ROOT              the exact counts
       test_metrics.py BUILD_DIR REPO_ROOT --promtool PATH  promtool check metrics
The second is skipped (exit 77) where promtool is missing.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, infer_binary  # noqa: E402
from test_protocol_util import stop_and_check, make_repo, start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
PROMTOOL_ONLY = len(sys.argv) > 3 and sys.argv[3] == "--promtool"
PROMTOOL = sys.argv[4] if PROMTOOL_ONLY and len(sys.argv) > 4 else ""

# The workload: (how many requests, rows in each).
JSON_REQ, JSON_ROWS = 12, 3
BIN_REQ, BIN_ROWS = 5, 2
RPC_REQ, RPC_ROWS = 7, 1


def samples(text, name):
    """[(labels dict, value)] of every sample of `name`."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.append((labels, float(m.group(4))))
    return out


def value(text, name, **labels):
    """The one sample of `name` whose labels include `labels`; None when absent.
    More than one match is an error: the test must name the series exactly."""
    hits = [v for have, v in samples(text, name)
            if all(have.get(k) == v for k, v in labels.items())]
    if len(hits) > 1:
        raise AssertionError("%s%s matches %d series" % (name, labels, len(hits)))
    return hits[0] if hits else None


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-metrics-")
        make_repo(cls.tmp.name, ROOT)
        # digits batches here, so the batch-size histogram has something to show.
        cfgp = os.path.join(cls.tmp.name, "digits", "config.json")
        with open(cfgp) as f:
            cfg = json.load(f)
        cfg["batching"] = {"max_batch_size": 8, "batch_buckets": [1, 2, 4, 8],
                           "max_queue_delay_us": 2000}
        with open(cfgp, "w") as f:
            json.dump(cfg, f)
        cls.c = start_cluster(BUILD, cls.tmp.name, [("digits", []), ("digits", [])],
                              router_args=["--threads", "3"])
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            cls.x = json.load(f)["inputs"]

    @classmethod
    def tearDownClass(cls):
        try:
            stop_and_check(cls.c)
        finally:
            cls.tmp.cleanup()

    def scrape(self):
        status, data, resp = self.c.http("GET", "/metrics", raw=True)
        self.assertEqual(status, 200)
        self.assertTrue(resp.getheader("Content-Type").startswith("text/plain; version=0.0.4"))
        return data.decode()

    def body(self, rows, **params):
        b = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 64],
                         "data": [v for r in self.x[:rows] for v in r]}]}
        if params:
            b["parameters"] = params
        return b

    def fresh(self):
        """A new connection: fresh connections land on different router threads."""
        c = Cluster(BUILD, self.tmp.name)
        c.port = self.c.port
        return c

    def run_workload(self):
        """Sends the known workload; returns {(protocol, code): count} as the test saw it."""
        seen = {}

        def count(proto, code):
            seen[(proto, code)] = seen.get((proto, code), 0) + 1
        for _ in range(JSON_REQ):
            c = self.fresh()
            st, r = c.http("POST", "/v2/models/digits/infer", self.body(JSON_ROWS))
            c.close()
            self.assertEqual(st, 200, r)
            self.assertEqual(r["outputs"][0]["shape"], [JSON_ROWS, 10])
            count("http", 200)
        arr = np.array(self.x[:BIN_ROWS], dtype=np.float32)
        for _ in range(BIN_REQ):
            c = self.fresh()
            st, r = infer_binary(c, "digits", [("input", "FP32", arr)])
            c.close()
            self.assertEqual(st, 200, r)
            count("http", 200)
        # Over RPC with corralctl: --repeat sends one request after another and exits 0
        # only when every one was answered.
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(self.body(RPC_ROWS), f)
        try:
            p = subprocess.run([os.path.join(BUILD, "client", "corralctl"), "infer", "--rpc",
                                self.c.rpc_url, "--model", "digits", "--repeat", str(RPC_REQ),
                                f.name], capture_output=True, text=True, timeout=60)
        finally:
            os.unlink(f.name)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("RESULT requests=%d " % RPC_REQ, p.stderr)
        for _ in range(RPC_REQ):
            count("rpc", 200)
        # Errors the router answers itself: they never reach a replica.
        for path, payload, want in (("/v2/models/nosuch/infer", self.body(1), 404),
                                    ("/v2/models/nosuch/infer", self.body(1), 404),
                                    ("/v2/models/digits/infer", "{", 400)):
            st, _ = self.c.http("POST", path, payload)
            self.assertEqual(st, want)
            count("http", want)
        # A request the router forwards and a replica refuses (priority out of range).
        st, r = self.c.http("POST", "/v2/models/digits/infer", self.body(1, priority=99))
        self.assertEqual(st, 400, r)
        self.assertIn("priority", r["error"])
        count("http", 400)
        return seen

    def test_counts_are_exact(self):
        seen = self.run_workload()
        text = self.scrape()
        # Requests by protocol and status: exactly what was sent. The router's own
        # 404s carry no model (an unknown name is not a label value).
        self.assertEqual(value(text, "corral_router_requests_total", model="digits", version="1",
                               protocol="http", code="200"), seen[("http", 200)])
        self.assertEqual(value(text, "corral_router_requests_total", model="digits", version="1",
                               protocol="rpc", code="200"), seen[("rpc", 200)])
        self.assertEqual(sum(v for lb, v in samples(text, "corral_router_requests_total")
                             if lb.get("model") == "digits" and lb.get("code") == "400"),
                         seen[("http", 400)])
        self.assertEqual(value(text, "corral_router_requests_total", model="", code="404"),
                         seen[("http", 404)])
        total = sum(v for _, v in samples(text, "corral_router_requests_total"))
        self.assertEqual(total, sum(seen.values()), text)
        answered = seen[("http", 200)] + seen[("rpc", 200)]
        # Latency is recorded for every request a replica answered, the refused one too.
        self.assertEqual(value(text, "corral_router_request_duration_seconds_count",
                               model="digits", version="1"), answered + 1)
        self.assertEqual(value(text, "corral_router_request_duration_seconds_bucket",
                               model="digits", version="1", le="+Inf"), answered + 1)
        self.assertEqual(value(text, "corral_router_inflight_requests"), 0)
        self.assertEqual(value(text, "corral_replicas", model="digits", state="ready"), 2)
        self.assertIsNone(value(text, "corral_router_retries_total", model="digits"))

        # What the replicas counted, summed over both: every forwarded request,
        # including the one refused, and every row of the successful ones.
        rows = JSON_REQ * JSON_ROWS + BIN_REQ * BIN_ROWS + RPC_REQ * RPC_ROWS
        mv = {"model": "digits", "version": "1"}
        self.assertEqual(value(text, "corral_model_requests_total", **mv), answered + 1)
        self.assertEqual(value(text, "corral_model_success_total", **mv), answered)
        self.assertEqual(value(text, "corral_model_rejections_total", reason="invalid", **mv), 1)
        self.assertEqual(value(text, "corral_model_inferences_total", **mv), rows)
        self.assertEqual(value(text, "corral_model_real_elements_total", **mv), rows * 64)
        self.assertEqual(value(text, "corral_model_queue_depth", **mv), 0)
        # Batching depends on timing: its invariants instead.
        execs = value(text, "corral_model_executions_total", **mv)
        self.assertGreaterEqual(execs, -(-rows // 8))  # no run holds more than 8 rows
        self.assertLessEqual(execs, answered)
        self.assertEqual(value(text, "corral_batch_size_sum", **mv), rows)
        self.assertEqual(value(text, "corral_batch_size_count", **mv), execs)
        self.assertEqual(value(text, "corral_batch_size_bucket", le="+Inf", **mv), execs)
        # Cumulative buckets never decrease and nothing is above the largest bucket.
        buckets = [(float(lb["le"]), v) for lb, v in samples(text, "corral_batch_size_bucket")
                   if lb.get("model") == "digits" and lb["le"] != "+Inf"]
        counts = [v for _, v in sorted(buckets)]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(counts[-1], execs)
        padded = value(text, "corral_model_padded_elements_total", **mv)
        self.assertGreaterEqual(padded, rows * 64)
        self.assertEqual(padded % 64, 0)
        self.assertAlmostEqual(value(text, "corral_padding_efficiency", **mv),
                               rows * 64 / padded, places=5)

        # Counters only grow: the same workload again adds exactly as much.
        self.run_workload()
        again = self.scrape()
        self.assertEqual(value(again, "corral_model_inferences_total", **mv), 2 * rows)
        self.assertEqual(value(again, "corral_router_requests_total", model="digits",
                               version="1", protocol="http", code="200"),
                         2 * seen[("http", 200)])
        self.assertEqual(value(again, "corral_batch_size_sum", **mv), 2 * rows)
        self.assertEqual(value(again, "corral_batch_size_count", **mv),
                         value(again, "corral_model_executions_total", **mv))

    def test_promtool_accepts(self):
        st, _ = self.c.http("POST", "/v2/models/digits/infer", self.body(2))
        self.assertEqual(st, 200)
        text = self.scrape()
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    # --promtool PATH: only the format check, a ctest entry of its own that is skipped
    # where promtool is missing. Otherwise the exact counts, which need nothing else.
    if PROMTOOL_ONLY:
        if not PROMTOOL or not os.access(PROMTOOL, os.X_OK):
            testrun.skip_all("promtool not found (Debian package prometheus)")
        testrun.main(unittest.TestSuite([Metrics("test_promtool_accepts")]))
    testrun.main(unittest.TestSuite([Metrics("test_counts_are_exact")]))
