"""The router's replica table at run time, under steady load from this test:
replicas added, drained, removed and added back through the control endpoint
with no failed request; traffic reaches each replica while it is in the table
and none once a removal is acknowledged; a change is acknowledged only after
every router thread applied it; bad control requests and tokens; corralctl's
replicas command.

Traffic per replica is read from the router's own count of requests sent to
each replica (corral_router_replica_requests_total), and every request the
test started is counted back.

Usage: test_replica_table.py BUILD_DIR REPO_ROOT
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, Proc, wait_until  # noqa: E402
from test_protocol_util import make_repo  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
CTL = os.path.join(BUILD, "client", "corralctl")


def sent(c):
    """{replica URL: requests the router sent it} from /metrics."""
    st, data, _ = c.http("GET", "/metrics", raw=True)
    assert st == 200
    out = {}
    for m in re.finditer(r'^corral_router_replica_requests_total\{model="[^"]*",replica="([^"]*)"\} '
                         r'(\d+)$', data.decode(), re.M):
        out[m.group(1)] = int(m.group(2))
    return out


def sent_to(c, url, retired_before):
    """Requests sent to `url` so far, also once it left the table: a released replica's
    count moves to its model's "retired" series (one replica retires at a time here)."""
    s = sent(c)
    return s[url] if url in s else s.get("retired", 0) - retired_before


class Load:
    """Closed-loop HTTP clients, a new connection per request (so they spread over the
    router's threads), until stop()."""

    def __init__(self, c, x, clients=4):
        self.c, self.x = c, x
        self.mu = threading.Lock()
        self.started = self.answered = 0
        self.bad = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": self.x}]}
        while not self._stop.is_set():
            with self.mu:
                self.started += 1
            cl = Cluster(self.c.build, self.c.repo)
            cl.port = self.c.port
            try:
                st, r = cl.http("POST", "/v2/models/digits/infer", body)
                ok, detail = st == 200, (st, r)
            except Exception as ex:  # noqa: BLE001 - counted, never lost
                ok, detail = False, repr(ex)
            finally:
                cl.close()
            with self.mu:
                if ok:
                    self.answered += 1
                else:
                    self.bad.append(detail)

    def count(self):
        with self.mu:
            return self.answered

    def more(self, n):
        """Waits for n more answers."""
        target = self.count() + n
        wait_until("%d more answers" % n, lambda: self.count() >= target)

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(60)


class ReplicaTable(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-table-")
        make_repo(self.tmp.name, ROOT)
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            self.x = json.load(f)["inputs"][0]
        self.c = Cluster(BUILD, self.tmp.name)
        self.load = None

    def tearDown(self):
        if self.load:
            self.load.stop()
        self.c.close()
        self.tmp.cleanup()

    def start(self, n_replicas, in_table, *router_args):
        urls = [self.c.replica("digits") for _ in range(n_replicas)]
        extra = self.c.replicas[in_table:]
        self.c.replicas = self.c.replicas[:in_table]
        self.c.router("--threads", "4", "--health-interval-ms", "100", *router_args)
        self.c.replicas += extra
        self.c.wait_ready()
        return urls

    def change(self, path, body, want=200, token=None):
        st, r = self.c.control("POST", path, body, token=token)
        self.assertEqual(st, want, r)
        if want == 200:
            # Answered only once every thread applied it.
            self.assertGreaterEqual(r["acked"], r["generation"], r)
        return r

    def table(self):
        st, r = self.c.control("GET", "/v1/replicas")
        self.assertEqual(st, 200, r)
        return r

    def test_add_drain_remove_add_back_under_load(self):
        a, b, c3 = self.start(3, 2)
        self.assertEqual(sorted(e["url"] for e in self.table()["replicas"]), sorted([a, b]))
        self.load = Load(self.c, self.x)
        wait_until("traffic on both replicas", lambda: sent(self.c).get(a, 0) > 0 and
                   sent(self.c).get(b, 0) > 0)
        self.assertNotIn(c3, sent(self.c))

        # A third replica joins: it is health-checked, then takes traffic.
        self.change("/v1/replicas", {"model": "digits", "version": "1", "url": c3})
        wait_until("traffic on the added replica", lambda: sent(self.c).get(c3, 0) > 0)

        # Drain A: once acknowledged, no thread sends it anything new.
        self.change("/v1/replicas/drain", {"url": a})
        self.assertEqual([e["state"] for e in self.table()["replicas"] if e["url"] == a],
                         ["draining"])
        retired = sent(self.c).get("retired", 0)
        frozen = sent(self.c)[a]
        self.load.more(60)
        self.assertEqual(sent(self.c)[a], frozen)

        # Remove it: gone from the table, still nothing new sent to it; once released its
        # count moves to the model's "retired" series, whole.
        self.change("/v1/replicas/remove", {"url": a})
        self.assertNotIn(a, [e["url"] for e in self.table()["replicas"]])
        self.load.more(60)
        self.assertEqual(sent_to(self.c, a, retired), frozen)
        wait_until("the removed replica's count retired", lambda: a not in sent(self.c))
        self.assertEqual(sent(self.c)["retired"], retired + frozen)
        b_before, c_before = sent(self.c)[b], sent(self.c)[c3]
        self.load.more(40)
        self.assertGreater(sent(self.c)[b], b_before)
        self.assertGreater(sent(self.c)[c3], c_before)
        self.assertEqual(sent(self.c)["retired"], retired + frozen)

        # Added back, it takes traffic again (a series of its own from 0).
        self.change("/v1/replicas", {"model": "digits", "url": a})
        wait_until("traffic on the replica added back", lambda: sent(self.c).get(a, 0) > 0)
        self.load.more(20)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        print("answered %d requests; sent per replica %s" % (self.load.answered, sent(self.c)))

    def test_acknowledged_only_after_every_thread(self):
        # Every thread but the first applies changes 1.5 s late (a test hook). The removal
        # must not be answered before they have: after the answer, nothing more goes to
        # the removed replica from any thread.
        # Health probes every 2 s: this test is about the table, and on a loaded machine
        # (sanitizers, two cores) a probe late by one 500 ms interval would take the one
        # replica left in the first thread out of rotation.
        a, b = self.start(2, 2, "--test-apply-delay-ms", "1500", "--health-interval-ms", "2000")
        self.load = Load(self.c, self.x)
        wait_until("traffic on both replicas", lambda: sent(self.c).get(a, 0) > 0 and
                   sent(self.c).get(b, 0) > 0)
        retired = sent(self.c).get("retired", 0)
        t0 = time.time()
        self.change("/v1/replicas/remove", {"url": b})
        took = time.time() - t0
        frozen = sent_to(self.c, b, retired)
        self.load.more(100)
        self.assertEqual(sent_to(self.c, b, retired), frozen, "requests went to a removed "
                         "replica after the removal was acknowledged")
        self.assertGreaterEqual(took, 1.0, "answered before the delayed threads applied it")
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)

    def test_bad_control_requests(self):
        a, b = self.start(2, 1)
        g0 = self.table()["generation"]
        for path, body, want, words in (
                ("/v1/replicas", "{", 400, "not a JSON object"),
                ("/v1/replicas", {"url": b}, 400, "'model' is missing"),
                ("/v1/replicas", {"model": "digits"}, 400, "'url' is missing"),
                ("/v1/replicas", {"model": "digits", "url": 7}, 400, "not a string"),
                ("/v1/replicas", {"model": "di/gits", "url": b}, 400, "not allowed"),
                ("/v1/replicas", {"model": "digits", "url": "http://x:1"}, 400, "tcp://"),
                ("/v1/replicas", {"model": "digits", "url": a}, 400, "in the table already"),
                ("/v1/replicas/drain", {"url": "tcp://127.0.0.1:1"}, 404, "not in the table"),
                ("/v1/replicas/remove", {"url": "tcp://127.0.0.1:1"}, 404, "not in the table"),
                ("/v1/nothing", {}, 404, "no such endpoint")):
            st, r = self.c.control("POST", path, body if isinstance(body, dict) else None)
            if not isinstance(body, dict):
                import http.client
                conn = http.client.HTTPConnection("127.0.0.1", self.c.control_port, timeout=10)
                conn.request("POST", path, body=body)
                resp = conn.getresponse()
                st, r = resp.status, json.loads(resp.read())
                conn.close()
            self.assertEqual(st, want, (path, body, r))
            self.assertIn(words, r["error"], (path, body))
        st, r = self.c.control("DELETE", "/v1/replicas")
        self.assertEqual(st, 405, r)
        # Nothing refused changed the table.
        self.assertEqual(self.table()["generation"], g0)
        self.assertEqual([e["url"] for e in self.table()["replicas"]], [a])

    def test_starting_replica_in_the_table_gets_no_traffic(self):
        # Rule 1: a replica takes traffic only after it said ready. One is put in the table
        # while it is still starting (held by a test hook): under load, the router sends it
        # nothing and no request fails; once it is ready it takes its share. A router that
        # sent it work early would get "replica is starting" refusals, which are not
        # retried, so the load would see them.
        a, = self.start(1, 1)
        gate = os.path.join(self.tmp.name, "go")
        argv = [os.path.join(BUILD, "replica", "corral-replica"), "--model-repo", self.tmp.name,
                "--model", "digits", "--listen", "tcp://127.0.0.1:0", "--device", "cpu",
                "--test-hooks", "--test-hold-start", gate, "--log-level", "debug"]
        held = Proc(argv, r"answering health at (tcp://127\.0\.0\.1:\d+)")
        self.c.replicas.append(("digits", held))
        url = held.match.group(1)
        self.load = Load(self.c, self.x)
        self.change("/v1/replicas", {"model": "digits", "url": url})
        def entry():
            return [r for r in self.c.http("GET", "/v2/corral/replicas")[1]["replicas"]
                    if r["url"] == url]
        wait_until("the held replica's first health answer",
                   lambda: entry() and entry()[0]["state"] == "not_ready")
        self.load.more(100)
        self.assertEqual(sent(self.c).get(url, 0), 0)
        self.assertEqual(self.load.bad, [])
        self.assertIn("starting", entry()[0]["why"])
        with open(gate, "w"):
            pass
        wait_until("traffic on the replica once ready", lambda: sent(self.c).get(url, 0) > 0)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)

    def test_readiness_follows_the_table(self):
        # A router with an empty table has nothing to serve: not ready. A model whose
        # replicas all left the table stops counting; the others decide.
        d = self.c.replica("digits")
        t = self.c.replica("dtypes")
        procs, self.c.replicas = self.c.replicas, []
        self.c.router("--threads", "1", "--health-interval-ms", "100")
        self.c.replicas = procs  # stopped with the cluster
        st, r = self.c.http("GET", "/v2/health/ready")
        self.assertEqual(st, 503, r)
        self.assertIn("table is empty", r["error"])
        self.change("/v1/replicas", {"model": "digits", "url": d})
        self.change("/v1/replicas", {"model": "dtypes", "url": t})
        self.c.wait_ready()
        self.change("/v1/replicas/remove", {"url": t})
        self.assertEqual(self.c.http("GET", "/v2/health/ready")[0], 200)
        self.change("/v1/replicas/remove", {"url": d})
        st, r = self.c.http("GET", "/v2/health/ready")
        self.assertEqual(st, 503, r)
        self.assertIn("table is empty", r["error"])

    def test_token(self):
        tok = os.path.join(self.tmp.name, "token")
        with open(tok, "w") as f:
            f.write("s3cret-token\n")
        self.c.replica("digits")
        self.c.router("--control-token-file", tok)
        self.c.wait_ready()
        self.assertIn("bearer token required", self.c.router_proc.output())
        for t in (None, "wrong", "s3cret-toke", "s3cret-token-x"):
            st, r = self.c.control("GET", "/v1/replicas", token=t)
            self.assertEqual(st, 401, (t, r))
        st, r = self.c.control("GET", "/v1/replicas", token="s3cret-token")
        self.assertEqual(st, 200, r)
        self.assertNotIn("s3cret", self.c.router_proc.output())
        # corralctl reads the token from a file too.
        p = subprocess.run([CTL, "replicas", "--control", "127.0.0.1:%d" % self.c.control_port,
                            "--token-file", tok], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = subprocess.run([CTL, "replicas", "--control", "127.0.0.1:%d" % self.c.control_port],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("401", p.stderr)

    def test_corralctl_replicas(self):
        a, b = self.start(2, 1)
        ctl = [CTL, "replicas", "--control", "127.0.0.1:%d" % self.c.control_port]

        def run(*args, code=0):
            p = subprocess.run(ctl + list(args), capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, code, p.stdout + p.stderr)
            return p.stdout
        out = run()
        self.assertIn(a, out)
        self.assertNotIn(b, out)
        self.assertIn("generation", run("add", "digits", "1", b))
        wait_until("the added replica ready", lambda: self.c.http(
            "GET", "/v2/models/digits/ready")[0] == 200 and len(
                [r for r in self.c.http("GET", "/v2/corral/replicas")[1]["replicas"]
                 if r["state"] == "ready"]) == 2)
        run("drain", a)
        self.assertIn("draining", run())
        run("remove", a)
        self.assertNotIn(a, run())
        run("remove", a, code=1)
        run("frobnicate", code=2)
        run("add", "digits", code=2)


if __name__ == "__main__":
    testrun.main()
