"""Bounded under overload, and no file descriptor leaks.

A replica whose every request takes 20 ms (the test stall hook; no batching) sustains
about 50 requests/s. wrk drives it through the router with 64 connections for 8 s, far
above that (the offered rate is measured and must be at least 10x what was served):
every request gets an answer, the ones over the queue limit (max_queue_size 16) are 429
at once, the served rate stays near the sustainable one, and the router's and replica's
RSS, sampled every 0.25 s, stay under a stated bound (baseline + 48 MiB) and flat (the
last third's peak within 16 MiB of the first third's). Then 10 000 connections are
opened and closed (idle, with a whole request, with half a request, reset) and the
router's open file descriptors come back to exactly their count before; both processes
stop on SIGTERM with status 0 (a sanitizer build also checks for leaks there).

Usage: test_overload.py BUILD_DIR REPO_ROOT
"""
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402
from cluster import Cluster, digits_request, sanitized, wait_until  # noqa: E402
from test_protocol_util import stop_and_clean  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
STALL_MS = 20
QUEUE = 16
RSS_GROWTH_MAX = 48 << 20
RSS_DRIFT_MAX = 16 << 20

WRK_LUA = r'''
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function setup(thread)
  thread:set("id", 1)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d errors_connect=%d errors_read=%d "
    .. "errors_write=%d errors_status=%d errors_timeout=%d p99_us=%d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(99)))
end
'''


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    return int(m.group(1)) * 1024


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Overload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("wrk"):
            testrun.skip_all("wrk is not installed (deploy/setup.sh installs it)")
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-overload-")
        repo = cls.tmp.name
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(repo, "digits"))
        cfgp = os.path.join(repo, "digits", "config.json")
        with open(cfgp) as f:
            cfg = json.load(f)
        cfg["batching"] = {"max_batch_size": 0, "max_queue_size": QUEUE}
        with open(cfgp, "w") as f:
            json.dump(cfg, f)
        body = digits_request(ROOT)
        body["parameters"] = {"corral_test_stall_ms": STALL_MS}
        cls.body = json.dumps(body)
        cls.body_file = os.path.join(repo, "body.json")
        with open(cls.body_file, "w") as f:
            f.write(cls.body)
        cls.lua = os.path.join(repo, "count.lua")
        with open(cls.lua, "w") as f:
            f.write(WRK_LUA)
        c = cls.c = Cluster(BUILD, repo)
        try:
            c.replica("digits", "--test-hooks")
            c.router("--health-interval-ms", "2000", "--idle-timeout-ms", "60000")
            c.wait_ready("/v2/models/digits/ready")
        except Exception:
            c.close()
            cls.tmp.cleanup()
            raise
        cls.router_pid = c.router_proc.p.pid
        cls.replica_pid = c.replicas[0][1].p.pid

    @classmethod
    def tearDownClass(cls):
        replica = cls.c.replicas[0][1].p
        stop_and_clean(cls.c, cls.tmp)
        # The replica drained and exited by itself on SIGTERM: status 0.
        if replica.returncode != 0:
            raise AssertionError("replica exit status %s" % replica.returncode)

    def stats(self):
        st, r = self.c.http("GET", "/v2/models/digits/stats")
        self.assertEqual(st, 200, r)
        return r["model_stats"][0]["inference_stats"]

    def test_1_overload_is_bounded(self):
        # Warm both processes up, then take the baseline.
        for _ in range(20):
            st, r = self.c.http("POST", "/v2/models/digits/infer", body=self.body)
            self.assertEqual(st, 200, r)
        base = {p: rss(p) for p in (self.router_pid, self.replica_pid)}
        before = self.stats()
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.time(), rss(self.router_pid), rss(self.replica_pid)))
                time.sleep(0.25)

        t = threading.Thread(target=sample)
        t.start()
        try:
            env = dict(os.environ, BODY_FILE=self.body_file)
            res = subprocess.run(["wrk", "-t2", "-c64", "-d8s", "-s", self.lua,
                                  "http://127.0.0.1:%d/v2/models/digits/infer" % self.c.port],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=60)
        finally:
            stop.set()
            t.join()
        m = re.search(r"RESULT (.*)", res.stdout)
        self.assertIsNotNone(m, res.stdout)
        r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
        after = self.stats()
        served = after["success"]["count"] - before["success"]["count"]
        secs = r["duration_us"] / 1e6
        print("overload: %d requests in %.1f s (%.0f/s offered), %d served (%.0f/s), "
              "non-2xx %d, p99 %.1f ms" % (r["requests"], secs, r["requests"] / secs, served,
                                           served / secs, r["errors_status"], r["p99_us"] / 1e3),
              flush=True)
        # Every request was answered: no connection, read, write or timeout error.
        for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout"):
            self.assertEqual(r[k], 0, res.stdout)
        # Served near the sustainable rate (a 20 ms stall: at most 50/s), the rest refused.
        self.assertLessEqual(served / secs, 1000.0 / STALL_MS * 1.1)
        self.assertGreater(served / secs, 1000.0 / STALL_MS * 0.3)
        self.assertGreaterEqual(r["requests"], 10 * served, "offered less than 10x served")
        # wrk counts what came back within its 8 s; the replica also counts the (at most
        # one per connection) requests still running when wrk stopped.
        ok = r["requests"] - r["errors_status"]
        self.assertTrue(ok <= served <= ok + 64, "wrk saw %d answered 2xx, the replica "
                        "served %d" % (ok, served))
        st, metrics, _ = self.c.http("GET", "/metrics", raw=True)
        refused = sum(float(v) for v in re.findall(
            r'corral_router_requests_total\{model="digits"[^}]*code="429"\} (\S+)',
            metrics.decode()))
        self.assertGreaterEqual(refused, r["errors_status"] * 0.99, "the refusals were not 429")
        # Memory: bounded and flat.
        for i, (pid, name) in enumerate(((self.router_pid, "router"),
                                         (self.replica_pid, "replica"))):
            curve = [s[1 + i] for s in samples]
            peak = max(curve)
            print("%s RSS: baseline %.1f MiB, peak %.1f MiB over %d samples" %
                  (name, base[pid] / 2**20, peak / 2**20, len(curve)), flush=True)
            if sanitized(pid):
                continue
            self.assertLess(peak - base[pid], RSS_GROWTH_MAX, "%s RSS grew by %d bytes" %
                            (name, peak - base[pid]))
            third = max(1, len(curve) // 3)
            self.assertLess(max(curve[-third:]) - max(curve[:third]), RSS_DRIFT_MAX,
                            "%s RSS kept growing: %s" % (name, curve))

    def test_2_no_fd_leak_after_10000_connections(self):
        st, _ = self.c.http("GET", "/v2/health/live")
        self.assertEqual(st, 200)
        self.c._conn.close()
        self.c._conn = None
        time.sleep(0.2)
        router_before = fds(self.router_pid)
        replica_before = fds(self.replica_pid)
        req = ("POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
               "application/json\r\nContent-Length: %d\r\n\r\n%s" %
               (len(self.body), self.body)).encode()
        answered = 0
        for i in range(10000):
            s = socket.create_connection(("127.0.0.1", self.c.port), timeout=30)
            kind = i % 4
            if kind == 1 and i % 40 == 1:
                # A whole request (stalled 20 ms each, so only every tenth of these).
                s.sendall(req)
                if s.recv(4096).startswith(b"HTTP/1.1"):
                    answered += 1
            elif kind == 2:
                s.sendall(req[:len(req) // 2])  # half a request, then gone
            elif kind == 3:
                # Reset instead of an orderly close.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        self.assertEqual(answered, 250)
        wait_until("the router's descriptors back to %d" % router_before,
                   lambda: fds(self.router_pid) == router_before, timeout=20)
        self.assertEqual(fds(self.replica_pid), replica_before)
        st, r = self.c.http("POST", "/v2/models/digits/infer", body=self.body)
        self.assertEqual(st, 200, r)


if __name__ == "__main__":
    testrun.main(argv=sys.argv[3:])
