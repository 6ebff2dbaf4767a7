"""The rules of CONTROL-PLANE.md that the router and the replicas keep, each
kept and then broken on purpose, under load from this test (every request
started is counted back):

- SIGTERM one of two replicas under load: no request fails (its refusals
  while draining are retried on the other, what it held is answered) and it
  exits 0. (Rules 3 and 4.)
- A replica's accepted requests: answered when it drains (SIGTERM); lost when
  it is killed instead. (Rule 3.)
- Stopping a replica: nothing fails when it is removed from the router's table
  (and the removal acknowledged) first; requests fail when it is stopped while
  the table still sends it work. (Rule 2.)

Usage: test_control_plane.py BUILD_DIR REPO_ROOT
"""
import os
import re
import signal
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import (Cluster, digits_request, infer_async, replica_counts,  # noqa: E402
                     set_batching, wait_until)
from test_protocol_util import make_repo  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]


class Load:
    """Closed-loop HTTP clients until stop(); every request counted: answered or bad."""

    def __init__(self, c, body, clients=4):
        self.c, self.body = c, body
        self.mu = threading.Lock()
        self.started = self.answered = 0
        self.bad = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self):
        cl = Cluster(self.c.build, self.c.repo)
        cl.port = self.c.port
        while not self._stop.is_set():
            with self.mu:
                self.started += 1
            try:
                st, r = cl.http("POST", "/v2/models/digits/infer", self.body)
                ok, detail = st == 200, (st, r)
            except Exception as ex:  # noqa: BLE001 - counted, never lost
                ok, detail = False, repr(ex)
            with self.mu:
                if ok:
                    self.answered += 1
                else:
                    self.bad.append(detail)
        cl.close()

    def count(self):
        with self.mu:
            return self.answered + len(self.bad)

    def more(self, n):
        target = self.count() + n
        wait_until("%d more answers" % n, lambda: self.count() >= target)

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(60)
        return self


class ControlPlane(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-cp-")
        make_repo(self.tmp.name, ROOT)
        self.plain = digits_request(ROOT)
        self.c = Cluster(BUILD, self.tmp.name)
        self.load = None

    def tearDown(self):
        if self.load:
            self.load.stop()
        self.c.close()
        self.tmp.cleanup()

    def stalled(self, ms):
        return dict(self.plain, parameters={"corral_test_stall_ms": ms})

    def replica_table(self):
        return {r["url"]: r for r in self.c.http("GET", "/v2/corral/replicas")[1]["replicas"]}

    def batching(self):
        set_batching(self.tmp.name)

    def send_async(self, body, n):
        """n requests on threads of their own; returns (threads, results list)."""
        return infer_async(self.c, body, n)

    def test_sigterm_one_of_two_under_load(self):
        # Arranged so that the router sends the draining replica new requests: the other
        # replica is busier (three stalled requests against one), and health probes are
        # rare, so only the refusals tell the router. Each refusal must be retried on the
        # other replica; what the victim held must be answered; it exits 0.
        self.batching()
        other = self.c.replica("digits", "--test-hooks", "--stall-ms", "20000")
        victim_url = self.c.replica("digits", "--test-hooks", "--stall-ms", "20000")
        victim = self.c.replicas[1][1]
        self.c.replicas = self.c.replicas[:1]
        self.c.router("--threads", "1", "--health-interval-ms", "5000")
        self.c.replicas.append(("digits", victim))
        self.c.wait_ready()
        busy, busy_out = self.send_async(self.stalled(2000), 3)
        wait_until("three requests on the other replica",
                   lambda: self.replica_table()[other]["outstanding"] == 3)
        st, r = self.c.control("POST", "/v1/replicas", {"model": "digits", "url": victim_url})
        self.assertEqual(st, 200, r)
        wait_until("the victim ready", lambda: self.replica_table()[victim_url]["state"] == "ready")
        held, held_out = self.send_async(self.stalled(1000), 1)
        wait_until("one request on the victim",
                   lambda: self.replica_table()[victim_url]["outstanding"] == 1)
        victim.p.send_signal(signal.SIGTERM)
        self.load = Load(self.c, self.plain, clients=4)
        rc = victim.p.wait(60)
        self.load.more(60)
        self.load.stop()
        for t in busy + held:
            t.join(60)
        self.assertEqual(rc, 0, victim.output()[-2000:])
        m = re.search(r"drained in \d+ ms: (\d+) accepted requests cut \(answered draining\), "
                      r"(\d+) new", victim.output())
        self.assertIsNotNone(m, victim.output()[-2000:])
        cut, refused = int(m.group(1)), int(m.group(2))
        self.assertEqual(cut, 0)
        self.assertGreaterEqual(refused, 1)
        self.assertEqual(busy_out + held_out, [200] * 4)
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        print("%d requests answered under load; the victim answered the one it held and "
              "refused %d while draining, each retried" % (self.load.answered, refused))

    def held_requests(self, stop):
        """One replica holding 4 stalled requests when `stop` is applied to it; returns
        the statuses those requests got and the replica's exit status."""
        self.c.replica("digits", "--test-hooks", "--stall-ms", "20000")
        self.c.router("--threads", "1", "--health-interval-ms", "100")
        self.c.wait_ready()
        proc = self.c.replicas[0][1]
        n0, _ = replica_counts(self.c, "digits")
        out = []

        def send():
            cl = Cluster(BUILD, self.tmp.name)
            cl.port = self.c.port
            try:
                out.append(cl.http("POST", "/v2/models/digits/infer", self.stalled(1500))[0])
            except Exception as ex:  # noqa: BLE001 - counted
                out.append(repr(ex))
            cl.close()
        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until("the replica holding every request",
                   lambda: replica_counts(self.c, "digits")[0] >= n0 + 4)
        stop(proc.p)
        for t in threads:
            t.join(60)
        return sorted(out, key=str), proc.p.wait(60)

    def test_drained_replica_answers_what_it_held(self):
        statuses, rc = self.held_requests(lambda p: p.send_signal(signal.SIGTERM))
        self.assertEqual(statuses, [200] * 4)
        self.assertEqual(rc, 0)

    def test_killed_replica_loses_what_it_held(self):
        # Rule 3 broken on purpose: no drain. The only replica is gone, so nothing can
        # take its requests over.
        statuses, rc = self.held_requests(lambda p: p.kill())
        self.assertEqual(len(statuses), 4)
        self.assertNotIn(200, statuses)
        self.assertNotEqual(rc, 0)

    def stop_second_replica(self, remove_first):
        """Two replicas under load; the second is stopped (SIGSTOP: it hangs, as a dying
        host does), after its removal from the router's table was acknowledged or while
        the table still names it. Health probes are slow here, so only the table keeps
        requests away from it; the request deadline is 1 s. One router thread, so its
        replica table shows every request in flight."""
        for _ in range(2):
            self.c.replica("digits")
        self.c.router("--threads", "1", "--health-interval-ms", "3000", "--timeout-ms", "1000")
        self.c.wait_ready()
        second = self.c.replicas[1][1]
        url = second.match.group(1)
        self.load = Load(self.c, self.plain)
        self.load.more(40)
        if remove_first:
            st, r = self.c.control("POST", "/v1/replicas/remove", {"url": url})
            self.assertEqual(st, 200, r)
            # Acknowledged: no thread sends it anything new. What it already holds is
            # answered before it is stopped (a drain; here, its in-flight count reaching 0
            # in the table of the router's one thread).
            wait_until("the removed replica's requests answered",
                       lambda: self.replica_table().get(url, {"outstanding": 0})["outstanding"]
                       == 0)
        os.kill(second.p.pid, signal.SIGSTOP)
        try:
            # Stopped for more than twice the deadline: a request it was given would
            # have failed by then; the others go on meanwhile.
            self.load.more(100)
            time.sleep(2.5)
        finally:
            os.kill(second.p.pid, signal.SIGCONT)
        self.load.stop()
        self.assertEqual(self.load.answered + len(self.load.bad), self.load.started)
        return self.load.bad

    def test_stop_after_removal_loses_nothing(self):
        self.assertEqual(self.stop_second_replica(remove_first=True), [])

    def test_stop_while_in_table_fails_requests(self):
        # Rule 2 broken on purpose: stopped before it left the table.
        bad = self.stop_second_replica(remove_first=False)
        self.assertGreater(len(bad), 0)
        self.assertTrue(all(st == 504 for st, _ in bad), bad)
        print("%d requests failed (504) when the replica was stopped while still in the "
              "table" % len(bad))


if __name__ == "__main__":
    testrun.main()
