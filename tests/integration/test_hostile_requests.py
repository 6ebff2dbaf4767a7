"""A catalog of hostile requests against a real router and its replicas.

Every case is sent over a raw socket where HTTP (or SP) framing matters and asserts
the status it must get, or that the connection is closed:

- HTTP: invalid UTF-8 in model names and JSON strings, JSON nesting bombs, shapes whose
  element count overflows int64, negative and huge dimensions, binary parts that
  disagree with Inference-Header-Content-Length or binary_data_size, a Content-Length
  that lies either way (shorter: the rest is the next request; longer: 408 within
  --request-timeout-ms), chunked-encoding abuse, header floods (431), request smuggling
  (Content-Length with Transfer-Encoding, two Content-Lengths, obs-fold), pipelined
  good and bad requests (the good ones answered in order, the connection closed after a
  framing error), bodies at and one byte over --max-body-bytes, half-closed
  connections, 500 idle or trickling (slowloris) connections closed at the router's
  timeouts while it keeps serving others.
- Images on /v2/models/img/classify: a PNG whose 1x1 header hides megabytes of
  compressed data, a JPEG with thousands of progressive scans, a zero-length part, a
  200-character boundary, nested multipart, too many parts, header bombs.
- RPC (--rpc-listen, SP request/reply over TCP spoken on a raw socket): garbage
  protobuf, truncated frames, a frame declaring 4 GB, frames without a request id, the
  wrong protocol, and the tensor cases above in protobuf form.

While the catalog runs, other threads send valid requests: every one sent is answered
200. At the end the router's and the replicas' open descriptors are what they were
before the catalog, and their resident memory within 10 % of it (measured after warm-up
traffic of the same sizes).

Usage: test_hostile_requests.py BUILD_DIR REPO_ROOT
"""
import json
import os
import re
import selectors
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
import uuid
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402
from cluster import Cluster, proc_memory, sanitized, wait_until  # noqa: E402
from test_protocol_util import stop_and_clean  # noqa: E402
from images import encode, make_image_model, png_chunk  # noqa: E402
from wire_raw import SP_REQ_HELLO, TYPE_FP32, pb_bytes, pb_fields, pb_varint  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]

try:
    import onnx  # noqa: F401 (images.make_image_model needs it)
    from PIL import Image
except ImportError as ex:  # pragma: no cover - the tooling venv has them
    testrun.skip_all("onnx and Pillow are needed: %s" % ex)


MAX_BODY = 262144          # --max-body-bytes
MAX_IMAGE = 200000         # --max-image-bytes
REQUEST_TIMEOUT_MS = 1000  # --request-timeout-ms
IDLE_TIMEOUT_MS = 2000     # --idle-timeout-ms


# ---- the image model: global average pooling and a linear layer, built with onnx ----

def multipart(parts, boundary=None):
    """parts: [(headers text, data bytes)] -> (body, content type)."""
    b = boundary or "----corral%s" % uuid.uuid4().hex
    out = b""
    for head, data in parts:
        out += ("--%s\r\n%s\r\n" % (b, head)).encode() + data + b"\r\n"
    out += ("--%s--\r\n" % b).encode()
    return out, "multipart/form-data; boundary=%s" % b


def file_part(data, ctype="image/png", name="file"):
    return ('Content-Disposition: form-data; name="%s"; filename="x"\r\nContent-Type: %s\r\n'
            % (name, ctype), data)


# ---- raw HTTP over a socket ----

def request(method, path, body=b"", headers=(), length=True):
    """The bytes of one HTTP/1.1 request; Content-Length is added when `length`."""
    if isinstance(body, str):
        body = body.encode()
    head = "%s %s HTTP/1.1\r\nHost: x\r\n" % (method, path)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    if length and (body or method == "POST"):
        head += "Content-Length: %d\r\n" % len(body)
    return head.encode("latin-1") + b"\r\n" + body


class Conn:
    """A client connection over a raw socket, read into a buffer until the server closes."""

    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def _fill(self):
        try:
            chunk = self.s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def closed(self):
        """True when the server closes the connection with nothing more to say."""
        while not self.eof:
            self._fill()
        return self.buf == b""

    def close(self):
        self.s.close()


class Raw(Conn):
    """One client connection that sends bytes and reads whole HTTP answers."""

    def __init__(self, port, timeout=20):
        super().__init__("127.0.0.1", port, timeout)

    def send(self, data):
        self.s.sendall(data)
        return self

    def answer(self):
        """The next answer: (status, {header: value}, body); None when the server closed
        before one arrived."""
        while b"\r\n\r\n" not in self.buf:
            if self.eof:
                return None
            self._fill()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        while len(rest) < n and not self.eof:
            self.buf = head + b"\r\n\r\n" + rest
            self._fill()
            head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest[n:]
        return int(lines[0].split()[1]), hdrs, rest[:n]

def error_of(body):
    """The error sentence of a JSON error body, which must be valid UTF-8 JSON."""
    return json.loads(body.decode("utf-8"))["error"]


# ---- SP request/reply over TCP, as an NNG REQ socket speaks it ----

def pb_tensor(name, dtype, shape, data):
    """corral.Tensor; shape given as a list of ints (each sent as an unpacked int64)."""
    return (pb_bytes(1, name) + pb_varint(2, dtype) + b"".join(pb_varint(3, d) for d in shape) +
            pb_bytes(4, data))


def pb_infer(model, tensors, rid="r"):
    inner = pb_bytes(1, rid) + pb_bytes(2, model) + b"".join(pb_bytes(4, t) for t in tensors)
    return pb_bytes(1, inner)


PB_HEALTH = pb_bytes(2, b"")
def decode_response(data):
    """corral.Response -> ("infer"|"health"|"error", detail)."""
    for f, _, v in pb_fields(data):
        if f == 1:
            return "infer", v
        if f == 3:
            return "health", dict((g, x) for g, _, x in pb_fields(v))
        if f == 2:
            err = dict((g, x) for g, _, x in pb_fields(v))
            z = err.get(1, 0)
            code = (z >> 1) ^ -(z & 1)
            return "error", (code, err.get(2, b"").decode("utf-8"))
    return "empty", None


class Sp(Conn):
    """A raw SP REQ connection: frames are an 8-byte big-endian length and the bytes."""

    def __init__(self, url, timeout=20, hello=SP_REQ_HELLO):
        host, port = url[len("tcp://"):].rsplit(":", 1)
        super().__init__(host, int(port), timeout)
        if hello is not None:
            self.s.sendall(hello)

    def hello(self):
        while len(self.buf) < 8 and not self.eof:
            self._fill()
        h, self.buf = self.buf[:8], self.buf[8:]
        return h

    def send_frame(self, payload, rid):
        body = struct.pack(">I", rid | 0x80000000) + payload
        self.s.sendall(struct.pack(">Q", len(body)) + body)

    def reply(self):
        """(request id, decoded Response), or None when the server closed instead."""
        while len(self.buf) < 8 and not self.eof:
            self._fill()
        if len(self.buf) < 8:
            return None
        n = struct.unpack(">Q", self.buf[:8])[0]
        while len(self.buf) < 8 + n and not self.eof:
            self._fill()
        if len(self.buf) < 8 + n:
            return None
        frame, self.buf = self.buf[8:8 + n], self.buf[8 + n:]
        return struct.unpack(">I", frame[:4])[0] & 0x7FFFFFFF, decode_response(frame[4:])

def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class ValidLoad:
    """Valid infer requests from two threads, each on a connection of its own, until
    stop(); every request sent is counted with its status (or its exception)."""

    def __init__(self, port, body):
        self.port, self.body = port, body
        self.mu = threading.Lock()
        self.sent, self.results = 0, []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(2)]

    def run(self):
        while not self.stopping.is_set():
            with self.mu:
                self.sent += 1
            try:
                c = Raw(self.port, timeout=30)
                try:
                    c.send(request("POST", "/v2/models/digits/infer", self.body,
                                   [("Connection", "close")]))
                    a = c.answer()
                    res = a[0] if a else "closed without an answer"
                finally:
                    c.close()
            except Exception as ex:  # noqa: BLE001 - counted for the assertion
                res = repr(ex)
            with self.mu:
                self.results.append(res)
            # Steady, not saturating: the catalog's own requests share two cores.
            self.stopping.wait(0.01)

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join()
        return self.sent, self.results


class HostileRequests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-hostile-")
        repo = os.path.join(cls.tmp.name, "repo")
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(repo, "digits"))
        make_image_model(os.path.join(repo, "img"))
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            ref = json.load(f)
        cls.row = ref["inputs"][0]
        cls.good = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                           "shape": [1, 64], "data": cls.row}]}).encode()
        c = cls.c = Cluster(BUILD, repo)
        try:
            # The probe endpoint is served by the same small HTTP server as the
            # scheduler's admin API (common/httpd.c): its cases run against it here.
            c.replica("digits", "--threads", "1", "--health-listen", "127.0.0.1:0")
            c.replica("img", "--threads", "1", "--max-image-pixels", "4000000")
            c.router("--max-body-bytes", str(MAX_BODY), "--max-image-bytes", str(MAX_IMAGE),
                     "--request-timeout-ms", str(REQUEST_TIMEOUT_MS),
                     "--idle-timeout-ms", str(IDLE_TIMEOUT_MS), "--threads", "2")
            out = c.router_proc.output()
            m = re.search(r"RPC listening on (tcp://127\.0\.0\.1:\d+)", out)
            cls.rpc_url = m.group(1) if m else None
            m = re.search(r"health endpoint listening on http://127\.0\.0\.1:(\d+)",
                          c.replicas[0][1].output())
            cls.health_port = int(m.group(1))
            c.wait_ready("/v2/models/digits/ready")
            c.wait_ready("/v2/models/img/ready")
        except Exception:
            c.close()
            cls.tmp.cleanup()
            raise
        cls.photo = encode(Image.fromarray(
            np.random.RandomState(1).randint(0, 255, (48, 64, 3)).astype(np.uint8)), "PNG")

    @classmethod
    def tearDownClass(cls):
        stop_and_clean(cls.c, cls.tmp)

    # ---- helpers ----

    def procs(self):
        return [("router", self.c.router_proc.p)] + [("replica " + n, r.p)
                                                     for n, r in self.c.replicas]

    def one(self, data, shut=False):
        """Sends bytes on a fresh connection; (first answer or None, Raw) - the caller
        closes the Raw."""
        r = Raw(self.c.port)
        r.send(data)
        if shut:
            r.s.shutdown(socket.SHUT_WR)
        return r.answer(), r

    def expect(self, data, status, contains=None, closes=None):
        """One request on a fresh connection gets `status` (its error naming `contains`);
        `closes`: the server closes the connection after it."""
        a, r = self.one(data)
        try:
            self.assertIsNotNone(a, "no answer to %r" % data[:120])
            self.assertEqual(a[0], status, (data[:160], a[2][:300]))
            if contains is not None:
                self.assertIn(contains.lower(), error_of(a[2]).lower(), data[:160])
            elif status >= 400:
                error_of(a[2])  # every error is a JSON body in UTF-8
            if closes is not None:
                self.assertEqual(a[1].get("connection", "").lower() == "close", closes, a[1])
                if closes:
                    self.assertTrue(r.closed(), "bytes after a closing answer")
            return a
        finally:
            r.close()

    def infer_json(self, body, model="digits", headers=()):
        return request("POST", "/v2/models/%s/infer" % model, body, headers)

    def tensor(self, **over):
        t = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": self.row}
        t.update(over)
        return json.dumps({"inputs": [t]}).encode()

    def binary(self, header, tail, hcl=None):
        head = json.dumps(header).encode()
        return request("POST", "/v2/models/digits/infer", head + tail,
                       [("Inference-Header-Content-Length",
                         str(len(head)) if hcl is None else hcl)])

    def classify(self, body, ctype, path="/v2/models/img/classify"):
        return request("POST", path, body, [("Content-Type", ctype)])

    def settled(self, pid):
        """The descriptor count of a process once it stops changing (0.5 s unchanged)."""
        last, since = None, time.time()
        deadline = time.time() + 30
        while time.time() < deadline:
            n = fd_count(pid)
            if n != last:
                last, since = n, time.time()
            elif time.time() - since >= 0.5:
                return n
            time.sleep(0.05)
        return last

    def warm_up(self):
        """Valid traffic of the sizes the catalog uses, so that allocator pools and
        buffers exist before the baseline is taken."""
        big = self.max_body_request(MAX_BODY)
        im = Image.fromarray(
            np.random.RandomState(4).randint(0, 255, (240, 320, 3)).astype(np.uint8))
        progressive = encode(im, "JPEG", quality=80, progressive=True)
        many_headers = request("POST", "/v2/models/digits/infer", self.good,
                               [("X-H%d" % i, "v" * 150) for i in range(98)])
        chunked = self.chunked([self.chunk(self.good[:100]), self.chunk(self.good[100:])],
                               b"0\r\n\r\n")
        for _ in range(3):
            for data in (self.infer_json(self.good), big, many_headers, chunked,
                         self.classify(self.photo, "image/png"),
                         self.classify(progressive, "image/jpeg"),
                         self.classify(*self.form_photo())):
                a, r = self.one(data)
                r.close()
                self.assertEqual(a[0], 200, a[2][:300])
            # As many connections at once as the slowloris case opens, each with a request.
            conns = [Raw(self.c.port) for _ in range(500)]
            for r in conns:
                r.send(request("GET", "/v2/health/live"))
            for r in conns:
                self.assertEqual(r.answer()[0], 200)
                r.close()
            for _ in range(3):
                h = Raw(self.health_port)
                h.send(request("GET", "/ready"))
                self.assertEqual(h.answer()[0], 200)
                h.close()
            sp = Sp(self.rpc_url)
            sp.hello()
            sp.send_frame(pb_infer("digits", [pb_tensor("input", TYPE_FP32, [1, 64],
                                                        np.array(self.row, "<f4").tobytes())]), 1)
            self.assertEqual(sp.reply()[1][0], "infer")
            sp.close()

    def form_photo(self):
        body, ct = multipart([file_part(self.photo)], "photoboundary")
        return body, ct

    def max_body_request(self, size):
        """A valid infer request whose body is exactly `size` bytes (JSON padded with
        spaces)."""
        pad = size - len(self.good)
        return self.infer_json(self.good[:-1] + b" " * pad + b"}")

    # ---- the catalog ----

    def test_catalog(self):
        self.assertIsNotNone(self.rpc_url, "the router did not name its RPC endpoint")
        procs = {"router": self.c.router_proc.p.pid}
        for name, rep in self.c.replicas:
            procs["replica %s" % name] = rep.p.pid
        self.warm_up()
        if self.c._conn:
            self.c._conn.close()
            self.c._conn = None
        fds0 = {k: self.settled(pid) for k, pid in procs.items()}
        rss0 = {k: proc_memory(pid)["VmRSS"] for k, pid in procs.items()}
        load = ValidLoad(self.c.port, self.good)
        load.start()
        failures = []
        # In the order they are written: the ones that may take a server down come last,
        # so that every case before them still reports.
        cases = [m for m in type(self).__dict__ if m.startswith("case_")]
        self.assertGreaterEqual(len(cases), 40)
        try:
            for name in cases:
                if any(p.poll() is not None for _, p in self.procs()):
                    break
                with self.subTest(case=name):
                    try:
                        getattr(self, name)()
                    except Exception:
                        failures.append(name)
                        raise
                    finally:
                        # A server that died makes every later case meaningless: stop here.
                        dead = [k for k, p in self.procs() if p.poll() is not None]
                        if dead:
                            if name not in failures:
                                failures.append(name)
                            self.fail("%s exited (status %s) during %s:\n%s" % (
                                dead, [p.returncode for _, p in self.procs()], name,
                                self.c.router_proc.output()[-2000:]))
        finally:
            sent, results = load.stop()
        print("catalog: %d cases, %d failed %s; %d valid requests sent meanwhile"
              % (len(cases), len(failures), failures, sent), flush=True)
        self.assertEqual(len(results), sent)
        self.assertGreater(sent, 0)
        self.assertEqual([r for r in results if r != 200], [], "valid requests that failed")
        for _, rep in self.c.replicas:
            self.assertIsNone(rep.p.poll(), "a replica exited")
        self.assertIsNone(self.c.router_proc.p.poll(), "the router exited")
        # Descriptors: back to the baseline once every connection the catalog opened is
        # closed (the server closes some at its timeouts).
        for k, pid in procs.items():
            try:
                wait_until("%s's descriptors back to %d" % (k, fds0[k]),
                           lambda: fd_count(pid) == fds0[k], timeout=20)
            except AssertionError:
                self.fail("%s has %d open descriptors, %d before the catalog: %s"
                          % (k, fd_count(pid), fds0[k], sorted(os.listdir("/proc/%d/fd" % pid))))
        for k, pid in procs.items():
            rss = proc_memory(pid)["VmRSS"]
            print("%s: VmRSS %d kB before, %d kB after; %d descriptors"
                  % (k, rss0[k] // 1024, rss // 1024, fds0[k]), flush=True)
            # Under a sanitizer its own memory grows with traffic (cluster.sanitized).
            if not sanitized(pid):
                self.assertLessEqual(rss, rss0[k] * 1.10, "%s grew from %d to %d bytes"
                                     % (k, rss0[k], rss))

    # ---- invalid UTF-8 ----

    def case_utf8_model_name_percent_encoded(self):
        # The path decodes to bytes that are not UTF-8: unknown model, answered in UTF-8.
        self.expect(request("GET", "/v2/models/%C3%28/ready"), 404)
        self.expect(self.infer_json(self.good, model="%FF%FE"), 404)

    def case_utf8_model_name_raw_bytes(self):
        self.expect(b"GET /v2/models/\xff\xc0\xaf/ready HTTP/1.1\r\n\r\n", 404)

    def case_utf8_json_string_invalid(self):
        body = b'{"inputs": [{"name": "in\xffput", "datatype": "FP32", "shape": [1, 64], "data": ' \
            + json.dumps(self.row).encode() + b"}]}"
        self.expect(self.infer_json(body), 400, "utf-8")

    def case_utf8_json_overlong_and_surrogate(self):
        for bad in (b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"):
            body = b'{"id": "x' + bad + b'", ' + self.tensor()[1:]
            self.expect(self.infer_json(body), 400, "utf-8")

    def case_utf8_lone_surrogate_escape(self):
        body = b'{"id": "\\ud800x", ' + self.tensor()[1:]
        self.expect(self.infer_json(body), 400)

    def case_log_lines_cannot_be_forged(self):
        # A newline decoded from the path must not start a line of its own in the log.
        self.expect(request("GET", "/v2/models/x%0A1999-01-01T00:00:00.000Z%20INFO%20forged/ready"),
                    404)
        wait_until("the unknown model in the router's log",
                   lambda: "forged" in self.c.router_proc.output())
        forged = [ln for ln in self.c.router_proc.output().splitlines() if ln.startswith("1999-")]
        self.assertEqual(forged, [], "a client wrote a line of the router's log")

    # ---- JSON bombs ----

    def case_json_nesting_bomb_arrays(self):
        t0 = time.time()
        self.expect(self.infer_json(b"[" * 100000), 400, "256")
        self.assertLess(time.time() - t0, 10)

    def case_json_nesting_bomb_objects(self):
        self.expect(self.infer_json(b'{"a":' * 40000 + b"1" + b"}" * 40000), 400, "256")

    def case_json_nesting_in_data(self):
        data = b"[" * 300 + b"1" + b"]" * 300
        body = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ' + \
            data + b"}]}"
        self.expect(self.infer_json(body), 400, "256")

    # ---- shapes ----

    def case_shape_product_overflows_int64(self):
        # The element count overflows: refused as too large (413), before any allocation.
        for shape in ([4294967296, 4294967296], [3037000500, 3037000500],
                      [2 ** 62, 4], [65536] * 4 + [2]):
            self.expect(self.infer_json(self.tensor(shape=shape)), 413, "overflows")

    def case_shape_negative_and_huge_dims(self):
        for shape in ([-5, 64], [1, -64], [-9223372036854775808, 1],
                      [9223372036854775807, 1], [18446744073709551616, 1], [1.5, 64],
                      [1e300, 64], [], [True, 64]):
            self.expect(self.infer_json(self.tensor(shape=shape)), 400)

    # ---- binary tensor data ----

    def case_binary_size_larger_than_tail(self):
        hdr = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                           "parameters": {"binary_data_size": 256}}]}
        self.expect(self.binary(hdr, b"\0" * 100), 400)

    def case_binary_size_smaller_than_tail(self):
        hdr = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                           "parameters": {"binary_data_size": 256}}]}
        self.expect(self.binary(hdr, b"\0" * 300), 400)

    def case_binary_size_disagrees_with_shape(self):
        for size in (252, 260, 0):
            hdr = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                               "parameters": {"binary_data_size": size}}]}
            self.expect(self.binary(hdr, b"\0" * size), 400)

    def case_binary_size_negative_or_huge(self):
        for size in (-256, 2 ** 64, 2 ** 63, "256", 2.5):
            hdr = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                               "parameters": {"binary_data_size": size}}]}
            self.expect(self.binary(hdr, b"\0" * 256), 400)

    def case_inference_header_length_lies(self):
        hdr = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                           "parameters": {"binary_data_size": 256}}]}
        n = len(json.dumps(hdr))
        for hcl in (str(n - 3), str(n + 3), "-1", "abc", "99999999999999999999999",
                    " %d" % n + "x"):
            self.expect(self.binary(hdr, b"\0" * 256, hcl=hcl), 400)

    # ---- Content-Length lies ----

    def case_content_length_shorter_rest_is_next_request(self):
        # The declared body ends early; what follows is read as the next request.
        nxt = request("GET", "/v2/health/live", headers=[("X-Request-ID", "second")])
        data = request("POST", "/v2/models/digits/infer", self.good, length=False)
        data = data[:-len(self.good) - 2] + b"Content-Length: %d\r\n\r\n" % len(self.good) + \
            self.good + nxt
        r = Raw(self.c.port)
        try:
            r.send(data)
            a, b = r.answer(), r.answer()
            self.assertEqual(a[0], 200, a[2][:200])
            self.assertEqual((b[0], b[1].get("x-request-id")), (200, "second"))
        finally:
            r.close()
        # Shorter still: the JSON is cut (400), the rest is not HTTP (400, closed).
        cut = 20
        data = request("POST", "/v2/models/digits/infer", self.good, length=False)
        data = (data[:-len(self.good) - 2] +
                b"Content-Length: %d\r\n\r\n" % (len(self.good) - cut) + self.good)
        r = Raw(self.c.port)
        try:
            r.send(data)
            a = r.answer()
            self.assertEqual(a[0], 400, a[2][:200])
            self.assertIn("json", error_of(a[2]).lower())
            # The 20 bytes left are the start of a request line that never ends: it is
            # answered 400 (not a method) or 408 (not complete in time), then closed.
            b = r.answer()
            self.assertIn(b[0] if b else None, (400, 408), b)
            self.assertTrue(r.closed())
        finally:
            r.close()

    def case_content_length_longer_times_out_408(self):
        data = request("POST", "/v2/models/digits/infer", self.good, length=False)
        data = (data[:-len(self.good) - 2] +
                b"Content-Length: %d\r\n\r\n" % (len(self.good) + 50) + self.good)
        t0 = time.time()
        a, r = self.one(data)
        took = time.time() - t0
        try:
            self.assertEqual(a[0], 408, a[2][:200])
            self.assertIn("request timeout", error_of(a[2]))
            self.assertTrue(r.closed())
        finally:
            r.close()
        # Nominally 1 s (plus a quarter of it for the timer tick); never before it.
        self.assertGreaterEqual(took, REQUEST_TIMEOUT_MS / 1000 * 0.75)
        self.assertLess(took, REQUEST_TIMEOUT_MS / 1000 * 10)

    # ---- chunked transfer coding ----

    def chunked(self, chunks, trailer=b"", head=()):
        data = request("POST", "/v2/models/digits/infer",
                       headers=[("Transfer-Encoding", "chunked")] + list(head), length=False)
        return data + b"".join(chunks) + trailer

    def chunk(self, data, ext=b""):
        return b"%x%s\r\n%s\r\n" % (len(data), ext, data)

    def case_chunked_extensions(self):
        g = self.good
        data = self.chunked([self.chunk(g[:10], b";name=value"), self.chunk(g[10:], b";x=\"q\"")],
                            b"0;last\r\n\r\n")
        self.expect(data, 200, closes=False)

    def case_chunked_huge_chunk_size(self):
        self.expect(self.chunked([b"FFFFFFFFFFFFFFF\r\n" + b"x" * 100]), 413, closes=True)
        self.expect(self.chunked([b"%x\r\n" % (MAX_BODY + 1)]), 413, closes=True)

    def case_chunked_size_overflow_and_bad_hex(self):
        for size in (b"1FFFFFFFFFFFFFFFFF", b"0x10", b"g", b"-5", b" ", b"+5"):
            self.expect(self.chunked([size + b"\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"]), 400,
                        closes=True)

    def case_chunked_over_limit_in_small_chunks(self):
        piece = b"x" * 4096
        chunks = [self.chunk(piece)] * (MAX_BODY // 4096 + 1)
        self.expect(self.chunked(chunks, b"0\r\n\r\n"), 413, closes=True)

    def case_chunked_missing_crlf_after_data(self):
        self.expect(self.chunked([b"5\r\nhelloXX5\r\nhello\r\n0\r\n\r\n"]), 400, closes=True)

    def case_transfer_encoding_not_chunked(self):
        for te in ("gzip", "identity", "chunked, gzip"):
            data = request("POST", "/v2/models/digits/infer", headers=[("Transfer-Encoding", te)],
                           length=False) + self.good
            self.expect(data, 400, closes=True)

    # ---- header floods ----

    def case_too_many_headers_431(self):
        hdrs = [("X-H%d" % i, "v") for i in range(101)]
        self.expect(request("GET", "/v2/health/live", headers=hdrs), 431, "header fields",
                    closes=True)
        # 98 of them plus Host is within the limit of 100.
        hdrs = [("X-H%d" % i, "v") for i in range(98)]
        self.expect(request("GET", "/v2/health/live", headers=hdrs), 200)

    def case_header_bytes_flood_431(self):
        # Each header is small; together they are over 16 KiB.
        hdrs = [("X-Pad%02d" % i, "v" * 250) for i in range(70)]
        self.expect(request("GET", "/v2/health/live", headers=hdrs), 431, "byte limit",
                    closes=True)
        self.expect(request("GET", "/v2/health/live", headers=[("X-" + "n" * 20000, "v")]), 431,
                    closes=True)

    # ---- request smuggling ----

    def case_smuggling_content_length_and_chunked(self):
        smuggled = b"GET /v2/health/live HTTP/1.1\r\nX-Request-ID: smuggled\r\n\r\n"
        body = b"0\r\n\r\n" + smuggled
        for hdrs in ([("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")],
                     [("Transfer-Encoding", "chunked"), ("Content-Length", "5")]):
            data = request("POST", "/v2/models/digits/infer", headers=hdrs, length=False) + body
            a = self.expect(data, 400, closes=True)
            self.assertNotIn("smuggled", a[1].get("x-request-id", ""))

    def case_smuggling_two_content_lengths(self):
        for first, second in ((len(self.good), 5), (len(self.good), len(self.good))):
            data = request("POST", "/v2/models/digits/infer",
                           headers=[("Content-Length", str(first)),
                                    ("Content-Length", str(second))],
                           length=False) + self.good
            self.expect(data, 400, closes=True)
        data = request("POST", "/v2/models/digits/infer",
                       headers=[("Content-Length", "%d, %d" % (len(self.good), len(self.good)))],
                       length=False) + self.good
        self.expect(data, 400, closes=True)

    def case_smuggling_obs_fold(self):
        # A folded Content-Length must not be read as either half of it.
        data = (b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 5\r\n %d\r\n\r\n"
                % len(self.good)) + self.good
        self.expect(data, 400, closes=True)
        data = (b"POST /v2/models/digits/infer HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n"
                b"Content-Length: %d\r\n\r\n" % len(self.good)) + self.good
        self.expect(data, 400, closes=True)

    def case_smuggling_whitespace_before_colon(self):
        # RFC 9112 section 5.1: whitespace between a field name and its colon is a 400;
        # a proxy in front may not read "Content-Length :" as the body's length.
        data = (b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length : %d\r\n\r\n"
                % len(self.good)) + self.good
        self.expect(data, 400, closes=True)
        data = (b"POST /v2/models/digits/infer HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n"
                + self.chunk(self.good) + b"0\r\n\r\n")
        self.expect(data, 400, closes=True)

    def case_smuggling_malformed_content_length(self):
        for cl in ("-1", "+%d" % len(self.good), "0x10", "%d.0" % len(self.good), "1e3",
                   "18446744073709551617"):
            data = request("POST", "/v2/models/digits/infer", headers=[("Content-Length", cl)],
                           length=False) + self.good
            self.expect(data, 400, closes=True)

    def case_header_with_nul_or_bare_cr(self):
        self.expect(b"GET /v2/health/live HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400, closes=True)
        self.expect(b"GET /v2/health/live HTTP/1.1\r\nX-A: a\rb\r\n\r\n", 400, closes=True)

    def case_http_version_and_method(self):
        self.expect(b"GET /v2/health/live HTTP/2.0\r\n\r\n", 505, closes=True)
        self.expect(b"GET /v2/health/live HTTP/1.7\r\n\r\n", 200)
        self.expect(b"FROB /v2/health/live HTTP/1.1\r\n\r\n", 400, closes=True)
        self.expect(b"GET /v2/health/live\r\n\r\n", 505, "HTTP/0.9", closes=True)

    # ---- pipelining ----

    def case_pipelined_good_bad_good(self):
        good = [request("POST", "/v2/models/digits/infer", self.good,
                        [("X-Request-ID", "p%d" % i)]) for i in range(3)]
        bad_semantics = request("GET", "/v2/models/nosuch/ready", headers=[("X-Request-ID", "nf")])
        r = Raw(self.c.port)
        try:
            r.send(good[0] + bad_semantics + good[1] + b"\x00\x01 not http\r\n\r\n" + good[2])
            got = [r.answer() for _ in range(3)]
            self.assertEqual([(a[0], a[1].get("x-request-id")) for a in got],
                             [(200, "p0"), (404, "nf"), (200, "p1")])
            a = r.answer()
            self.assertEqual(a[0], 400)
            self.assertEqual(a[1].get("connection"), "close")
            # p2 came after the framing error: never answered.
            self.assertTrue(r.closed(), "an answer after the framing error")
        finally:
            r.close()

    def case_pipelined_many_then_close(self):
        reqs = b"".join(request("GET", "/v2/health/live", headers=[("X-Request-ID", "q%d" % i)])
                        for i in range(50))
        reqs += request("GET", "/v2/health/live", headers=[("Connection", "close")])
        reqs += request("GET", "/v2/health/live", headers=[("X-Request-ID", "after-close")])
        r = Raw(self.c.port)
        try:
            r.send(reqs)
            ids = [r.answer()[1].get("x-request-id") for _ in range(50)]
            self.assertEqual(ids, ["q%d" % i for i in range(50)])
            last = r.answer()
            self.assertEqual((last[0], last[1].get("connection")), (200, "close"))
            self.assertTrue(r.closed())
        finally:
            r.close()

    # ---- body size limits ----

    def case_body_at_limit_and_one_over(self):
        data = self.max_body_request(MAX_BODY)
        self.expect(data, 200)
        over = self.max_body_request(MAX_BODY + 1)
        self.expect(over, 413, "byte limit", closes=True)
        # Announced before any body byte: refused without waiting for it.
        data = request("POST", "/v2/models/digits/infer",
                       headers=[("Content-Length", str(MAX_BODY + 1))], length=False)
        self.expect(data, 413, closes=True)
        # Expect: 100-continue over the limit gets the 413, never a 100.
        data = request("POST", "/v2/models/digits/infer",
                       headers=[("Content-Length", str(MAX_BODY + 1)), ("Expect", "100-continue")],
                       length=False)
        self.expect(data, 413, closes=True)

    # ---- half-closed connections ----

    def case_half_closed_after_full_request(self):
        a, r = self.one(request("GET", "/v2/health/live"), shut=True)
        try:
            self.assertEqual(a[0], 200)
            self.assertTrue(r.closed())
        finally:
            r.close()
        a, r = self.one(request("GET", "/v2/models/digits"), shut=True)
        try:
            self.assertEqual(a[0], 200)
        finally:
            r.close()
        # An infer request is work the router abandons when the client's side ends (it
        # cannot tell a half-close from a hang-up): the answer still arrives, whole, and
        # the connection closes after it. It is the cancellation's 503, or the 200 when
        # the replica answered before the router read the end of the stream.
        for _ in range(5):
            a, r = self.one(self.infer_json(self.good), shut=True)
            try:
                self.assertIsNotNone(a, "no answer to an infer request before the half-close")
                self.assertIn(a[0], (200, 503), a[2][:300])
                if a[0] == 503:
                    self.assertIn("client went away", error_of(a[2]))
                else:
                    self.assertEqual(len(json.loads(a[2])["outputs"][0]["data"]), 10)
                self.assertTrue(r.closed())
            finally:
                r.close()

    # ---- images on /classify ----

    def case_image_png_small_header_huge_idat(self):
        ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
        idat = zlib.compress(b"\0" * (16 << 20), 9)
        self.assertLess(len(idat), MAX_IMAGE)
        png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + \
            png_chunk(b"IEND", b"")
        # A valid 1x1 image: decoded from its first row, the rest never inflated (as
        # Pillow does), so it is answered at once and the replica's memory stays flat
        # (checked at the end).
        t0 = time.time()
        a = self.expect(self.classify(png, "image/png"), 200)
        self.assertLess(time.time() - t0, 10)
        self.assertEqual(len(json.loads(a[2])["predictions"]), 5)

    def case_image_jpeg_thousands_of_scans(self):
        im = Image.fromarray(np.random.RandomState(2).randint(0, 255, (16, 16, 3)).astype(np.uint8))
        jpg = encode(im, "JPEG", quality=80, progressive=True)
        # Repeat the last scan (its SOS segment and entropy-coded data) 3000 times.
        last_sos = jpg.rfind(b"\xff\xda")
        scan = jpg[last_sos:-2]
        bomb = jpg[:last_sos] + scan * 3000 + b"\xff\xd9"
        self.assertLess(len(bomb), MAX_IMAGE)
        a = self.expect(self.classify(bomb, "image/jpeg"), 400)
        self.assertIn("scan", error_of(a[2]).lower())

    def case_image_jpeg_header_bomb(self):
        im = Image.new("RGB", (8, 8), (1, 2, 3))
        jpg = bytearray(encode(im, "JPEG"))
        sof = jpg.find(b"\xff\xc0")
        jpg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
        self.expect(self.classify(bytes(jpg), "image/jpeg"), 413, "pixels")

    def case_image_png_chunk_length_lies(self):
        ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + struct.pack(">I", 0x7FFFFFFF) + \
            b"IDAT" + b"\0" * 64
        self.expect(self.classify(png, "image/png"), 400)

    def case_multipart_zero_length_part(self):
        body, ct = multipart([file_part(b"")])
        self.expect(self.classify(body, ct), 400, "empty")

    def case_multipart_boundary_200_chars(self):
        b = "x" * 200
        body, ct = multipart([file_part(self.photo)], boundary=b)
        self.expect(self.classify(body, ct), 400, "boundary")

    def case_multipart_nested(self):
        inner, inner_ct = multipart([file_part(self.photo)])
        body, ct = multipart([('Content-Disposition: form-data; name="file"\r\n'
                               'Content-Type: %s\r\n' % inner_ct, inner)])
        self.expect(self.classify(body, ct), 415)

    def case_multipart_many_parts(self):
        parts = [('Content-Disposition: form-data; name="f%d"\r\n' % i, b"v") for i in range(200)]
        body, ct = multipart(parts + [file_part(self.photo)])
        self.expect(self.classify(body, ct), 400, "no field named 'file'")

    def case_multipart_headers_never_end(self):
        b = "bnd"
        body = ("--%s\r\nContent-Disposition: form-data; name=\"file\"\r\n" % b).encode() + \
            b"X-Pad: a\r\n" * 5000
        self.expect(self.classify(body, "multipart/form-data; boundary=%s" % b), 400, "empty line")

    def case_image_over_max_image_bytes(self):
        self.expect(self.classify(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_IMAGE, "image/png"), 413,
                    "--max-image-bytes")

    # ---- the small HTTP server of probes and the admin API (common/httpd.c) ----

    def health(self, data, status, closes=True):
        r = Raw(self.health_port)
        try:
            r.send(data)
            a = r.answer()
            self.assertIsNotNone(a, "no answer to %r" % data[:80])
            self.assertEqual(a[0], status, (data[:80], a[2][:200]))
            if closes:
                self.assertTrue(r.closed())
            return a
        finally:
            r.close()

    def case_httpd_framing(self):
        self.health(request("GET", "/ready"), 200)
        self.health(b"GET /ready HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)
        self.health(b"GET /ready HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400)
        self.health(b"GET /ready HTTP/1.1\r\nX-Pad: " + b"p" * 9000 + b"\r\n\r\n", 431)
        self.health(b"GET ready HTTP/1.1\r\n\r\n", 400)
        # A TLS ClientHello where HTTP is expected.
        self.health(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40) +
                    b"\r\n\r\n", 400)
        self.health(b"GET /ready HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400)
        self.health(b"GET /ready HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400)

    def case_httpd_pipelined_one_answer(self):
        # One request per connection: the first is answered, the rest never read.
        a = self.health(request("GET", "/live") + request("GET", "/nosuch") * 5, 200)
        self.assertEqual(a[1].get("connection"), "close")

    def case_httpd_slow_client_closed_at_deadline(self):
        # The probe server gives a connection 2 s for its request and answer.
        t0 = time.time()
        r = Raw(self.health_port)
        try:
            r.send(b"GET /ready HTTP/1.1\r\n")
            a = r.answer()
            took = time.time() - t0
            self.assertTrue(a is None or a[0] in (400, 408), a)
            self.assertTrue(r.closed())
        finally:
            r.close()
        self.assertGreaterEqual(took, 2.0 * 0.75)
        self.assertLess(took, 2.0 * 10)

    # ---- RPC: SP over TCP ----

    def sp(self):
        s = Sp(self.rpc_url)
        self.assertEqual(s.hello(), b"\x00SP\x00\x00\x31\x00\x00")
        return s

    def rpc_roundtrip(self, payload, rid=7):
        s = self.sp()
        try:
            s.send_frame(payload, rid)
            rep = s.reply()
            self.assertIsNotNone(rep, "no reply to %r" % payload[:60])
            self.assertEqual(rep[0], rid)
            # The connection still serves after the hostile message.
            s.send_frame(PB_HEALTH, rid + 1)
            ok = s.reply()
            self.assertEqual((ok[0], ok[1][0]), (rid + 1, "health"))
            return rep[1]
        finally:
            s.close()

    def rpc_error(self, payload, code):
        kind, detail = self.rpc_roundtrip(payload)
        self.assertEqual(kind, "error", detail)
        self.assertEqual(detail[0], code, detail)
        return detail[1]

    def fp32(self, shape, n=64):
        return pb_tensor("input", TYPE_FP32, shape, np.array(self.row[:n], "<f4").tobytes())

    def case_rpc_valid_health_and_infer(self):
        kind, _ = self.rpc_roundtrip(PB_HEALTH)
        self.assertEqual(kind, "health")
        kind, detail = self.rpc_roundtrip(pb_infer("digits", [self.fp32([1, 64])]))
        self.assertEqual(kind, "infer", detail)

    def case_rpc_garbage_protobuf(self):
        # An over-long varint, a length past the end, a field cut short, wire type 7.
        for garbage in (b"\xff" * 11, b"\x0a\xff\xff\xff\xff\x0f",
                        b"\x0a\x05abc", b"\x07\x01"):
            self.assertIn("not a valid corral.Request", self.rpc_error(garbage, -8))

    def case_rpc_empty_request(self):
        # A frame that is only a request id: an empty Request names no kind.
        self.assertIn("no kind", self.rpc_error(b"", -1))

    def case_rpc_invalid_utf8_model_name(self):
        # Unknown model; the error's message is a proto3 string, which must be UTF-8.
        msg = self.rpc_error(pb_infer(b"dig\xffits", [self.fp32([1, 64])]), -2)
        self.assertIn("dig", msg)

    def case_rpc_shape_overflow_and_negative(self):
        # A tensor no machine could hold is "too large" (ETOOLARGE, HTTP's 413).
        for shape in ([4294967296, 4294967296], [2 ** 63 - 1, 2]):
            self.assertIn("overflows", self.rpc_error(pb_infer("digits", [self.fp32(shape)]), -12))
        self.assertIn("exceeds", self.rpc_error(pb_infer("digits", [self.fp32([2 ** 63 - 1, 1])]),
                                                -12))
        for shape in ([-1, 64], [1, -64], [1, 0]):
            self.rpc_error(pb_infer("digits", [self.fp32(shape)]), -1)

    def case_rpc_data_disagrees_with_shape(self):
        self.rpc_error(pb_infer("digits", [self.fp32([1, 64], n=60)]), -1)
        self.rpc_error(pb_infer("digits", [self.fp32([2, 64])]), -1)

    def case_rpc_frame_declaring_4gb(self):
        s = self.sp()
        try:
            s.s.sendall(struct.pack(">Q", 4 << 30) + b"\x80\x00\x00\x01" + b"x" * 1000)
            self.assertIsNone(s.reply())
            self.assertTrue(s.closed())
        finally:
            s.close()

    def case_rpc_truncated_frame(self):
        s = self.sp()
        try:
            s.s.sendall(struct.pack(">Q", 1000) + b"\x80\x00\x00\x01" + PB_HEALTH)
            s.s.shutdown(socket.SHUT_WR)
            self.assertIsNone(s.reply())
            self.assertTrue(s.closed())
        finally:
            s.close()

    def case_rpc_no_request_id_is_dropped(self):
        s = self.sp()
        try:
            # Nine words without the top bit: no request id within NNG's hop limit.
            body = b"\x00\x00\x00\x01" * 9 + PB_HEALTH
            s.s.sendall(struct.pack(">Q", len(body)) + body)
            s.s.sendall(struct.pack(">Q", 0))  # an empty frame: no id either
            s.send_frame(PB_HEALTH, 42)
            rep = s.reply()
            self.assertEqual((rep[0], rep[1][0]), (42, "health"))
        finally:
            s.close()

    def case_rpc_wrong_protocol_or_not_sp(self):
        # A REP peer, an HTTP client, a header with its reserved bytes set.
        for hello in (b"\x00SP\x00\x00\x31\x00\x00", b"GET / HTTP/1.1\r\n\r\n",
                      b"\x00SP\x00\x00\x30\x01\x00"):
            s = Sp(self.rpc_url, hello=hello)
            try:
                s.hello()
                self.assertIsNone(s.reply())
                self.assertTrue(s.eof or s.closed())
            finally:
                s.close()

    def case_rpc_pipelined_ids(self):
        s = self.sp()
        try:
            frames = b""
            for rid in (11, 12, 13):
                body = struct.pack(">I", rid | 0x80000000) + (
                    PB_HEALTH if rid != 12 else b"\xff\xff")
                frames += struct.pack(">Q", len(body)) + body
            s.s.sendall(frames)
            got = sorted((r[0], r[1][0]) for r in (s.reply(), s.reply(), s.reply()))
            self.assertEqual(got, [(11, "health"), (12, "error"), (13, "health")])
        finally:
            s.close()

    # ---- slowloris: many idle or trickling connections ----

    def case_slowloris_500(self):
        n_idle, n_trickle = 250, 250
        t_open = time.time()
        idle = [socket.create_connection(("127.0.0.1", self.c.port), timeout=30)
                for _ in range(n_idle)]
        trickle = []
        for _ in range(n_trickle):
            s = socket.create_connection(("127.0.0.1", self.c.port), timeout=30)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
            trickle.append(s)
        opened = {s: t_open for s in idle + trickle}
        try:
            # The router keeps serving others meanwhile.
            for _ in range(10):
                self.expect(self.infer_json(self.good), 200)
            sel = selectors.DefaultSelector()
            for s in idle:
                sel.register(s, selectors.EVENT_READ, "idle")
            for s in trickle:
                sel.register(s, selectors.EVENT_READ, "trickle")
            got = {}
            closed_at = {}
            deadline = time.time() + 40
            next_byte = time.time() + 1.0
            while len(closed_at) < n_idle + n_trickle and time.time() < deadline:
                if time.time() >= next_byte:
                    # A header byte every second on each trickling connection still open.
                    for s in trickle:
                        if s not in closed_at:
                            try:
                                s.send(b"a")
                            except OSError:
                                pass
                    next_byte = time.time() + 1.0
                for key, _ in sel.select(timeout=0.2):
                    s = key.fileobj
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        got[s] = got.get(s, b"") + data
                    else:
                        closed_at[s] = time.time()
                        sel.unregister(s)
            sel.close()
            self.assertEqual(len(closed_at), n_idle + n_trickle,
                             "connections still open after 40 s: %d"
                             % (n_idle + n_trickle - len(closed_at)))
            for s in idle:
                self.assertEqual(got.get(s, b""), b"", "an idle connection got an answer")
                # Nominally after 2 s of idleness; never before it.
                self.assertGreaterEqual(closed_at[s] - opened[s], IDLE_TIMEOUT_MS / 1000 * 0.75)
            for s in trickle:
                self.assertTrue(got.get(s, b"").startswith(b"HTTP/1.1 408 "), got.get(s, b"")[:80])
                self.assertGreaterEqual(closed_at[s] - opened[s],
                                        REQUEST_TIMEOUT_MS / 1000 * 0.75)
            self.expect(self.infer_json(self.good), 200)
        finally:
            for s in idle + trickle:
                s.close()


    # ---- last: a case that has taken the router down ----

    def case_chunked_trailers(self):
        # Trailer fields after the last chunk: ignored, the request answered.
        data = self.chunked([self.chunk(self.good)], b"0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n")
        self.expect(data, 200, closes=False)


if __name__ == "__main__":
    testrun.main(argv=sys.argv[3:])
