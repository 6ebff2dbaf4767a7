"""A replica SIGKILLed under concurrent load: every request it held is retried
on the other replica and answered, the retries counter equals the retries the
router logged, the RPC endpoint keeps answering throughout, and a replica
restarted on the same address is re-admitted and takes traffic again.

The load is HTTP clients on threads plus corralctl processes over RPC, every
request stalled in the replica (--test-hooks, corral_test_stall_ms) so that
requests are queued and running on the victim when it dies: the test waits
until the router's replica table shows several in flight on it before the
kill. Every request started is counted, and every answer is compared with the
logits the same replica gave before the load.

Usage: test_failover.py BUILD_DIR REPO_ROOT
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, Proc, wait_until  # noqa: E402
from test_protocol_util import stop_and_check, make_repo, start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
HTTP_CLIENTS = 6
RPC_CLIENTS = 2
RPC_REPEAT = 5
STALL_MS = 40


class Load:
    """Closed-loop clients until stop(): HTTP threads and corralctl processes over RPC."""

    def __init__(self, c, rows, want, tmp):
        self.c, self.rows, self.want = c, rows, want
        self.mu = threading.Lock()
        self.started = self.answered = 0
        self.bad = []          # (what, detail) of every request that did not come back right
        self.rpc_started = self.rpc_answered = 0
        self._stop = threading.Event()
        self.body_path = os.path.join(tmp, "rpc.json")
        with open(self.body_path, "w") as f:
            json.dump(self.body(0), f)
        self.threads = [threading.Thread(target=self._http, args=(i,)) for i in range(HTTP_CLIENTS)]
        self.threads += [threading.Thread(target=self._rpc) for _ in range(RPC_CLIENTS)]
        for t in self.threads:
            t.start()

    def body(self, k):
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                            "data": self.rows[k]}],
                "parameters": {"corral_test_stall_ms": STALL_MS}}

    def _http(self, i):
        cl = Cluster(self.c.build, self.c.repo)
        cl.port = self.c.port
        k = i
        while not self._stop.is_set():
            k = (k + 1) % len(self.rows)
            with self.mu:
                self.started += 1
            try:
                st, r = cl.http("POST", "/v2/models/digits/infer", self.body(k))
                ok = st == 200 and r["outputs"][0]["data"] == self.want[k]
                detail = (st, r)
            except Exception as ex:  # noqa: BLE001 - counted and reported, never lost
                ok, detail = False, repr(ex)
            with self.mu:
                if ok:
                    self.answered += 1
                else:
                    self.bad.append(("http", detail))
        cl.close()

    def _rpc(self):
        ctl = os.path.join(BUILD, "client", "corralctl")
        while not self._stop.is_set():
            with self.mu:
                self.rpc_started += RPC_REPEAT
            p = subprocess.run([ctl, "infer", "--rpc", self.c.rpc_url, "--model", "digits",
                                "--repeat", str(RPC_REPEAT), self.body_path],
                               capture_output=True, text=True, timeout=120)
            good = (p.returncode == 0 and "RESULT requests=%d " % RPC_REPEAT in p.stderr and
                    json.loads(p.stdout)["outputs"][0]["data"] == self.want[0])
            with self.mu:
                if good:
                    self.rpc_answered += RPC_REPEAT
                else:
                    self.bad.append(("rpc", p.returncode, p.stderr[-500:]))

    def count(self):
        with self.mu:
            return self.answered + self.rpc_answered

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(180)
        return [t for t in self.threads if t.is_alive()]


class Failover(unittest.TestCase):
    def table(self, c):
        st, t = c.http("GET", "/v2/corral/replicas")
        self.assertEqual(st, 200)
        return {r["url"]: r for r in t["replicas"]}

    def test_kill_under_load_retry_readmit(self):
        with tempfile.TemporaryDirectory(prefix="corral-failover-") as tmp:
            make_repo(tmp, ROOT)
            # One router thread, so the replica table's in-flight counts are all of them.
            c = start_cluster(BUILD, tmp, [("digits", ["--test-hooks"]),
                                           ("digits", ["--test-hooks"])],
                              router_args=["--threads", "1", "--health-interval-ms", "100"])
            load = None
            try:
                with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
                    rows = json.load(f)["inputs"][:8]
                want = []
                for k in range(len(rows)):
                    st, r = c.http("POST", "/v2/models/digits/infer",
                                   {"inputs": [{"name": "input", "datatype": "FP32",
                                                "shape": [1, 64], "data": rows[k]}]})
                    self.assertEqual(st, 200, r)
                    want.append(r["outputs"][0]["data"])
                victim_url = c.replicas[0][1].match.group(1)
                other_url = c.replicas[1][1].match.group(1)
                load = Load(c, rows, want, tmp)
                wait_until("40 answers before the kill", lambda: load.count() >= 40)
                # Kill the victim while it holds several requests (queued and running).
                held = wait_until("requests in flight on the victim",
                                lambda: self.table(c)[victim_url]["outstanding"] >= 3 and
                                self.table(c)[victim_url]["outstanding"])
                c.replicas[0][1].kill(signal.SIGKILL)
                at_kill = load.count()
                wait_until("the victim out of rotation",
                         lambda: self.table(c)[victim_url]["state"] in ("ejected", "not_ready"))
                wait_until("60 answers after the kill", lambda: load.count() >= at_kill + 60)
                self.assertEqual(self.table(c)[other_url]["state"], "ready")

                # Restart on the same address: re-admitted, then given requests again.
                argv = c.replicas[0][1].argv
                argv = argv[:argv.index("--listen") + 1] + [victim_url] + \
                    argv[argv.index("--listen") + 2:]
                c.replicas[0] = ("digits", Proc(argv, r" on (tcp://127\.0\.0\.1:\d+)"))
                wait_until("the restarted replica ready",
                         lambda: self.table(c)[victim_url]["state"] == "ready")
                wait_until("requests in flight on the restarted replica",
                         lambda: self.table(c)[victim_url]["outstanding"] >= 1)
                before_stop = load.count()
                wait_until("20 more answers", lambda: load.count() >= before_stop + 20)
                stuck = load.stop()
                self.assertEqual(stuck, [], "client threads did not finish")

                # Every request started came back, right.
                self.assertEqual(load.bad, [])
                self.assertEqual(load.answered, load.started)
                self.assertEqual(load.rpc_answered, load.rpc_started)
                self.assertGreater(load.rpc_answered, 0)
                print("answered %d HTTP and %d RPC requests; %d were in flight on the victim "
                      "when it was killed" % (load.answered, load.rpc_answered, held), flush=True)

                # Retries: as many as the router logged, at least one per request the victim
                # held (each was retried once), and the router's own counts add up.
                st, data, _ = c.http("GET", "/metrics", raw=True)
                text = data.decode()
                m = re.search(r'^corral_router_retries_total\{model="digits"\} (\d+)$', text, re.M)
                self.assertIsNotNone(m, "no corral_router_retries_total for digits")
                retries = int(m.group(1))
                logged = len(re.findall(r"retrying a request for model 'digits'",
                                        c.router_proc.output()))
                self.assertEqual(retries, logged)
                self.assertGreaterEqual(retries, 1)
                print("retries: %d counted, %d logged" % (retries, logged), flush=True)

                def total(proto):
                    m = re.search(r'^corral_router_requests_total\{model="digits",version="1",'
                                  r'protocol="%s",code="200"\} (\d+)$' % proto, text, re.M)
                    return int(m.group(1)) if m else 0
                self.assertEqual(total("http"), load.answered + len(rows))
                self.assertEqual(total("rpc"), load.rpc_answered)
                self.assertNotRegex(text, r'corral_router_requests_total\{[^}]*code="5\d\d"')
            finally:
                if load:
                    load.stop()
                stop_and_check(c)


if __name__ == "__main__":
    testrun.main()
