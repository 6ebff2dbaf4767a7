"""Hostile requests on corral-scheduler's admin API (with admin.token_file), over raw
sockets: missing, wrong and non-bearer tokens; POST /v1/apply with bodies that are not
JSON, nest 100 000 deep, hold invalid UTF-8, are not a config, or exceed the 1 MiB limit;
Content-Length that lies both ways, Transfer-Encoding, NUL bytes, header floods,
request smuggling, pipelining, a TLS hello, 40 idle connections (over the admin API's
connection limit). Each gets its status or a closed connection; meanwhile and
afterwards the status answers, the cluster keeps its replicas, and the scheduler's open
descriptors come back to their count.

Usage: test_admin_hostile.py BUILD_DIR REPO_ROOT
"""
import json
import os
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402
from cluster import wait_until  # noqa: E402
from test_scheduler_run import ROOT, SchedulerHarness  # noqa: E402

TOKEN = "admin-hostile-token-2f6c1"


def exchange(port, data, timeout=10, shut=True):
    """Sends data on a fresh connection; (status or None, body bytes) once it closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    if not out.startswith(b"HTTP/1."):
        return None, out
    return int(out.split(b" ", 2)[1]), out.split(b"\r\n\r\n", 1)[-1]


def req(method, path, body=b"", headers=(), token=TOKEN, length=True):
    h = ["%s %s HTTP/1.1" % (method, path), "Host: x"]
    if token:
        h.append("Authorization: Bearer " + token)
    h += list(headers)
    if length and (body or method == "POST"):
        h.append("Content-Length: %d" % len(body))
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


class AdminHostile(SchedulerHarness, unittest.TestCase):
    # The cluster as test_scheduler_run.py starts and tears it down.

    @staticmethod
    def fd_samples(pid, seconds):
        """The process's open descriptor count, sampled every 50 ms for `seconds`."""
        out, end = [], time.time() + seconds
        while time.time() < end:
            out.append(len(os.listdir("/proc/%d/fd" % pid)))
            time.sleep(0.05)
        return out

    def expect(self, status, data, contains=None, **kw):
        st, body = exchange(self.admin_port, data, **kw)
        self.assertEqual(st, status, (data[:120], body[:300]))
        if contains:
            self.assertIn(contains, body.decode("utf-8", "replace"))
        return body

    def test_catalog(self):
        tf = os.path.join(self.tmp.name, "admin.token")
        with open(tf, "w") as f:
            f.write(TOKEN + "\n")
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 1, "threads": 1}], token_file=tf)
        wait_until("1 ready replica", lambda: len(self.ready_replicas("digits")) == 1, 60)
        pid = self.sched.p.pid
        before = self.status(TOKEN)
        # The scheduler opens a connection to the router's /metrics every 2 s for a while
        # after a status read: the baseline is its count between those, the fewest seen.
        fds0 = min(self.fd_samples(pid, 3.0))
        p = self.admin_port

        # Tokens.
        self.expect(401, req("GET", "/v1/status", token=None), "missing")
        self.expect(401, req("GET", "/v1/status", token=TOKEN + "x"), "wrong")
        self.expect(401, req("GET", "/v1/status", token=None,
                             headers=["Authorization: Basic " + TOKEN]), "not a bearer")
        self.expect(401, req("POST", "/v1/apply", b"{}", token=TOKEN[:-1]), "wrong")
        # Apply bodies.
        self.expect(400, req("POST", "/v1/apply", b"this is not json"))
        self.expect(400, req("POST", "/v1/apply", b"[" * 100000))
        self.expect(400, req("POST", "/v1/apply", b'{"model_repository": "\xff\xfe"}'))
        self.expect(400, req("POST", "/v1/apply", json.dumps([1, 2]).encode()))
        self.expect(400, req("POST", "/v1/apply", json.dumps(
            {"model_repository": "/nonexistent", "models": [{"name": "x", "replicas": -1}]})
            .encode()))
        self.expect(413, req("POST", "/v1/apply", b" " * ((1 << 20) + 1)))
        self.expect(413, req("POST", "/v1/apply", length=False,
                             headers=["Content-Length: 999999999999"]))
        # Framing.
        self.expect(None, req("POST", "/v1/apply", b"{}", length=False,
                              headers=["Content-Length: 50"]), timeout=30)  # shorter body
        self.expect(400, req("POST", "/v1/apply", b"2\r\n{}\r\n0\r\n\r\n", length=False,
                             headers=["Transfer-Encoding: chunked"]))
        self.expect(400, req("POST", "/v1/apply", b"{}", headers=["Transfer-Encoding: chunked"]))
        self.expect(400, req("GET", "/v1/status", headers=["X-A: a\x00b"]))
        self.expect(400, req("GET", "/v1/status", length=False,
                             headers=["Content-Length: 1", "Content-Length: 2"]))
        self.expect(400, req("GET", "/v1/status", length=False, headers=["Content-Length: -1"]))
        self.expect(431, req("GET", "/v1/status", headers=["X-%d: %s" % (i, "v" * 100)
                                                           for i in range(400)]))
        self.expect(400, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
        self.expect(400, b"GET v1/status HTTP/1.1\r\n\r\n")
        self.expect(404, req("GET", "/v1/nope"))
        self.expect(405, req("DELETE", "/v1/status"))
        # Pipelining: one request per connection is answered, nothing smuggled after it.
        body = self.expect(200, req("GET", "/v1/status") + req("POST", "/v1/apply", b"{}"))
        self.assertEqual(body.count(b"HTTP/1."), 0, body[:200])
        # Idle connections beyond the connection limit: the oldest are closed to make
        # room, and the status still answers while they are open.
        idle = [socket.create_connection(("127.0.0.1", p), timeout=10) for _ in range(40)]
        try:
            for s in idle[::2]:
                s.sendall(b"GET /v1/sta")  # half a request line
            self.assertEqual(self.status(TOKEN)["models"][0]["name"], "digits")
        finally:
            for s in idle:
                s.close()
        # Nothing changed, and nothing leaked.
        after = self.status(TOKEN)
        self.assertEqual(after["models"][0]["desired"], before["models"][0]["desired"])
        self.assertEqual(len(self.ready_replicas("digits")), 1)
        self.assertIsNone(self.sched.p.poll(), "the scheduler exited")
        self.assertEqual(min(self.fd_samples(pid, 6.0)), fds0,
                         "the scheduler holds descriptors the catalog opened")


if __name__ == "__main__":
    testrun.main(unittest.TestLoader().loadTestsFromTestCase(AdminHostile))
