"""The batcher as the router sees it: batched answers over HTTP, queue-full as
429, the request parameters "timeout" and "priority" reaching the replica, and
readiness falling when a replica's executor stalls (test hook) or the whole
process is stopped with SIGSTOP.

Usage: test_batching_router.py BUILD_DIR REPO_ROOT
"""
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, replica_counts  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
DIGITS = os.path.join(ROOT, "models", "digits")


def make_repo(models):
    """A model repository whose models all point at the digits version 1, each
    with its own batching section."""
    repo = tempfile.mkdtemp(prefix="corral-batching-router-")
    with open(os.path.join(DIGITS, "config.json")) as f:
        base = json.load(f)
    for name, batching in models.items():
        os.makedirs(os.path.join(repo, name))
        os.symlink(os.path.join(DIGITS, "1"), os.path.join(repo, name, "1"))
        cfg = dict(base, name=name, batching=batching)
        cfg.pop("labels", None)
        with open(os.path.join(repo, name, "config.json"), "w") as f:
            json.dump(cfg, f)
    return repo


def body(rows, **params):
    b = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 64],
                     "data": [v for r in rows for v in r]}]}
    if params:
        b["parameters"] = params
    return b


def time_until(pred, limit):
    """Seconds until pred() holds, polling every 20 ms; None after limit seconds."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if pred():
            return time.time() - t0
        time.sleep(0.02)
    return None


class BatchingThroughRouter(unittest.TestCase):
    def setUp(self):
        self.repo = make_repo({
            "digits_b": {"max_batch_size": 8, "max_queue_delay_us": 2000},
            "digits_q": {"max_batch_size": 1, "max_queue_size": 1},
        })
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            self.ref = json.load(f)
        self.c = Cluster(BUILD, self.repo)

    def tearDown(self):
        self.c.close()
        shutil.rmtree(self.repo, ignore_errors=True)

    def start(self, model, *extra):
        self.c.replica(model, "--test-hooks", *extra)
        self.c.router()
        self.c.wait_ready("/v2/models/%s/ready" % model)
        return self.c.replicas[-1][1]

    def post(self, model, b):
        # A connection per call: these run from several threads at once.
        c = Cluster(BUILD, self.repo)
        c.port = self.c.port
        try:
            return c.http("POST", "/v2/models/%s/infer" % model, b)
        finally:
            c.close()

    def test_concurrent_answers_match_pytorch(self):
        self.start("digits_b")
        xs, want = self.ref["inputs"], self.ref["logits"]
        results, errors = {}, []

        def one(k):
            n = 1 + k % 8
            rows = [xs[(k + i) % len(xs)] for i in range(n)]
            try:
                results[k] = (n, self.post("digits_b", body(rows, priority=1, timeout=5000000)))
            except Exception as ex:  # noqa: BLE001 - reported below, never lost
                errors.append((k, repr(ex)))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Every request started came back.
        self.assertEqual(errors, [])
        self.assertEqual(sorted(results), list(range(48)))
        worst = 0.0
        for k, (n, (status, b)) in results.items():
            self.assertEqual(status, 200, b)
            out = b["outputs"][0]
            self.assertEqual(out["shape"], [n, 10])
            for i in range(n):
                got = out["data"][i * 10:(i + 1) * 10]
                exp = want[(k + i) % len(xs)]
                worst = max(worst, max(abs(a - e) for a, e in zip(got, exp)))
        self.assertLessEqual(worst, 1e-4)
        print("48 concurrent requests through the router, max abs diff vs PyTorch %.3g" % worst)
        # An out-of-range priority is the replica's 400, so the parameter got through.
        status, b = self.post("digits_b", body([xs[0]], priority=9))
        self.assertEqual(status, 400, b)
        self.assertIn("priority", json.dumps(b))

    def test_queue_full_is_429_and_timeout_is_504(self):
        # The stall below stands for a slow batch, not a stuck executor: a stall limit
        # above it keeps the replica live, so the router does not give up on it. Each
        # request is sent once the replica has taken the one before (its own counts, read
        # through /metrics), so the order holds however slow the machine is.
        self.start("digits_q", "--stall-ms", "20000")
        x = self.ref["inputs"][0]
        out = {}

        def send(key, **params):
            try:
                out[key] = self.post("digits_q", body([x], **params))
            except Exception as ex:  # noqa: BLE001 - reported below, never lost
                out[key] = (None, repr(ex))

        def step(key, want, **params):
            t = threading.Thread(target=send, args=(key,), kwargs=params)
            t.start()
            self.assertIsNotNone(time_until(lambda: replica_counts(self.c, "digits_q") == want, 30),
                                 "replica counts %s, expected %s" % (replica_counts(self.c, "digits_q"),
                                                                     want))
            return t

        # Computing for 6 s; then the second batch buffer; then the queue (one place).
        stall = step("stall", (1, 0), corral_test_stall_ms=6000)
        second = step("second", (2, 0))
        queued = step("queued", (3, 1), timeout=3000000)
        # The queue (max_queue_size 1) now holds "queued": this one is refused at once,
        # while the stalled batch is still running.
        status, b = self.post("digits_q", body([x]))
        self.assertEqual(status, 429, b)
        self.assertTrue(stall.is_alive(), "the stalled batch ended before the 429 came back")
        for t in (stall, second, queued):
            t.join()
        self.assertEqual(sorted(out), ["queued", "second", "stall"])
        self.assertEqual(out["stall"][0], 200, out["stall"][1])
        self.assertEqual(out["second"][0], 200, out["second"][1])
        # "queued" asked for a 3 s deadline and expired waiting behind the 6 s batch:
        # 504, not run late.
        self.assertEqual(out["queued"][0], 504, out["queued"][1])

    def test_stalled_executor_makes_the_replica_not_ready(self):
        # Readiness must fall while the executor is stalled past the replica's stall
        # limit (300 ms by default), well before the 6 s stall ends, and come back once
        # the executor moves again.
        self.start("digits_b")
        path = "/v2/models/digits_b/ready"
        t = threading.Thread(target=self.post,
                             args=("digits_b", body([self.ref["inputs"][0]], corral_test_stall_ms=6000)))
        t.start()
        took = time_until(lambda: self.c.http("GET", path)[0] == 503, 30)
        print("router: ready went 503 %.2f s after the executor stalled" % (took or -1))
        self.assertIsNotNone(took)
        self.assertLess(took, 5.0)
        t.join()
        self.assertIsNotNone(time_until(lambda: self.c.http("GET", path)[0] == 200, 30))

    def test_sigstopped_replica_is_not_ready(self):
        proc = self.start("digits_b")
        path = "/v2/models/digits_b/ready"
        os.kill(proc.p.pid, signal.SIGSTOP)
        try:
            took = time_until(lambda: self.c.http("GET", path)[0] == 503, 30)
        finally:
            os.kill(proc.p.pid, signal.SIGCONT)
        print("router: ready went 503 %.2f s after SIGSTOP" % (took or -1))
        self.assertIsNotNone(took)
        # The router's health timeout is max(2 intervals, 1 s): about 1.5 s with the
        # defaults. The bound is that behaviour with room for a loaded machine; a router
        # that never gave up on a stopped replica would take forever.
        self.assertLess(took, 8.0)
        self.assertIsNotNone(time_until(lambda: self.c.http("GET", path)[0] == 200, 30))

    def test_paused_last_replica_keeps_its_requests(self):
        # A pause of the whole machine looks, to the router, like a replica that answers
        # its health probe late. When it is the model's only replica, requests sent then
        # wait for it and are answered, rather than 503 "no ready replica"; readiness
        # still says the model is not ready meanwhile.
        proc = self.start("digits_b")
        path = "/v2/models/digits_b/ready"
        os.kill(proc.p.pid, signal.SIGSTOP)
        try:
            self.assertIsNotNone(time_until(lambda: self.c.http("GET", path)[0] == 503, 30))
            results = []
            threads = [threading.Thread(target=lambda: results.append(self.post(
                "digits_b", body([self.ref["inputs"][0]])))) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            self.assertEqual(results, [], "answered while the replica was stopped")
        finally:
            os.kill(proc.p.pid, signal.SIGCONT)
        for t in threads:
            t.join(60)
        self.assertEqual(sorted(st for st, _ in results), [200] * 4, results)
        self.assertIsNotNone(time_until(lambda: self.c.http("GET", path)[0] == 200, 30))


if __name__ == "__main__":
    testrun.main()
