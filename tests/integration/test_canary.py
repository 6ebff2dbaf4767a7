"""The router's canary split, set and cleared through its control endpoint, with
a real router and real replicas of versions 1 and 2 of digits.

A request that names no version goes to version V with the split's percent and
to the model's other replicas otherwise; counted from `model_version` in the
answers. A split set before any replica of V is in the table, or left set once
V's replica is removed, fails no request (it falls back to the other side).
Requests that name a version ignore the split. A change of the split is
answered only once every router thread applied it. Refused control requests
name the field and what was expected, and change nothing.

Usage: test_canary.py BUILD_DIR REPO_ROOT
"""
import collections
import concurrent.futures
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402
from test_protocol_util import stop_and_check  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
N = 400
# Version 2's share of N requests at 10 %: mean 40, sigma 6; 5 sigma either side.
LOW, HIGH = 10, 75


def make_two_version_repo(dest):
    """digits with versions 1 and 2 (the same model, so both pass their parity check)."""
    shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(dest, "digits"))
    shutil.copytree(os.path.join(dest, "digits", "1"), os.path.join(dest, "digits", "2"))


class Canary(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-canary-")
        make_two_version_repo(self.tmp.name)
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            x = json.load(f)["inputs"][0]
        self.body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                            "shape": [1, 64], "data": x}]})
        self.c = Cluster(BUILD, self.tmp.name)
        self.v1 = self.c.replica("digits", "--version", "1")
        self.v2 = self.c.replica("digits", "--version", "2")

    def start(self, *router_args):
        # The router starts with an empty table: the test fills it. Health probes every
        # 2 s: these tests count where requests go, and on a loaded machine a probe late
        # by one short interval would take a replica out of rotation for a moment (the
        # split then falls back to the other side, by design).
        procs, self.c.replicas = self.c.replicas, []
        self.c.router("--threads", "3", "--health-interval-ms", "2000", *router_args)
        self.c.replicas = procs  # stopped with the cluster

    def tearDown(self):
        try:
            # Exit status 0 and, in a sanitizer build, no report (leaks included).
            stop_and_check(self.c)
        finally:
            self.tmp.cleanup()

    def change(self, path, body, want=200):
        st, r = self.c.control("POST", path, body)
        self.assertEqual(st, want, (path, body, r))
        if want == 200:
            # Answered only once every thread applied it.
            self.assertGreaterEqual(r["acked"], r["generation"], r)
        return r

    def add(self, url, version):
        self.change("/v1/replicas", {"model": "digits", "version": version, "url": url})
        self.c.wait_ready("/v2/models/digits/versions/%s/ready" % version)

    def one(self, path):
        """One infer request on a fresh connection (so they spread over the router's
        threads): (status, answered model_version or the error)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.c.port, timeout=30)
        try:
            conn.request("POST", path, body=self.body,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            r = json.loads(resp.read())
            return resp.status, r.get("model_version") if resp.status == 200 else r
        finally:
            conn.close()

    def infer(self, n=N, version=None):
        """n requests from 4 clients: {model_version: count}; every one must be a 200."""
        path = "/v2/models/digits%s/infer" % ("/versions/%s" % version if version else "")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda _: self.one(path), range(n)))
        bad = [g for g in got if g[0] != 200]
        self.assertEqual(bad, [], "requests failed")
        return collections.Counter(v for _, v in got)

    def splits(self):
        st, r = self.c.control("GET", "/v1/replicas")
        self.assertEqual(st, 200, r)
        return r["canaries"]

    def splits_served(self):
        """The splits /v2/corral/replicas shows, asked on fresh connections until each of
        the router's threads has most likely answered; all must agree."""
        seen = []
        for _ in range(12):
            c = Cluster(BUILD, self.tmp.name)
            c.port = self.c.port
            try:
                st, r = c.http("GET", "/v2/corral/replicas")
            finally:
                c.close()
            self.assertEqual(st, 200, r)
            seen.append(r["canaries"])
        self.assertTrue(all(s == seen[0] for s in seen), seen)
        return seen[0]

    def test_split_follows_the_table(self):
        self.start()
        self.add(self.v1, "1")
        # Set before any replica of version 2 is in the table: everything falls back to 1.
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 100})
        self.assertEqual(self.splits(), [{"model": "digits", "version": "2", "percent": 100}])
        self.assertEqual(self.infer(100), {"1": 100})

        # The canary replica joins: all of the unversioned traffic goes to it.
        self.add(self.v2, "2")
        self.assertEqual(self.infer(), {"2": N})

        # 10 %: a binomial share of the requests, none failed.
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 10})
        self.assertEqual(self.splits(), [{"model": "digits", "version": "2", "percent": 10}])
        self.assertEqual(self.splits_served(),
                         [{"model": "digits", "version": "2", "percent": 10}])
        got = self.infer()
        print("10 %% canary: %s" % dict(got))
        self.assertEqual(got["1"] + got["2"], N)
        self.assertTrue(LOW <= got["2"] <= HIGH, got)

        # 0 %: none to the canary, although it is ready.
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 0})
        self.assertEqual(self.infer(), {"1": N})

        # 100 %: a request that names version 1 still goes to version 1.
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 100})
        self.assertEqual(self.infer(), {"2": N})
        self.assertEqual(self.infer(100, version="1"), {"1": 100})

        # The canary replica leaves the table with the split still set: no request fails.
        self.change("/v1/replicas/remove", {"url": self.v2})
        self.assertEqual(self.infer(), {"1": N})

        # Cleared: gone from both listings; clearing again is a 404, like a removed URL.
        r = self.change("/v1/canary/clear", {"model": "digits"})
        self.assertIn("generation", r)
        self.assertEqual(self.splits(), [])
        self.assertEqual(self.splits_served(), [])
        st, r = self.c.control("POST", "/v1/canary/clear", {"model": "digits"})
        self.assertEqual(st, 404, r)
        self.assertIn("no canary split", r["error"])

    def test_cleared_split_serves_both_versions(self):
        self.start()
        self.add(self.v1, "1")
        self.add(self.v2, "2")
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 100})
        self.assertEqual(self.infer(100), {"2": 100})
        self.change("/v1/canary/clear", {"model": "digits"})
        got = self.infer(200)
        self.assertGreater(got["1"], 0, got)
        self.assertGreater(got["2"], 0, got)

    def test_acknowledged_only_after_every_thread(self):
        # Every thread but the first applies changes 1 s late (a test hook). A split is
        # answered only once they all have it: from the answer on, every request follows it.
        self.start("--test-apply-delay-ms", "1000")
        self.add(self.v1, "1")
        self.add(self.v2, "2")
        t0 = time.time()
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 100})
        self.assertGreaterEqual(time.time() - t0, 0.8, "answered before the delayed threads "
                                "applied it")
        self.assertEqual(self.infer(200), {"2": 200})
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 0})
        self.assertEqual(self.infer(200), {"1": 200})

    def test_bad_canary_requests(self):
        self.start()
        self.add(self.v1, "1")
        self.change("/v1/canary", {"model": "digits", "version": "2", "percent": 10})
        g0 = self.c.control("GET", "/v1/replicas")[1]["generation"]
        ok = {"model": "digits", "version": "3", "percent": 20}
        for path, body, want, words in (
                ("/v1/canary", dict(ok, percent=150), 400,
                 "percent: expected an integer from 0 to 100, got 150"),
                ("/v1/canary", dict(ok, percent=-1), 400, "got -1"),
                ("/v1/canary", dict(ok, percent=10.5), 400, "percent: expected an integer"),
                ("/v1/canary", dict(ok, percent="10"), 400, 'got "10"'),
                ("/v1/canary", dict(ok, percent=True), 400, "got true"),
                ("/v1/canary", {"model": "digits", "version": "3"}, 400,
                 "percent: expected an integer from 0 to 100, got nothing"),
                ("/v1/canary", {"model": "digits", "percent": 10}, 400, "'version' is missing"),
                ("/v1/canary", dict(ok, version=""), 400, "version is empty"),
                ("/v1/canary", dict(ok, version=2), 400, "'version' is not a string"),
                ("/v1/canary", {"version": "3", "percent": 10}, 400, "'model' is missing"),
                ("/v1/canary", dict(ok, model="di/gits"), 400, "model 'di/gits'"),
                ("/v1/canary", "{", 400, "not a JSON object"),
                ("/v1/canary", "[1]", 400, "not a JSON object"),
                ("/v1/canary/clear", {}, 400, "'model' is missing"),
                ("/v1/canary/clear", {"model": "dtypes"}, 404, "no canary split"),
                ("/v1/canary/nothing", ok, 404, "/v1/canary and /v1/canary/clear")):
            st, r = self.c.control("POST", path, body)  # a str body is sent as it is
            self.assertEqual(st, want, (path, body, r))
            self.assertIn(words, r["error"], (path, body))
        for path in ("/v1/canary", "/v1/canary/clear"):
            st, r = self.c.control("GET", path)
            self.assertEqual(st, 405, r)
            self.assertIn("allowed: POST", r["error"])
        # Nothing refused changed the table.
        st, r = self.c.control("GET", "/v1/replicas")
        self.assertEqual(r["generation"], g0)
        self.assertEqual(r["canaries"], [{"model": "digits", "version": "2", "percent": 10}])


if __name__ == "__main__":
    testrun.main()
