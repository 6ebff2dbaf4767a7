"""The replica's HTTP probe and metrics endpoint (--health-listen HOST:PORT), against
real corral-replica processes (and a router in front, to send them work):

- /ready says 503 with state "starting" and why while the replica loads (held by the
  test hook), while /live says 200; both 200 once it serves;
- an executor stuck on one batch (the test stall past --stall-ms) makes /live 503
  (state "failed", the stall in the reason) until it moves again: the same liveness
  as the SP health answer;
- after SIGTERM, /ready is 503 "draining" while /live stays 200, until the drain ends;
- /metrics is Prometheus text that promtool accepts, and its counters, queue depth
  and requests in flight match the requests sent;
- another path is 404, another method 405 (Allow: GET, HEAD); HEAD has no body; a
  malformed --health-listen is a usage error (exit 2), a port in use a one-line
  failure (exit 1).

Usage: test_replica_health_http.py BUILD_DIR REPO_ROOT
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import (Cluster, Proc, digits_request, infer_async, set_batching,  # noqa: E402
                     wait_until)
from test_protocol_util import make_repo  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
REPLICA = os.path.join(BUILD, "replica", "corral-replica")
HEALTH_RE = r"health endpoint listening on http://127\.0\.0\.1:(\d+)"


def get(port, path, method="GET"):
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def state(port, path):
    st, _, body = get(port, path)
    return st, json.loads(body)


def metrics(port):
    """{"name{labels}": value} of the replica's /metrics."""
    st, _, body = get(port, "/metrics")
    assert st == 200, st
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def sample(m, name, **labels):
    lab = {"model": "digits", "version": "1"}
    lab.update(labels)
    key = "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in lab.items()))
    return m[key]


class ReplicaHealthHTTP(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-hh-")
        make_repo(self.tmp.name, ROOT)
        self.plain = digits_request(ROOT)
        self.c = Cluster(BUILD, self.tmp.name)
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            p.kill()
        self.c.close()
        self.tmp.cleanup()

    def replica(self, *extra):
        """A replica in the cluster with --health-listen; returns its health port."""
        self.c.replica("digits", "--health-listen", "127.0.0.1:0", *extra)
        m = re.search(HEALTH_RE, self.c.replicas[-1][1].output())
        self.assertIsNotNone(m)
        return int(m.group(1))

    def test_starting_then_ready(self):
        gate = os.path.join(self.tmp.name, "go")
        p = Proc([REPLICA, "--model-repo", self.tmp.name, "--model", "digits", "--listen",
                  "tcp://127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--test-hooks",
                  "--test-hold-start", gate], HEALTH_RE)
        self.procs.append(p)
        port = int(p.match.group(1))
        wait_until("the hold in the reason",
                   lambda: "held by the test hook" in state(port, "/ready")[1]["reason"])
        st, r = state(port, "/ready")
        self.assertEqual(st, 503, r)
        self.assertEqual((r["state"], r["ready"], r["live"]), ("starting", False, True))
        self.assertEqual((r["model"], r["version"]), ("digits", "1"))
        self.assertEqual(state(port, "/live")[0], 200)
        m = metrics(port)
        self.assertEqual(sample(m, "corral_replica_state", state="starting"), 1)
        self.assertEqual(sample(m, "corral_replica_ready"), 0)
        open(gate, "w").close()
        wait_until("ready", lambda: state(port, "/ready")[0] == 200)
        st, r = state(port, "/ready")
        self.assertEqual((r["state"], r["ready"], r["live"], r["reason"]),
                         ("ready", True, True, ""))
        self.assertEqual(sample(metrics(port), "corral_replica_state", state="ready"), 1)

    def test_stuck_executor_is_not_live(self):
        # Batching, so warm-up times the buckets and the stall limit applies from the
        # first request; the router probes rarely, so it does not cancel the stalled one.
        set_batching(self.tmp.name)
        port = self.replica("--test-hooks", "--stall-ms", "300")
        self.c.router("--threads", "1", "--health-interval-ms", "20000")
        self.c.wait_ready()
        threads, out = infer_async(self.c, dict(self.plain,
                                                parameters={"corral_test_stall_ms": 2500}))
        wait_until("/live 503", lambda: state(port, "/live")[0] == 503, timeout=10)
        st, r = state(port, "/live")
        self.assertEqual((r["state"], r["live"], r["ready"]), ("failed", False, False), r)
        self.assertIn("stall limit", r["reason"])
        self.assertEqual(state(port, "/ready")[0], 503)
        m = metrics(port)
        self.assertEqual(sample(m, "corral_replica_live"), 0)
        self.assertEqual(sample(m, "corral_replica_inflight_requests"), 1)
        for t in threads:
            t.join(30)
        self.assertEqual(out, [200])
        wait_until("/live 200 again", lambda: state(port, "/live")[0] == 200)
        self.assertEqual(state(port, "/ready")[0], 200)

    def test_draining_is_live_not_ready(self):
        port = self.replica("--test-hooks", "--stall-ms", "20000")
        self.c.router("--threads", "1")
        self.c.wait_ready()
        threads, out = infer_async(self.c, dict(self.plain,
                                                parameters={"corral_test_stall_ms": 1500}))
        wait_until("a request held", lambda: sample(metrics(port),
                                                     "corral_replica_inflight_requests") == 1)
        proc = self.c.replicas[0][1]
        proc.p.send_signal(signal.SIGTERM)
        wait_until("draining", lambda: state(port, "/ready")[1]["state"] == "draining")
        st, r = state(port, "/ready")
        self.assertEqual((st, r["ready"], r["live"]), (503, False, True), r)
        self.assertIn("SIGTERM", r["reason"])
        self.assertEqual(state(port, "/live")[0], 200)
        self.assertEqual(sample(metrics(port), "corral_replica_state", state="draining"), 1)
        for t in threads:
            t.join(30)
        self.assertEqual(out, [200])
        self.assertEqual(proc.p.wait(30), 0)

    def test_metrics_count_requests(self):
        port = self.replica()
        self.c.router("--threads", "1")
        self.c.wait_ready()
        for _ in range(7):
            self.assertEqual(self.c.http("POST", "/v2/models/digits/infer", self.plain)[0], 200)
        m = metrics(port)
        self.assertEqual(sample(m, "corral_replica_requests_total"), 7)
        self.assertEqual(sample(m, "corral_replica_success_total"), 7)
        self.assertEqual(sample(m, "corral_replica_inferences_total"), 7)
        self.assertEqual(sample(m, "corral_replica_inflight_requests"), 0)
        self.assertEqual(sample(m, "corral_replica_queue_depth"), 0)
        self.assertEqual(sample(m, "corral_replica_rejections_total", reason="invalid"), 0)
        self.assertEqual(sample(m, "corral_replica_live"), 1)
        promtool = shutil.which("promtool")
        if promtool:
            body = get(port, "/metrics")[2]
            res = subprocess.run([promtool, "check", "metrics"], input=body,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
            self.assertEqual(res.returncode, 0, res.stdout.decode())
        else:
            print("promtool not found: the metrics text was not checked by it")

    def test_paths_methods_and_flags(self):
        port = self.replica()
        st, h, body = get(port, "/nope")
        self.assertEqual(st, 404)
        st, h, body = get(port, "/ready", "POST")
        self.assertEqual(st, 405)
        self.assertEqual(h.get("Allow"), "GET, HEAD")
        st, h, body = get(port, "/ready", "HEAD")
        self.assertEqual((st, body), (200, b""))
        self.assertEqual(h.get("Connection"), "close")
        st, _, body = get(port, "/live?verbose=1")
        self.assertEqual(st, 200)
        base = [REPLICA, "--model-repo", self.tmp.name, "--model", "digits", "--listen",
                "tcp://127.0.0.1:0"]
        res = subprocess.run(base + ["--health-listen", "8080"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(res.returncode, 2, res.stdout)
        self.assertIn("--health-listen '8080' is not HOST:PORT", res.stdout)
        res = subprocess.run(base + ["--health-listen", "127.0.0.1:%d" % port],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=60)
        self.assertEqual(res.returncode, 1, res.stdout)
        self.assertEqual(len(res.stdout.strip().splitlines()), 1, res.stdout)
        self.assertIn("cannot listen", res.stdout)


if __name__ == "__main__":
    testrun.main(argv=sys.argv[3:])
