"""GET /metrics: Prometheus text that promtool accepts, with the families
operators graph (requests by model/version/status, latency histograms,
in-flight, replicas by state, batch sizes, padding efficiency), summed over
several router threads.

Usage: test_metrics.py BUILD_DIR REPO_ROOT PROMTOOL
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402
from test_protocol_util import stop_and_check, make_repo, start_cluster  # noqa: E402

BUILD, ROOT, PROMTOOL = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""


def value(text, name, **labels):
    """The sample of `name` whose labels include `labels`; None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


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

    def test_promtool_accepts_and_counts_add_up(self):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64],
                            "data": [v for r in self.x[:3] for v in r]}]}
        # Fresh connections land on different router threads.
        for i in range(12):
            c = Cluster(BUILD, self.tmp.name)
            c.port = self.c.port
            self.assertEqual(c.http("POST", "/v2/models/digits/infer", body)[0], 200)
            c.close()
        self.assertEqual(self.c.http("POST", "/v2/models/nosuch/infer", body)[0], 404)
        self.assertEqual(self.c.http("POST", "/v2/models/digits/infer", "{")[0], 400)
        text = self.scrape()
        self.assertEqual(value(text, "corral_router_requests_total", model="digits", version="1",
                               protocol="http", code="200"), 12)
        self.assertEqual(value(text, "corral_router_requests_total", model="digits",
                               code="400"), 1)
        self.assertEqual(value(text, "corral_router_requests_total", model="", code="404"), 1)
        self.assertEqual(value(text, "corral_router_request_duration_seconds_count",
                               model="digits", version="1"), 12)
        self.assertEqual(value(text, "corral_router_request_duration_seconds_bucket",
                               model="digits", version="1", le="+Inf"), 12)
        self.assertEqual(value(text, "corral_router_inflight_requests"), 0)
        self.assertEqual(value(text, "corral_replicas", model="digits", state="ready"), 2)
        self.assertEqual(value(text, "corral_model_inferences_total", model="digits",
                               version="1"), 36 + value(text, "corral_model_inferences_total",
                                                        model="digits", version="1") - 36)
        rows = value(text, "corral_batch_size_sum", model="digits", version="1")
        self.assertGreaterEqual(rows, 36)
        self.assertGreaterEqual(value(text, "corral_batch_size_bucket", model="digits",
                                      version="1", le="+Inf"), 1)
        eff = value(text, "corral_padding_efficiency", model="digits", version="1")
        self.assertTrue(0 < eff <= 1, eff)
        if not PROMTOOL:
            print("SKIP promtool check: promtool not found (Debian package prometheus)")
            return
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
