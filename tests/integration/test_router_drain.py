"""The router drains on SIGTERM: requests in flight (HTTP and RPC) each get
their answer, the HTTP ones with "Connection: close"; idle keep-alive
connections are closed; new connections are refused; the router exits 0.

Every request is stalled in the replica (--test-hooks) so that all of them
are in flight when the signal arrives: the test waits until the replicas
have counted every one before it sends SIGTERM.

Usage: test_router_drain.py BUILD_DIR REPO_ROOT
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import replica_counts, wait_until  # noqa: E402
from test_protocol_util import make_repo, start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
HTTP_REQ = 8
RPC_REQ = 2
STALL_MS = 1500


class RouterDrain(unittest.TestCase):
    def run_drain(self, extra_router_args=(), mutate=None):
        """Starts a cluster, puts requests in flight, SIGTERMs the router; returns what the
        clients got: (http results, rpc results, idle connection closed?, router exit)."""
        with tempfile.TemporaryDirectory(prefix="corral-rdrain-") as tmp:
            make_repo(tmp, ROOT)
            # Batching, so the stalled requests share a few batches; a stall limit above the
            # stall, so a replica holding them stays live.
            cfgp = os.path.join(tmp, "digits", "config.json")
            with open(cfgp) as f:
                cfg = json.load(f)
            cfg["batching"] = {"max_batch_size": 16, "max_queue_delay_us": 50000}
            with open(cfgp, "w") as f:
                json.dump(cfg, f)
            rargs = ["--test-hooks", "--stall-ms", "20000"]
            c = start_cluster(BUILD, tmp, [("digits", rargs), ("digits", rargs)],
                              router_args=["--threads", "2"] + list(extra_router_args))
            try:
                with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
                    x = json.load(f)["inputs"][0]
                plain = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                     "data": x}]}
                stalled = dict(plain, parameters={"corral_test_stall_ms": STALL_MS})
                # An idle keep-alive connection: one answered request, then nothing.
                idle = http.client.HTTPConnection("127.0.0.1", c.port, timeout=30)
                idle.request("POST", "/v2/models/digits/infer", json.dumps(plain))
                r = idle.getresponse()
                self.assertEqual(r.status, 200)
                r.read()
                n0, _ = replica_counts(c, "digits")

                http_results, rpc_results = [], []

                def one_http():
                    try:
                        conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=60)
                        conn.request("POST", "/v2/models/digits/infer", json.dumps(stalled))
                        resp = conn.getresponse()
                        body = resp.read()
                        http_results.append((resp.status, resp.getheader("Connection"),
                                             json.loads(body)))
                        conn.close()
                    except Exception as ex:  # noqa: BLE001 - kept for the assertions
                        http_results.append((None, None, repr(ex)))

                body_path = os.path.join(tmp, "rpc.json")
                with open(body_path, "w") as f:
                    json.dump(stalled, f)

                def one_rpc():
                    p = subprocess.run([os.path.join(BUILD, "client", "corralctl"), "infer",
                                        "--rpc", c.rpc_url, "--model", "digits", body_path],
                                       capture_output=True, text=True, timeout=60)
                    rpc_results.append((p.returncode, p.stderr.strip()))

                threads = [threading.Thread(target=one_http) for _ in range(HTTP_REQ)]
                threads += [threading.Thread(target=one_rpc) for _ in range(RPC_REQ)]
                for t in threads:
                    t.start()
                # Every request has reached a replica (and is stalled there) before the signal.
                wait_until("every request in flight",
                           lambda: replica_counts(c, "digits")[0] >= n0 + HTTP_REQ + RPC_REQ)
                if mutate:
                    mutate(c)
                router = c.router_proc
                router.p.send_signal(signal.SIGTERM)
                # The listener closes: a new connection is refused.
                def refused():
                    try:
                        socket.create_connection(("127.0.0.1", c.port), timeout=1).close()
                        return False
                    except OSError:
                        return True
                wait_until("new connections refused", refused)
                # The idle keep-alive connection is closed by the router.
                idle.sock.settimeout(30)
                idle_closed = idle.sock.recv(1) == b""
                for t in threads:
                    t.join(120)
                rc = router.p.wait(60)
                return http_results, rpc_results, idle_closed, rc, router.output()
            finally:
                c.close()

    def test_sigterm_answers_everything_in_flight(self):
        http_results, rpc_results, idle_closed, rc, log = self.run_drain()
        self.assertEqual(len(http_results), HTTP_REQ)
        for status, conn_hdr, body in http_results:
            self.assertEqual(status, 200, body)
            self.assertEqual(conn_hdr, "close")
            self.assertEqual(body["outputs"][0]["shape"], [1, 10])
        self.assertEqual(rpc_results, [(0, "")] * RPC_REQ)
        self.assertTrue(idle_closed)
        self.assertEqual(rc, 0, log[-2000:])
        self.assertIn("draining", log)
        self.assertNotIn("drain timeout", log)

    def test_drain_timeout_cuts_the_rest(self):
        # A drain deadline shorter than the stall: the router gives up on what is left,
        # says so, and still exits 0.
        http_results, rpc_results, idle_closed, rc, log = self.run_drain(
            extra_router_args=["--drain-timeout-ms", "200"])
        self.assertEqual(len(http_results), HTTP_REQ)
        self.assertEqual([s for s, _, _ in http_results], [None] * HTTP_REQ, http_results)
        self.assertEqual(len(rpc_results), RPC_REQ)
        self.assertTrue(all(code != 0 for code, _ in rpc_results), rpc_results)
        self.assertEqual(rc, 0, log[-2000:])
        self.assertIn("drain timeout", log)


if __name__ == "__main__":
    testrun.main()
