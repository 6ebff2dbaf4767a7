"""The router's whole HTTP surface against real replicas: every OIP endpoint
with and without versions, every numeric datatype as JSON (flat and nested)
and as binary tensor data (in both directions, mixed with JSON in one
request), raw binary bodies, requested outputs, classification, statistics,
the v1 predict form, request ids, and the error statuses 400, 404, 405, 408,
413, 429, 431, 503 and 504. Bad requests are thrown at the router while valid
ones keep being answered; a client that hangs up cancels its request; a
replica that dies has its requests retried on another.

Usage: test_protocol.py BUILD_DIR REPO_ROOT
"""
import json
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_protocol_util import stop_and_check, DTYPES, make_repo, sample, start_cluster  # noqa: E402
import testrun  # noqa: E402
from cluster import replica_counts, wait_until  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]


def raw_request(port, data, timeout=10, read=True):
    """Sends bytes on a fresh connection; returns (status, headers dict, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return None
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0] else 0
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        want = int(hdrs.get("content-length", "0"))
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, hdrs, body
    finally:
        s.close()


def to_le_bytes(arr):
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def from_json_values(dt, values, shape):
    return np.array(values, dtype=DTYPES[dt][0]).reshape(shape)


class Protocol(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-proto-")
        make_repo(cls.tmp.name, ROOT)
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            cls.ref = json.load(f)
        cls.c = start_cluster(
            BUILD, cls.tmp.name,
            [("digits", []), ("digits", []), ("dtypes", []),
             ("slow", ["--test-hooks", "--stall-ms", "10000"])],
            router_args=["--max-body-bytes", "1048576", "--request-timeout-ms", "600",
                         "--replica", "ghost=tcp://127.0.0.1:1", "--log-level", "debug"],
            ready=["digits", "dtypes", "slow"])
        cls.port = cls.c.port

    @classmethod
    def tearDownClass(cls):
        try:
            stop_and_check(cls.c)
        finally:
            cls.tmp.cleanup()

    # ---- helpers ----

    def infer(self, model, body, headers=None, version=None):
        path = "/v2/models/%s%s/infer" % (model, "/versions/%s" % version if version else "")
        return self.c.http("POST", path, body, headers=headers)

    def digits_body(self, rows, **extra):
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 64],
                            "data": [v for r in rows for v in r]}]}
        body.update(extra)
        return body

    def wait_slow_idle(self):
        """Returns once the slow model answers a plain request: a stalled batch has ended.
        Its queue holds one request, so a 429 means another is still waiting: try again."""
        body = self.digits_body([self.ref["inputs"][0]])
        deadline = time.time() + 60
        while time.time() < deadline:
            st, r = self.clone().http("POST", "/v2/models/slow/infer", body)
            if st == 200:
                return
            self.assertEqual(st, 429, r)
            time.sleep(0.05)
        self.fail("the slow model stayed busy for 60 s")

    def slow_counts(self):
        return replica_counts(self.c, "slow")

    def assert_error(self, status, resp, want, *words):
        self.assertEqual(status, want, resp)
        self.assertIsInstance(resp, dict, resp)
        for w in words:
            self.assertIn(w.lower(), resp.get("error", "").lower(), resp)

    def binary_post(self, model, header, chunks, extra_headers=None):
        head = json.dumps(header).encode()
        hdrs = {"Inference-Header-Content-Length": str(len(head)),
                "Content-Type": "application/octet-stream"}
        hdrs.update(extra_headers or {})
        status, data, resp = self.c.http("POST", "/v2/models/%s/infer" % model,
                                         head + b"".join(chunks), headers=hdrs, raw=True)
        hcl = resp.getheader("Inference-Header-Content-Length")
        jlen = int(hcl) if hcl is not None else len(data)
        return status, json.loads(data[:jlen]), data[jlen:]

    # ---- endpoints ----

    def test_server_metadata_and_health(self):
        status, md = self.c.http("GET", "/v2")
        self.assertEqual(status, 200)
        self.assertEqual(md["name"], "corral")
        for ext in ("binary_tensor_data", "classification", "statistics"):
            self.assertIn(ext, md["extensions"])
        self.assertEqual(self.c.http("GET", "/v2/health/live")[0], 200)
        # The ghost model has no replica that answers, so the server is not ready as a whole.
        self.assertEqual(self.c.http("GET", "/v2/health/ready")[0], 503)
        self.assertEqual(self.c.http("HEAD", "/v2/health/live")[0], 200)

    def test_model_metadata_and_ready_with_versions(self):
        for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
            status, md = self.c.http("GET", path)
            self.assertEqual(status, 200, md)
            self.assertEqual(md["versions"], ["1"])
            self.assertEqual(md["inputs"][0]["shape"], [-1, 64])
        self.assertEqual(self.c.http("GET", "/v2/models/digits/ready")[0], 200)
        self.assertEqual(self.c.http("GET", "/v2/models/digits/versions/1/ready")[0], 200)
        status, resp = self.c.http("GET", "/v2/models/digits/versions/9")
        self.assert_error(status, resp, 404, "version '9'")
        self.assertEqual(self.c.http("GET", "/v2/models/digits/versions/9/ready")[0], 404)
        self.assertEqual(self.c.http("GET", "/v2/models/ghost/ready")[0], 503)
        status, md = self.c.http("GET", "/v2/models/dtypes")
        self.assertEqual([t["datatype"] for t in md["inputs"]], list(DTYPES))
        status, v1 = self.c.http("GET", "/v1/models/digits")
        self.assertEqual((status, v1), (200, {"name": "digits", "ready": True}))

    def test_infer_with_and_without_version(self):
        x = self.ref["inputs"][0]
        for version in (None, "1"):
            status, resp = self.infer("digits", self.digits_body([x]), version=version)
            self.assertEqual(status, 200, resp)
            self.assertEqual(resp["model_version"], "1")
            np.testing.assert_allclose(resp["outputs"][0]["data"], self.ref["logits"][0],
                                       atol=1e-4)
        status, resp = self.infer("digits", self.digits_body([x]), version="7")
        self.assert_error(status, resp, 404, "version '7'")

    def all_inputs(self, rows=2):
        return [{"name": "x_" + dt.lower(), "datatype": dt, "shape": [rows, 3],
                 "data": sample(dt, rows, json_safe=True).tolist()} for dt in DTYPES]

    def test_every_datatype_json_flat_and_nested(self):
        for dt in DTYPES:
            arr = sample(dt, json_safe=True)
            vals = arr.tolist()
            for data in (vals, [v for r in vals for v in r]):
                inputs = self.all_inputs()
                inputs[list(DTYPES).index(dt)]["data"] = data
                body = {"inputs": inputs, "outputs": [{"name": "y_" + dt.lower()}]}
                status, resp = self.infer("dtypes", body)
                self.assertEqual(status, 200, (dt, resp))
                out = resp["outputs"][0]
                self.assertEqual((out["datatype"], out["shape"]), (dt, [2, 3]))
                np.testing.assert_array_equal(from_json_values(dt, out["data"], [2, 3]), arr,
                                              err_msg=dt)

    def test_every_datatype_binary_both_ways_mixed_with_json(self):
        header = {"inputs": [], "outputs": []}
        chunks, want = [], []
        for k, dt in enumerate(DTYPES):
            arr = sample(dt)
            name = "x_" + dt.lower()
            if k % 2 == 0:
                raw = to_le_bytes(arr)
                header["inputs"].append({"name": name, "datatype": dt, "shape": [2, 3],
                                         "parameters": {"binary_data_size": len(raw)}})
                chunks.append(raw)
            else:
                arr = sample(dt, json_safe=True)
                header["inputs"].append({"name": name, "datatype": dt, "shape": [2, 3],
                                         "data": arr.tolist()})
            # Outputs alternate the other way round, so every type goes both ways.
            header["outputs"].append({"name": "y_" + dt.lower(),
                                      "parameters": {"binary_data": k % 2 == 1}})
            want.append((dt, arr, k % 2 == 1))
        status, resp, tail = self.binary_post("dtypes", header, chunks)
        self.assertEqual(status, 200, resp)
        off = 0
        for out, (dt, arr, binary) in zip(resp["outputs"], want):
            self.assertEqual(out["name"], "y_" + dt.lower())
            if binary:
                n = out["parameters"]["binary_data_size"]
                got = np.frombuffer(tail[off:off + n], dtype=np.dtype(DTYPES[dt][0]).newbyteorder("<"))
                off += n
                np.testing.assert_array_equal(got.reshape(2, 3), arr, err_msg=dt)
            else:
                np.testing.assert_array_equal(from_json_values(dt, out["data"], [2, 3]), arr,
                                              err_msg=dt)
        self.assertEqual(off, len(tail))

    def test_binary_data_output_for_all_outputs(self):
        x = np.array(self.ref["inputs"][:2], dtype=np.float32)
        raw = to_le_bytes(x)
        header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                              "parameters": {"binary_data_size": len(raw)}}],
                  "parameters": {"binary_data_output": True}}
        status, resp, tail = self.binary_post("digits", header, [raw])
        self.assertEqual(status, 200, resp)
        out = resp["outputs"][0]
        self.assertEqual(out["parameters"]["binary_data_size"], 80)
        got = np.frombuffer(tail, dtype="<f4").reshape(2, 10)
        np.testing.assert_allclose(got, np.array(self.ref["logits"][:2]), atol=1e-4)

    def test_raw_binary_body(self):
        x = np.array(self.ref["inputs"][3], dtype=np.float32)
        status, data, resp = self.c.http("POST", "/v2/models/digits/infer", to_le_bytes(x),
                                         headers={"Inference-Header-Content-Length": "0"},
                                         raw=True)
        self.assertEqual(status, 200, data)
        out = json.loads(data)["outputs"][0]
        self.assertEqual(out["shape"], [1, 10])
        np.testing.assert_allclose(out["data"], self.ref["logits"][3], atol=1e-4)
        status, resp = self.c.http("POST", "/v2/models/digits/infer", b"\0" * 100,
                                   headers={"Inference-Header-Content-Length": "0"})
        self.assert_error(status, resp, 400, "100 bytes", "256")
        status, resp = self.c.http("POST", "/v2/models/dtypes/infer", b"\0" * 3,
                                   headers={"Inference-Header-Content-Length": "0"})
        self.assert_error(status, resp, 400, "exactly one input")

    def test_requested_outputs_filter_and_order(self):
        body = {"inputs": self.all_inputs(),
                "outputs": [{"name": "y_int8"}, {"name": "y_bool"}]}
        status, resp = self.infer("dtypes", body)
        self.assertEqual(status, 200, resp)
        self.assertEqual([o["name"] for o in resp["outputs"]], ["y_int8", "y_bool"])

    def test_classification(self):
        x = self.ref["inputs"][5]
        body = self.digits_body([x], outputs=[{"name": "logits",
                                               "parameters": {"classification": 3}}])
        status, resp = self.infer("digits", body)
        self.assertEqual(status, 200, resp)
        out = resp["outputs"][0]
        self.assertEqual((out["datatype"], out["shape"]), ("BYTES", [1, 3]))
        parts = [s.split(":") for s in out["data"]]
        scores = [float(p[0]) for p in parts]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertEqual(int(parts[0][1]), self.ref["predictions"][5])
        logits = self.ref["logits"][5]
        for p in parts:
            self.assertAlmostEqual(float(p[0]), logits[int(p[1])], places=4)
            if len(p) == 3:  # with labels the third field names the class
                self.assertEqual(p[2], p[1])
        status, resp = self.infer("digits", self.digits_body(
            [x], outputs=[{"name": "logits", "parameters": {"classification": 0}}]))
        self.assert_error(status, resp, 400, "classification")

    def test_v1_predict(self):
        rows = self.ref["inputs"][:3]
        status, resp = self.c.http("POST", "/v1/models/digits:predict", {"instances": rows})
        self.assertEqual(status, 200, resp)
        self.assertEqual(len(resp["predictions"]), 3)
        np.testing.assert_allclose(resp["predictions"], self.ref["logits"][:3], atol=1e-4)
        inst = [{"x_" + dt.lower(): sample(dt, 1, json_safe=True)[0].tolist() for dt in DTYPES}]
        status, resp = self.c.http("POST", "/v1/models/dtypes:predict", {"instances": inst})
        self.assertEqual(status, 200, resp)
        self.assertEqual(resp["predictions"][0]["y_int16"], sample("INT16", 1)[0].tolist())
        status, resp = self.c.http("POST", "/v1/models/digits:predict", {"rows": rows})
        self.assert_error(status, resp, 400, "instances")

    def test_statistics(self):
        for _ in range(3):
            self.assertEqual(self.infer("digits", self.digits_body(self.ref["inputs"][:2]))[0], 200)
        for path in ("/v2/models/digits/stats", "/v2/models/digits/versions/1/stats"):
            status, st = self.c.http("GET", path)
            self.assertEqual(status, 200, st)
            ms = st["model_stats"]
            self.assertEqual(len(ms), 1)
            self.assertEqual((ms[0]["name"], ms[0]["version"]), ("digits", "1"))
            self.assertGreaterEqual(ms[0]["inference_count"], 6)
            self.assertGreaterEqual(ms[0]["inference_stats"]["success"]["count"], 3)
            self.assertGreater(ms[0]["last_inference"], 0)
            self.assertTrue(ms[0]["batch_stats"])
        status, st = self.c.http("GET", "/v2/models/stats")
        self.assertEqual(status, 200)
        self.assertEqual(sorted({m["name"] for m in st["model_stats"]}),
                         ["digits", "dtypes", "slow"])
        self.assertEqual(self.c.http("GET", "/v2/models/ghost/stats")[0], 503)
        self.assertEqual(self.c.http("GET", "/v2/models/nosuch/stats")[0], 404)

    def test_request_id_echoed(self):
        body = self.digits_body([self.ref["inputs"][0]], id="oip-7")
        status, data, resp = self.c.http("POST", "/v2/models/digits/infer", body, raw=True)
        self.assertEqual(resp.getheader("X-Request-ID"), "oip-7")
        self.assertEqual(json.loads(data)["id"], "oip-7")
        status, data, resp = self.c.http("POST", "/v2/models/digits/infer",
                                         self.digits_body([self.ref["inputs"][0]]),
                                         headers={"X-Request-ID": "hdr-9"}, raw=True)
        self.assertEqual(resp.getheader("X-Request-ID"), "hdr-9")
        status, data, resp = self.c.http("GET", "/v2/models/nosuch", headers={"X-Request-ID": "e1"},
                                         raw=True)
        self.assertEqual((status, resp.getheader("X-Request-ID")), (404, "e1"))
        wait_until("the request id in the router's log",
                   lambda: "id=hdr-9" in self.c.router_proc.output())

    # ---- errors ----

    def test_error_statuses(self):
        x = self.ref["inputs"][0]
        st, r = self.infer("digits", '{"inputs": [')
        self.assert_error(st, r, 400, "json")
        st, r = self.infer("digits", {"inputs": [{"name": "input", "datatype": "FP32",
                                                  "shape": [1, 64], "data": x[:10]}]})
        self.assert_error(st, r, 400, "10 values")
        st, r = self.infer("nosuch", self.digits_body([x]))
        self.assert_error(st, r, 404, "nosuch")
        st, r = self.c.http("GET", "/v2/models/digits/infer")
        self.assert_error(st, r, 405, "allowed: POST")
        st, r = self.infer("ghost", self.digits_body([x]))
        self.assert_error(st, r, 503, "no ready replica")
        # 413: a body over --max-body-bytes, refused from its Content-Length.
        st, _, body = raw_request(self.port, b"POST /v2/models/digits/infer HTTP/1.1\r\n"
                                  b"Content-Length: 2000000\r\n\r\n")
        self.assertEqual(st, 413, body)
        # 431: headers over 16 KiB.
        st, _, body = raw_request(self.port, b"GET /v2/health/live HTTP/1.1\r\nX-Big: " +
                                  b"a" * 20000 + b"\r\n\r\n")
        self.assertEqual(st, 431, body)
        # 408: a request that trickles in slower than --request-timeout-ms.
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        for _ in range(6):
            time.sleep(0.2)
            try:
                s.sendall(b"X-A: b\r\n")
            except OSError:
                break
        data = s.recv(4096)
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 408"), data)
        # 504: the OIP timeout (100 ms) shorter than the replica takes (3 s). The answer
        # must not wait for the batch: 2.5 s leaves room for a loaded machine.
        body = self.digits_body([x], parameters={"timeout": 100000, "corral_test_stall_ms": 3000})
        t0 = time.time()
        st, r = self.infer("slow", body)
        self.assert_error(st, r, 504)
        self.assertLess(time.time() - t0, 2.5)
        self.wait_slow_idle()

    def test_queue_full_is_429(self):
        # The slow model's batcher computes one batch, gathers one more meanwhile and
        # queues one (max_queue_size 1). Each request is sent once the replica counted the
        # one before (through /metrics), so the order holds on a loaded machine: three are
        # answered, the next two refused at once with 429 while the first still computes.
        stall = self.digits_body([self.ref["inputs"][0]],
                                 parameters={"corral_test_stall_ms": 4000})
        plain = self.digits_body([self.ref["inputs"][0]])
        n0, _ = self.slow_counts()
        results, threads = [], []

        def send(b):
            try:
                results.append(self.clone().http("POST", "/v2/models/slow/infer", b))
            except Exception as ex:  # noqa: BLE001 - counted below, never lost
                results.append((None, repr(ex)))
        for k, (b, depth) in enumerate(((stall, 0), (plain, 0), (plain, 1))):
            threads.append(threading.Thread(target=send, args=(b,)))
            threads[-1].start()
            wait_until("request %d taken by the replica" % (k + 1),
                       lambda: self.slow_counts() == (n0 + k + 1, depth))
        refused = [self.clone().http("POST", "/v2/models/slow/infer", plain) for _ in range(2)]
        self.assertTrue(threads[0].is_alive(), "the stalled batch ended before the refusals")
        for t in threads:
            t.join()
        for st, r in refused:
            self.assertEqual(st, 429, r)
            self.assertIn("queue", r["error"].lower())
        self.assertEqual(len(results), 3)
        self.assertEqual([st for st, _ in results], [200, 200, 200], results)

    def clone(self):
        """A second keep-alive connection to the same router."""
        c = self.c.__class__(self.c.build, self.c.repo)
        c.port = self.port
        return c

    def test_client_disconnect_cancels(self):
        body = json.dumps(self.digits_body([self.ref["inputs"][0]],
                                           parameters={"corral_test_stall_ms": 1500}))
        req = ("POST /v2/models/slow/infer HTTP/1.1\r\nX-Request-ID: gone-1\r\n"
               "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode()
        def late():
            return self.c.router_proc.output().count("after it ended; dropped")
        before = late()
        raw_request(self.port, req, read=False)  # sends, then hangs up at once
        # The cancel comes while the batch still runs: before the replica's answer, which
        # the router then drops (logged at debug level).
        wait_until("the router to cancel the request of a client that hung up",
                   lambda: "cancelled: the client went away" in self.c.router_proc.output())
        self.assertEqual(late(), before, "the replica answered before the router cancelled")
        self.wait_slow_idle()  # the stalled batch ends before other tests use the model
        wait_until("the late answer dropped", lambda: late() == before + 1)

    def test_bad_requests_never_stall_the_router(self):
        rng = random.Random(5)
        x = self.ref["inputs"][0]
        good = json.dumps(self.digits_body([x]))
        bad = [
            b"\x00\x01\x02 garbage\r\n\r\n",
            b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"in",
            b"POST /v2/models/digits/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /v2/models/%00/ready HTTP/1.1\r\n\r\n",
            b"GET /" + b"a" * 30000 + b" HTTP/1.1\r\n\r\n",
            b"POST /v2/models/digits/infer HTTP/1.1\r\nInference-Header-Content-Length: 99\r\n"
            b"Content-Length: 2\r\n\r\n{}",
        ]
        for shape in ([1 << 40, 64], [-1], [1, 64, 1, 1, 1, 1, 1, 1, 1], "x"):
            b = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                        "data": [1]}]}).encode()
            bad.append(b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s"
                       % (len(b), b))
        for _ in range(40):
            n = rng.randint(1, 300)
            bad.append(bytes(rng.randrange(256) for _ in range(n)))
        errors, statuses = [], []

        def hammer():
            for b in bad:
                try:
                    statuses.append(raw_request(self.port, b, timeout=10)[0])
                except Exception as e:  # noqa: BLE001 - kept for the assertion below
                    errors.append((b[:60], repr(e)))
        t = threading.Thread(target=hammer)
        t.start()
        ok = 0
        while t.is_alive() or ok < 20:
            c = self.clone()
            st, r = c.http("POST", "/v2/models/digits/infer", good)
            c.close()
            self.assertEqual(st, 200, r)
            ok += 1
        t.join()
        # Every bad request got exactly one answer, a 4xx naming what was wrong.
        self.assertEqual(errors, [])
        self.assertEqual(len(statuses), len(bad))
        self.assertEqual([s_ for s_ in statuses if not 400 <= s_ < 500], [], statuses)
        self.assertIsNone(self.c.router_proc.p.poll(), "router exited")
        self.assertEqual(self.c.http("GET", "/v2/health/live")[0], 200)


class IdleHealth(unittest.TestCase):
    """An idle router's health probes are its only traffic: each must be answered
    within its interval, so an idle replica never flaps to not ready."""

    def test_idle_replica_stays_ready(self):
        with tempfile.TemporaryDirectory(prefix="corral-idle-") as tmp:
            make_repo(tmp, ROOT)
            # The default interval, where a probe's timeout equals the interval.
            c = start_cluster(BUILD, tmp, [("digits", [])])
            try:
                time.sleep(3.0)  # about 6 probes with nothing else happening
                st, table = c.http("GET", "/v2/corral/replicas")
                self.assertEqual(st, 200)
                self.assertEqual([r["state"] for r in table["replicas"]], ["ready"], table)
                self.assertNotIn("is not ready", c.router_proc.output())
            finally:
                stop_and_check(c)


if __name__ == "__main__":
    testrun.main()
