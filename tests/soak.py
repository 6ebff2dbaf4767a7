"""The soak: a scheduler-run corral cluster under mixed load for MINUTES, with a
replica SIGKILLed every 30 s, a rolling update and a scale change in the middle.

What runs (every process real, on loopback, ephemeral ports):

- a model repository in a temporary folder: the bundled digits model as versions 1 and
  2 (the same weights, so the parity vectors hold for both) and `img`, a small image
  model built with the onnx package (global average pooling and a linear layer,
  ImageNet preprocessing, softmax);
- corral-scheduler with a config of its own: the router (HTTP, RPC, 2 threads), 2
  replicas of digits and 1 of img (oversubscribed: they share the cores);
- load generators, each on a thread with a connection of its own and a steady rate:
  HTTP JSON infer of digits (two), HTTP binary-tensor infer of digits (binary input and
  binary output), RPC infer of digits (SP request/reply on a raw socket, four requests in
  flight at once, each with its own request id) and image classification on img (a PNG
  posted as the body or as a multipart form, in turns);
- every `--kill-every` seconds one digits replica that serves is SIGKILLed (never the
  only replica of a model: img has one and is never killed, and no kill happens while a
  rollout or scale change runs or while fewer than `replicas` digits replicas serve, so
  no request may fail); the scheduler restarts it;
- at 40 % of the run, a rolling update of digits from version 1 to 2 (`corralctl
  apply`); once it is done and at 60 % of the run, a scale change of digits from 2 to 3
  replicas (the config file rewritten and SIGHUP);
- every second the router's and the scheduler's resident memory (VmRSS) is sampled.

At the end, after the last replacement is ready, the load stops and the soak fails
(exit 1) unless:

- every request sent got exactly one answer (sent == answered, 0 lost; RPC answers are
  matched to the ids sent, a duplicate or unknown id is an error), no connection error,
  and every answer is 200 with the right result: digits logits within 1e-3 of PyTorch's
  (tests/data/digits_heldout.json), img probabilities within 1e-4 of what numpy computes
  from the PNG's pixels. A 503 "draining" may be retried once (the protocol says the
  request never ran); such retries are counted apart and allowed. No other non-200
  answer is acceptable: the schedule above avoids every documented cause of one;
- answers name version 1 before the rollout and 2 after it;
- the router's /metrics agree with what the soak counted: corral_router_requests_total
  equals the soak's attempts for every (model, protocol, code), and for 200 for every
  version; no other series counts anything; the in-flight gauge is 0; the requests sent
  to the replicas (corral_router_replica_requests_total) sum to the soak's attempts,
  less those answered 503 "no ready replica" (never sent), plus the router's retries;
  the scheduler's /metrics count one restart per kill (plus one per replica its health
  checks killed, which the summary lists), none of the router, and the desired and ready
  counts of the final config;
- the rollout reached `done` and the scale change 3 ready replicas;
- the router's and the scheduler's RSS are flat: the peak of the run's last third is at
  most `--rss-bound` (10 %) plus 2 MiB above the peak of its first third;
- the scheduler stops on SIGTERM with exit status 0, leaving no child.

Output, in --out (kept after the run): seconds.csv (per second: RSS of the router and the
scheduler, answers so far), windows.csv (per 10 s window: answers per second and p50,
p99 and max latency, in all and per kind), events.csv (kills, replacements, rollout,
scale), summary.json, soak.svg (throughput, p99 and RSS over time), scheduler.log and the
children's logs under state/.

`--break drop-answer` (the soak forgets one answer it received) and `--break kill-router`
(the first kill hits the router) are for checking that the soak goes red.

Usage: soak.py --minutes M --build BUILD_DIR --root REPO_ROOT --out DIR [options]
(tests/soak.sh runs it with the tooling virtualenv's python);
       soak.py --replot DIR    (draws DIR/soak.svg again from a finished run's files).
"""
import argparse
import array
import collections
import http.client
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))
from images import make_image_model  # noqa: E402
from wire_raw import SP_REQ_HELLO, TYPE_FP32, pb_bytes, pb_fields, pb_varint  # noqa: E402

try:
    import onnx  # noqa: F401 (images.make_image_model needs it)
    from PIL import Image
except ImportError as ex:  # pragma: no cover - the tooling venv has them
    print("soak: the onnx and Pillow packages are needed (the tooling virtualenv): %s" % ex)
    sys.exit(1)

WINDOW_S = 10            # throughput and latency windows
DIGITS_ATOL = 1e-3       # ten times digits' parity atol: batch buckets sum in other orders
IMG_ATOL = 1e-4
IMG_CLASSES = 10
RSS_SLACK = 2 << 20      # bytes allowed above the relative RSS bound


def log(msg):
    print("soak: %s" % msg, flush=True)


# ---- the model repository ----

def make_repo(repo, root):
    """digits versions 1 and 2 (the same files) and the image model img."""
    src = os.path.join(root, "models", "digits")
    d = os.path.join(repo, "digits")
    os.makedirs(d)
    for f in ("config.json", "labels.txt"):
        shutil.copy(os.path.join(src, f), d)
    for v in ("1", "2"):
        shutil.copytree(os.path.join(src, "1"), os.path.join(d, v))
    return make_image_model(os.path.join(repo, "img"), IMG_CLASSES, seed=7)


def make_image(w, b):
    """A 256x256 RGB PNG (lossless, so numpy sees the replica's pixels) and the
    probabilities img must answer for it: resize 256 leaves it as it is, the centre crop
    takes rows and columns 16..239."""
    yy, xx = np.mgrid[0:256, 0:256]
    px = np.stack([(xx * 255) // 255, (yy * 7) % 256, ((xx + yy) * 3) % 256], axis=-1)
    px = px.astype(np.uint8)
    f = io.BytesIO()
    Image.fromarray(px, "RGB").save(f, "PNG")
    crop = px[16:240, 16:240].astype(np.float64) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    chan = ((crop - mean) / std).mean(axis=(0, 1))
    logits = chan @ w.astype(np.float64) + b.astype(np.float64)
    e = np.exp(logits - logits.max())
    return f.getvalue(), e / e.sum()


# ---- SP request/reply on a raw socket, the protobuf messages of proto/corral.proto ----

def rpc_infer_request(x):
    """corral.Request{infer} of one digits row."""
    data = np.asarray(x, dtype="<f4").tobytes()
    tensor = (pb_bytes(1, "input") + pb_varint(2, TYPE_FP32) + pb_varint(3, 1) +
              pb_varint(3, len(x)) + pb_bytes(4, data))
    return pb_bytes(1, pb_bytes(2, "digits") + pb_bytes(4, tensor))


def rpc_decode(frame):
    """corral.Response -> ("infer", version, [floats of the first output]) or
    ("error", code, message)."""
    for f, _, v in pb_fields(frame):
        if f == 1:
            fields = pb_fields(v)
            version = next((x.decode() for g, _, x in fields if g == 3), "")
            out = next((x for g, _, x in fields if g == 4), b"")
            data = next((x for g, _, x in pb_fields(out) if g == 4), b"")
            return "infer", version, np.frombuffer(data, dtype="<f4").tolist()
        if f == 2:
            err = dict((g, x) for g, _, x in pb_fields(v))
            z = err.get(1, 0)
            return "error", (z >> 1) ^ -(z & 1), err.get(2, b"").decode("utf-8", "replace")
    return "error", 0, "an empty response"


# corral error codes to the HTTP status the router counts them under (common/error.h)
CODE_HTTP = {0: 200, -1: 400, -2: 404, -3: 503, -4: 501, -5: 500, -6: 500, -7: 500, -8: 400,
             -9: 504, -10: 429, -11: 500, -12: 413, -13: 405, -14: 503, -15: 415, -16: 401}
EDRAINING = -14


class SpConn:
    """One SP REQ connection: 8-byte big-endian length, a 4-byte request id with the top
    bit set, the payload."""

    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.sendall(SP_REQ_HELLO)
        self.buf = b""
        hello = self._take(8)
        if hello[:4] != b"\x00SP\x00":
            raise ConnectionError("not an SP peer: %r" % hello)

    def _take(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("the router closed the RPC connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, rid, payload):
        body = struct.pack(">I", rid | 0x80000000) + payload
        self.s.sendall(struct.pack(">Q", len(body)) + body)

    def recv(self, timeout):
        """(request id, payload), or None when nothing arrived within timeout."""
        self.s.settimeout(timeout)
        try:
            if len(self.buf) < 8:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise ConnectionError("the router closed the RPC connection")
                self.buf += chunk
                if len(self.buf) < 8:
                    return None
        except socket.timeout:
            return None
        self.s.settimeout(60)
        n = struct.unpack(">Q", self._take(8))[0]
        frame = self._take(n)
        return struct.unpack(">I", frame[:4])[0] & 0x7FFFFFFF, frame[4:]

    def close(self):
        self.s.close()


# ---- counting ----

class Tally:
    """What the soak sent and got back. attempts: every request that reached the router,
    by (model, protocol, code); ok_versions: 200s by (model, protocol, version);
    windows: latencies (s) per WINDOW_S window and kind, by completion time."""

    def __init__(self, t0):
        self.t0 = t0
        self.mu = threading.Lock()
        self.attempts = collections.Counter()
        self.ok_versions = collections.Counter()
        self.unsent = collections.Counter()   # by model: answered 503 "no ready replica"
        self.windows = collections.defaultdict(lambda: collections.defaultdict(
            lambda: array.array("d")))
        self.answered_total = 0

    def attempt(self, model, protocol, code, version=None, message=""):
        with self.mu:
            self.attempts[(model, protocol, code)] += 1
            if code == 200:
                self.ok_versions[(model, protocol, version)] += 1
            # The router found no replica to send it to: no replica ever saw it.
            if code == 503 and "has no ready replica" in message:
                self.unsent[model] += 1

    def latency(self, kind, end, seconds):
        with self.mu:
            self.windows[int((end - self.t0) // WINDOW_S)][kind].append(seconds)
            self.answered_total += 1


class Gen(threading.Thread):
    """One load generator: `rate` requests per second, paced (never bursting to catch
    up), each counted: sent, then answered (with its final status) or an error."""

    def __init__(self, soak, kind, model, protocol, rate):
        super().__init__(name=kind, daemon=True)
        self.soak, self.kind, self.model, self.protocol = soak, kind, model, protocol
        self.rate = rate
        self.mu = threading.Lock()
        self.sent = self.answered = 0
        self.statuses = collections.Counter()
        self.errors = []          # (t, detail): no answer (connection errors, timeouts)
        self.wrong = []           # (t, detail): an answer that is not right
        self.retried_draining = 0
        self.versions = []        # (t sent, version) of every 200
        self.n = 0

    def now(self):
        return time.monotonic() - self.soak.t0

    def run(self):
        try:
            self.loop()
        except Exception as ex:  # noqa: BLE001 - a generator that dies is a failure
            with self.mu:
                self.errors.append((self.now(), "generator died: %r" % ex))

    def pace(self, nxt, period):
        now = time.monotonic()
        if now < nxt:
            self.soak.stop.wait(nxt - now)
        return max(nxt + period, time.monotonic())

    def done(self, t_sent, status, version=None, problem=None):
        """One logical request's final answer."""
        with self.mu:
            if self.soak.args.break_ == "drop-answer" and self.kind == "http-json" and \
                    self.answered == 100 and not getattr(self, "_dropped", False):
                self._dropped = True      # the soak forgets this answer (on purpose)
                return
            self.answered += 1
            self.statuses[status] += 1
            if status == 200 and version is not None:
                self.versions.append((t_sent, version))
            if problem:
                self.wrong.append((self.now(), problem))
        end = time.monotonic()
        self.soak.tally.latency(self.kind, end, end - self.soak.t0 - t_sent)

    def failed(self, detail):
        with self.mu:
            self.errors.append((self.now(), detail))


class HttpGen(Gen):
    def connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.soak.http_port, timeout=60)

    def exchange(self, conn, path, body, headers):
        """(status, the response, its body, the connection to use next) of one request on
        a kept-alive connection."""
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        if (r.getheader("Connection") or "").lower() == "close":
            conn.close()
            conn = self.connect()
        return r.status, r, data, conn

    def loop(self):
        conn = self.connect()
        nxt, period = time.monotonic(), 1.0 / self.rate
        while not self.soak.stop.is_set():
            nxt = self.pace(nxt, period)
            if self.soak.stop.is_set():
                break
            path, body, headers, check = self.request()
            with self.mu:
                self.sent += 1
            t_sent = self.now()
            try:
                for attempt in (0, 1):
                    status, resp, data, conn = self.exchange(conn, path, body, headers)
                    version = None
                    if status == 200:
                        version, problem = check(resp, data)
                    else:
                        problem = "HTTP %d: %s" % (status, data[:300])
                    self.soak.tally.attempt(self.model, "http", status, version,
                                            data.decode("utf-8", "replace"))
                    if status == 503 and b"draining" in data and attempt == 0:
                        with self.mu:
                            self.retried_draining += 1
                        continue
                    break
                self.done(t_sent, status, version, problem)
            except Exception as ex:  # noqa: BLE001 - counted: a request without an answer
                self.failed(repr(ex))
                conn.close()
                conn = self.connect()
        conn.close()


class JsonGen(HttpGen):
    """POST /v2/models/digits/infer with JSON tensors; held-out rows in turn."""

    def request(self):
        row = self.n % len(self.soak.rows)
        self.n += 1
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                       "data": self.soak.rows[row]}]})
        return ("/v2/models/digits/infer", body, {"Content-Type": "application/json"},
                lambda r, d: self.check(row, d))

    def check(self, row, data):
        try:
            a = json.loads(data)
            return str(a.get("model_version")), self.soak.digits_problem(
                row, a["outputs"][0]["data"])
        except (ValueError, KeyError, IndexError, TypeError) as ex:
            return None, "unreadable answer (%r): %r" % (ex, data[:200])


class BinaryGen(HttpGen):
    """POST /v2/models/digits/infer with the input as binary tensor data, the output
    asked for as binary data too."""

    def request(self):
        row = self.n % len(self.soak.rows)
        self.n += 1
        x = np.asarray(self.soak.rows[row], dtype="<f4")
        head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64],
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "logits",
                                        "parameters": {"binary_data": True}}]}).encode()
        return ("/v2/models/digits/infer", head + x.tobytes(),
                {"Inference-Header-Content-Length": str(len(head)),
                 "Content-Type": "application/octet-stream"},
                lambda r, d: self.check(row, r, d))

    def check(self, row, resp, data):
        try:
            n = int(resp.getheader("Inference-Header-Content-Length"))
            a = json.loads(data[:n])
            raw = data[n:]
            size = a["outputs"][0]["parameters"]["binary_data_size"]
            if size != len(raw):
                return None, "binary_data_size %d, %d bytes came" % (size, len(raw))
            return str(a.get("model_version")), self.soak.digits_problem(
                row, np.frombuffer(raw, dtype="<f4").tolist())
        except (ValueError, KeyError, IndexError, TypeError) as ex:
            return None, "unreadable binary answer (%r): %r" % (ex, data[:200])


class ImageGen(HttpGen):
    """POST /v2/models/img/classify?top_k=3: the PNG as the body and as a multipart
    form's `file`, in turns."""

    def request(self):
        self.n += 1
        png = self.soak.png
        if self.n % 2:
            return ("/v2/models/img/classify?top_k=3", png, {"Content-Type": "image/png"},
                    self.check)
        bnd = "soakboundary%d" % self.n
        body = (("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n" % bnd).encode() + png +
                ("\r\n--%s--\r\n" % bnd).encode())
        return ("/v2/models/img/classify?top_k=3", body,
                {"Content-Type": "multipart/form-data; boundary=%s" % bnd}, self.check)

    def check(self, resp, data):
        try:
            a = json.loads(data)
            preds = a["predictions"]
            want = np.argsort(-self.soak.img_probs)[:3]
            got = [p["index"] for p in preds]
            if got != want.tolist():
                return None, "top 3 %s, expected %s" % (got, want.tolist())
            for p in preds:
                if abs(p["prob"] - self.soak.img_probs[p["index"]]) > IMG_ATOL:
                    return None, "class %d: prob %g, expected %g" % (
                        p["index"], p["prob"], self.soak.img_probs[p["index"]])
            return str(a.get("model_version")), None
        except (ValueError, KeyError, IndexError, TypeError) as ex:
            return None, "unreadable classify answer (%r): %r" % (ex, data[:200])


class RpcGen(Gen):
    """RPC infer of digits on one SP connection: `window` requests sent at once, each with
    its own id, then their answers matched to the ids (in any order)."""

    window = 4

    def loop(self):
        conn = None
        nxt, period = time.monotonic(), self.window / self.rate
        rid = 0
        while not self.soak.stop.is_set():
            nxt = self.pace(nxt, period)
            if self.soak.stop.is_set():
                break
            out = {}
            for _ in range(self.window):
                rid = rid % 0x7FFFFFFF + 1
                row = self.n % len(self.soak.rows)
                self.n += 1
                with self.mu:
                    self.sent += 1
                out[rid] = (row, self.now(), 0)
            try:
                if conn is None:
                    conn = SpConn("127.0.0.1", self.soak.rpc_port, 60)
                for r, (row, _, _) in out.items():
                    conn.send(r, self.soak.rpc_bodies[row])
                self.collect(conn, out)
            except Exception as ex:  # noqa: BLE001 - every request still out is lost
                for r in out:
                    self.failed("request id %d: %r" % (r, ex))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def collect(self, conn, out):
        deadline = time.monotonic() + 60
        while out:
            got = conn.recv(max(0.1, deadline - time.monotonic()))
            if got is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError("no answer within 60 s")
                continue
            rid, payload = got
            if rid not in out:
                self.failed("an answer with request id %d, which is not in flight" % rid)
                continue
            row, t_sent, tries = out[rid]
            kind, a, b = rpc_decode(payload)
            if kind == "infer":
                self.soak.tally.attempt(self.model, "rpc", 200, a)
                del out[rid]
                self.done(t_sent, 200, a, self.soak.digits_problem(row, b))
                continue
            self.soak.tally.attempt(self.model, "rpc", CODE_HTTP.get(a, 500), None, b)
            if a == EDRAINING and tries == 0:
                with self.mu:
                    self.retried_draining += 1
                out[rid] = (row, t_sent, 1)
                conn.send(rid, self.soak.rpc_bodies[row])
                continue
            del out[rid]
            self.done(t_sent, CODE_HTTP.get(a, 500), None, "RPC error %d: %s" % (a, b))


# ---- the cluster ----

class Scheduler:
    """corral-scheduler --config as a child; its output kept and copied to a file."""

    def __init__(self, binary, config, state, logpath):
        self.logf = open(logpath, "w")
        self.p = subprocess.Popen([binary, "--config", config, "--state-dir", state],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  bufsize=1, errors="backslashreplace")
        self.mu = threading.Lock()
        self.lines = []
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        for line in self.p.stdout:
            with self.mu:
                self.lines.append(line)
            self.logf.write(line)
            self.logf.flush()

    def output(self, since=0):
        with self.mu:
            return "".join(self.lines[since:])

    def mark(self):
        with self.mu:
            return len(self.lines)

    def wait_for(self, what, rx, timeout, since=0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(rx, self.output(since))
            if m:
                return m
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise SoakFailed("waiting for %s: %s\n%s" % (
            what, "the scheduler exited (%s)" % self.p.returncode if self.p.poll() is not None
            else "not within %d s" % timeout, self.output()[-3000:]))


class SoakFailed(Exception):
    pass


def http_get(port, path, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def rss(pid):
    """VmRSS of a live process in bytes, 0 when it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def parse_metrics(text):
    """[(name, {label: value}, float value)] of Prometheus text."""
    out = []
    rx = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
    lab = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = rx.match(line)
        if m:
            out.append((m.group(1), dict(lab.findall(m.group(2) or "")), float(m.group(3))))
    return out


class Soak:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        self.root = os.path.abspath(args.root)
        self.out = os.path.abspath(args.out)
        self.stop = threading.Event()
        self.sampling = threading.Event()
        self.failures = []
        self.events = []          # (t, event, detail)
        self.samples = []         # (t, router rss, scheduler rss, answered so far)
        self.kills = []           # dicts: t, name, pid, replaced_s
        self.rollout = {}
        self.scale = {}
        self.sched = None
        self.gens = []
        self.t0 = time.monotonic()

    # -- helpers --

    def now(self):
        return time.monotonic() - self.t0

    def event(self, what, detail=""):
        t = self.now()
        self.events.append((t, what, detail))
        log("%7.1f s  %s %s" % (t, what, detail))

    def fail(self, msg):
        self.failures.append(msg)

    def status(self):
        st, body = http_get(self.admin_port, "/v1/status")
        if st != 200:
            raise SoakFailed("GET /v1/status answered %d: %s" % (st, body[:300]))
        return json.loads(body)

    def model(self, st, name):
        return next(m for m in st["models"] if m["name"] == name)

    def router_ready(self, model):
        """URLs of MODEL's replicas the router's table says are ready."""
        st, body = http_get(self.http_port, "/v2/corral/replicas")
        if st != 200:
            return []
        return [r["url"] for r in json.loads(body)["replicas"]
                if r["model"] == model and r["state"] == "ready"]

    def wait(self, what, cond, timeout, every=0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = cond()
            if v:
                return v
            time.sleep(every)
        raise SoakFailed("timed out after %d s waiting for %s" % (timeout, what))

    def digits_problem(self, row, got):
        want = self.logits[row]
        if len(got) != len(want):
            return "row %d: %d logits, expected %d" % (row, len(got), len(want))
        diff = max(abs(a - b) for a, b in zip(got, want))
        if diff > DIGITS_ATOL:
            return "row %d: logits differ from PyTorch's by %g" % (row, diff)
        return None

    def write_config(self, version, replicas):
        cfg = {"model_repository": self.repo,
               "router": {"listen": "127.0.0.1:0", "rpc_listen": "tcp://127.0.0.1:0",
                          "control_listen": "127.0.0.1:0", "threads": 2},
               "admin": {"listen": "127.0.0.1:0"},
               "rollout": {"max_surge": 1, "soak_ms": 1000, "drain_timeout_ms": 30000},
               "oversubscribe": True,
               "models": [{"name": "digits", "version": version, "replicas": replicas,
                           "threads": 1},
                          {"name": "img", "version": 1, "replicas": 1, "threads": 1}]}
        with open(self.cfg_path, "w") as f:
            json.dump(cfg, f)

    # -- the run --

    def setup(self):
        if os.path.isdir(self.out):
            shutil.rmtree(self.out)
        os.makedirs(self.out)
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-soak-")
        self.repo = os.path.join(self.tmp.name, "repo")
        w, b = make_repo(self.repo, self.root)
        self.png, self.img_probs = make_image(w, b)
        with open(os.path.join(self.root, "tests", "data", "digits_heldout.json")) as f:
            held = json.load(f)
        self.rows = held["inputs"][:16]
        self.logits = held["logits"][:16]
        self.rpc_bodies = [rpc_infer_request(x) for x in self.rows]
        self.cfg_path = os.path.join(self.tmp.name, "cluster.json")
        self.http_port = None
        self.write_config(1, 2)
        self.sched = Scheduler(os.path.join(self.build, "scheduler", "corral-scheduler"),
                               self.cfg_path, os.path.join(self.out, "state"),
                               os.path.join(self.out, "scheduler.log"))
        m = self.sched.wait_for("the router ready", r"router: ready \(pid (\d+)\): "
                                r"http://127\.0\.0\.1:(\d+)", 60)
        self.router_pid, self.http_port = int(m.group(1)), int(m.group(2))
        a = self.sched.wait_for("the admin API",
                                r"admin listening on http://127\.0\.0\.1:(\d+)", 60)
        self.admin_port = int(a.group(1))
        self.wait("2 digits and 1 img replica ready", lambda: (
            len(self.router_ready("digits")) == 2 and len(self.router_ready("img")) == 1), 120)
        st = self.status()
        self.rpc_port = int(st["router"]["rpc"].rsplit(":", 1)[1])
        if st["router"]["pid"] != self.router_pid:
            raise SoakFailed("the status names router pid %s, the log %d"
                             % (st["router"]["pid"], self.router_pid))

    def sampler(self):
        """Every second: RSS of the router and the scheduler, answers so far."""
        nxt = time.monotonic()
        while not self.sampling.is_set():
            with self.tally.mu:
                answered = self.tally.answered_total
            self.samples.append((self.now(), rss(self.router_pid), rss(self.sched.p.pid), answered))
            nxt += 1.0
            self.sampling.wait(max(0.0, nxt - time.monotonic()))

    def start_load(self):
        r = self.args.rate
        self.gens = [JsonGen(self, "http-json", "digits", "http", 40 * r),
                     JsonGen(self, "http-json-2", "digits", "http", 40 * r),
                     BinaryGen(self, "http-binary", "digits", "http", 40 * r),
                     RpcGen(self, "rpc", "digits", "rpc", 60 * r),
                     ImageGen(self, "image", "img", "http", 10 * r)]
        for g in self.gens:
            g.start()
        self.samp = threading.Thread(target=self.sampler, daemon=True)
        self.samp.start()

    def can_kill(self):
        """(name, pid) of a digits replica that may be killed now, or None: no rollout or
        scale change runs, every desired replica serves, and the router's table agrees."""
        if self.rollout.get("running") or self.scale.get("running"):
            return None
        st = self.status()
        m = self.model(st, "digits")
        if m["ready"] < m["desired"] or m["desired"] < 2:
            return None
        if m.get("rollout") and m["rollout"]["state"] not in ("done", "aborted"):
            return None
        ready = [r for r in st["replicas"] if r["model"] == "digits" and r["state"] == "ready"
                 and r["in_table"] and r["pid"]]
        if len(ready) < m["desired"] or len(self.router_ready("digits")) < m["desired"]:
            return None
        victim = ready[len(self.kills) % len(ready)]
        return victim["name"], victim["pid"]

    def kill_one(self):
        if self.args.break_ == "kill-router" and not self.kills:
            name, pid = "router", self.router_pid
        else:
            v = self.can_kill()
            if v is None:
                return False
            name, pid = v
        os.kill(pid, signal.SIGKILL)
        self.kills.append({"t": self.now(), "name": name, "pid": pid, "replaced_s": None})
        self.event("kill", "%s (pid %d) SIGKILLed" % (name, pid))
        return True

    def check_replaced(self):
        """Notes when the last killed replica's successor serves."""
        k = self.kills[-1] if self.kills else None
        if not k or k["replaced_s"] is not None:
            return True
        st = self.status()
        st["router"].update(name="router", in_table=True)
        for r in st["replicas"] + [st["router"]]:
            if r["name"] == k["name"] and r["state"] == "ready" and r["in_table"] and \
                    r["pid"] and r["pid"] != k["pid"]:
                k["replaced_s"] = self.now() - k["t"]
                self.event("replaced", "%s serves again (pid %d) after %.2f s"
                           % (k["name"], r["pid"], k["replaced_s"]))
                return True
        if self.now() - k["t"] > 120:
            raise SoakFailed("%s killed at %.0f s was not replaced within 120 s"
                             % (k["name"], k["t"]))
        return False

    def start_rollout(self):
        self.write_config(2, 2)
        self.rollout = {"running": True, "t": self.now()}
        self.event("rollout", "digits 1 -> 2 applied with corralctl apply")
        r = subprocess.run([os.path.join(self.build, "client", "corralctl"), "apply", "--admin",
                            "127.0.0.1:%d" % self.admin_port, self.cfg_path],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or "rolling" not in r.stdout + r.stderr:
            raise SoakFailed("corralctl apply (version 2): exit %d: %s"
                             % (r.returncode, r.stdout + r.stderr))

    def check_rollout(self):
        ro = self.model(self.status(), "digits").get("rollout")
        if ro and ro["state"] in ("done", "aborted") and ro["to"] == 2:
            self.rollout.update(running=False, end=self.now(), state=ro["state"],
                                duration_ms=ro["duration_ms"], started=ro["started"],
                                drained=ro["drained"], reason=ro.get("reason"))
            self.event("rollout " + ro["state"], "in %d ms by the scheduler (%d started, %d "
                       "drained)" % (ro["duration_ms"], ro["started"], ro["drained"]))
            if ro["state"] != "done":
                raise SoakFailed("the rollout was aborted: %s" % ro.get("reason"))
        elif self.now() - self.rollout["t"] > 300:
            raise SoakFailed("the rollout did not finish within 300 s: %s" % ro)

    def start_scale(self):
        self.write_config(2, 3)
        self.scale = {"running": True, "t": self.now(), "mark": self.sched.mark()}
        self.event("scale", "digits 2 -> 3 replicas: config rewritten, SIGHUP")
        os.kill(self.sched.p.pid, signal.SIGHUP)

    def check_scale(self):
        self.sched.wait_for("SIGHUP applied", r"SIGHUP: applied \(200\)", 60, self.scale["mark"])
        m = self.model(self.status(), "digits")
        if m["desired"] == 3 and m["ready"] == 3 and len(self.router_ready("digits")) == 3:
            self.scale.update(running=False, end=self.now(), seconds=self.now() - self.scale["t"])
            self.event("scaled", "3 digits replicas serve, %.2f s after the SIGHUP"
                       % self.scale["seconds"])
        elif self.now() - self.scale["t"] > 300:
            raise SoakFailed("the scale change did not finish within 300 s: %s" % m)

    def timeline(self):
        """Kills, the rollout and the scale change, until the run's length has passed and
        every change is done and every killed replica replaced."""
        T = self.args.minutes * 60
        next_kill = self.args.kill_every
        while True:
            t = self.now()
            replaced = self.check_replaced()
            if self.rollout.get("running"):
                self.check_rollout()
            if self.scale.get("running"):
                self.check_scale()
            if not self.rollout and t >= 0.4 * T:
                self.start_rollout()
            elif self.rollout and not self.rollout.get("running") and not self.scale and \
                    t >= 0.6 * T:
                self.start_scale()
            if t >= next_kill and t < T and replaced:
                if self.kill_one():
                    next_kill += self.args.kill_every
                    while next_kill <= self.now():
                        next_kill += self.args.kill_every
            if t >= T and self.rollout and not self.rollout.get("running") and self.scale \
                    and not self.scale.get("running") and replaced:
                return
            if self.sched.p.poll() is not None:
                raise SoakFailed("the scheduler exited (%s)" % self.sched.p.returncode)
            if t > T + 600:
                raise SoakFailed("the timeline did not finish within 10 minutes of its end")
            time.sleep(0.2)

    def stop_load(self):
        self.stop.set()
        for g in self.gens:
            g.join(120)
            if g.is_alive():
                self.fail("%s: its thread did not end within 120 s" % g.kind)
        self.t_end = self.now()
        self.event("load stopped")
        self.sampling.set()
        self.samp.join(10)

    # -- the checks --

    def check_counts(self):
        for g in self.gens:
            lost = g.sent - g.answered - len(g.errors)
            if g.sent != g.answered:
                self.fail("%s: %d sent, %d answered (%d errors, %d with neither answer nor "
                          "error)" % (g.kind, g.sent, g.answered, len(g.errors), lost))
            for t, e in g.errors[:5]:
                self.fail("%s: no answer at %.1f s: %s" % (g.kind, t, e))
            bad = {s: n for s, n in g.statuses.items() if s != 200}
            if bad:
                self.fail("%s: answers other than 200: %s" % (g.kind, bad))
            for t, w in g.wrong[:5]:
                self.fail("%s: a wrong answer at %.1f s: %s" % (g.kind, t, w))
            if len(g.wrong) > 5:
                self.fail("%s: %d wrong answers in all" % (g.kind, len(g.wrong)))

    def check_versions(self):
        t_roll, t_done = self.rollout.get("t"), self.rollout.get("end")
        for g in self.gens:
            if g.model != "digits":
                continue
            early = {v for t, v in g.versions if t < t_roll}
            late = {v for t, v in g.versions if t_done is not None and t > t_done + 1.0}
            if early - {"1"}:
                self.fail("%s: versions %s answered before the rollout" % (g.kind, early))
            if late - {"2"}:
                self.fail("%s: versions %s answered after the rollout was done"
                          % (g.kind, late))

    def check_router_metrics(self):
        st, body = http_get(self.http_port, "/metrics")
        if st != 200:
            self.fail("router GET /metrics answered %d" % st)
            return
        with open(os.path.join(self.out, "router-metrics.txt"), "wb") as f:
            f.write(body)
        ms = parse_metrics(body.decode())
        by_code = collections.Counter()
        by_version = collections.Counter()
        for name, lab, v in ms:
            if name == "corral_router_requests_total" and v:
                by_code[(lab["model"], lab["protocol"], int(lab["code"]))] += int(v)
                if lab["code"] == "200":
                    by_version[(lab["model"], lab["protocol"], lab["version"])] += int(v)
        mine = +self.tally.attempts
        if by_code != mine:
            keys = sorted(set(by_code) | set(mine), key=str)
            self.fail("corral_router_requests_total differs from the soak's count: " + ", ".join(
                "%s/%s/%s router %d soak %d" % (k + (by_code[k], mine[k]))
                for k in keys if by_code[k] != mine[k]))
        mine_v = +self.tally.ok_versions
        if by_version != mine_v:
            keys = sorted(set(by_version) | set(mine_v), key=str)
            self.fail("corral_router_requests_total{code=200} by version differs: " + ", ".join(
                "%s/%s/v%s router %d soak %d" % (k + (by_version[k], mine_v[k]))
                for k in keys if by_version[k] != mine_v[k]))
        self.router_counts = {"%s/%s/%d" % k: v for k, v in sorted(by_code.items())}
        inflight = [v for n, lab, v in ms if n == "corral_router_inflight_requests"]
        if inflight != [0.0]:
            self.fail("corral_router_inflight_requests is %s after the load stopped" % inflight)
        self.retries = {lab["model"]: int(v) for n, lab, v in ms
                        if n == "corral_router_retries_total"}
        self.ejections = {lab["model"]: int(v) for n, lab, v in ms
                          if n == "corral_router_ejections_total"}
        for model in ("digits", "img"):
            sent = sum(int(v) for n, lab, v in ms
                       if n == "corral_router_replica_requests_total" and lab["model"] == model)
            att = sum(v for k, v in self.tally.attempts.items() if k[0] == model)
            unsent = self.tally.unsent[model]
            want = att - unsent + self.retries.get(model, 0)
            if sent != want:
                self.fail("%s: corral_router_replica_requests_total sums to %d; the soak's %d "
                          "attempts less %d answered 'no ready replica' plus the router's %d "
                          "retries make %d"
                          % (model, sent, att, unsent, self.retries.get(model, 0), want))

    def check_scheduler_metrics(self):
        st, body = http_get(self.admin_port, "/metrics")
        if st != 200:
            self.fail("scheduler GET /metrics answered %d" % st)
            return
        ms = parse_metrics(body.decode())

        def one(name, **labels):
            got = [v for n, lab, v in ms if n == name and lab == labels]
            return got[0] if len(got) == 1 else None
        # Every restart is one of the soak's kills or one the scheduler's health checks
        # caused (a replica that missed health.failure_threshold checks in a row).
        self.health_kills = collections.Counter(re.findall(
            r"(\w+)#\d+: exited \(pid \d+, killed by signal 9 \(Killed\) after \d+ failed health "
            r"checks\)", self.sched.output()))
        kills = sum(1 for k in self.kills if k["name"].startswith("digits"))
        want = [("corral_scheduler_replica_restarts_total", {"model": "digits"},
                 kills + self.health_kills["digits"]),
                ("corral_scheduler_replica_restarts_total", {"model": "img"},
                 self.health_kills["img"]),
                ("corral_scheduler_router_restarts_total", {}, 0),
                ("corral_scheduler_router_ready", {}, 1),
                ("corral_scheduler_replicas_desired", {"model": "digits"}, 3),
                ("corral_scheduler_replicas_ready", {"model": "digits"}, 3),
                ("corral_scheduler_replicas_desired", {"model": "img"}, 1),
                ("corral_scheduler_replicas_ready", {"model": "img"}, 1),
                ("corral_scheduler_rollout_state", {"model": "digits", "state": "done"}, 1)]
        self.sched_metrics = {}
        for name, labels, v in want:
            got = one(name, **labels)
            key = "%s%s" % (name, json.dumps(labels, sort_keys=True) if labels else "")
            self.sched_metrics[key] = got
            if got != v:
                self.fail("scheduler %s is %s, expected %s" % (key, got, v))

    def check_final_state(self):
        st = self.status()
        reps = sorted((r["model"], r["version"], r["state"]) for r in st["replicas"])
        want = [("digits", 2, "ready")] * 3 + [("img", 1, "ready")]
        if reps != want:
            self.fail("the final replicas are %s, expected %s" % (reps, want))
        if st["router"]["pid"] != self.router_pid or st["router"]["restarts"]:
            self.fail("the router was restarted: pid %s (was %d), %s restarts"
                      % (st["router"]["pid"], self.router_pid, st["router"]["restarts"]))
        self.final_pids = [r["pid"] for r in st["replicas"] if r["pid"]] + [st["router"]["pid"]]

    def rss_stats(self):
        """Per process: start, first-third peak, last-third peak, peak, end (bytes)."""
        out = {}
        T = self.t_end
        for i, name in ((1, "router"), (2, "scheduler")):
            xs = [(t, s[i]) for s in self.samples for t in [s[0]] if s[i]]
            first = [v for t, v in xs if t <= T / 3]
            last = [v for t, v in xs if t >= 2 * T / 3]
            if not first or not last:
                self.fail("%s: too few RSS samples (%d)" % (name, len(xs)))
                continue
            # Least squares over the last two thirds, in KiB per minute.
            tail = [(t, v) for t, v in xs if t >= T / 3]
            n = len(tail)
            mt = sum(t for t, _ in tail) / n
            mv = sum(v for _, v in tail) / n
            den = sum((t - mt) ** 2 for t, _ in tail) or 1.0
            slope = sum((t - mt) * (v - mv) for t, v in tail) / den
            out[name] = {"start": xs[0][1], "first_third_peak": max(first),
                         "last_third_peak": max(last), "peak": max(v for _, v in xs),
                         "end": xs[-1][1], "slope_kib_per_min": slope * 60 / 1024}
            bound = max(first) * (1 + self.args.rss_bound) + RSS_SLACK
            out[name]["bound"] = bound
            if max(last) > bound:
                self.fail("%s RSS is not flat: the last third's peak %.1f MiB is above %.1f MiB "
                          "(the first third's peak %.1f MiB + %.0f %% + %d MiB)"
                          % (name, max(last) / 2**20, bound / 2**20, max(first) / 2**20,
                             self.args.rss_bound * 100, RSS_SLACK >> 20))
        return out

    def stop_cluster(self):
        self.sched.p.send_signal(signal.SIGTERM)
        try:
            rc = self.sched.p.wait(120)
        except subprocess.TimeoutExpired:
            self.fail("the scheduler did not stop within 120 s of its SIGTERM")
            return
        self.sched.t.join(10)
        if rc != 0:
            self.fail("the scheduler exited %d on SIGTERM" % rc)
        left = [p for p in getattr(self, "final_pids", []) if alive(p)]
        if left:
            self.fail("processes of the cluster still run after the stop: %s" % left)

    def teardown(self):
        if self.sched and self.sched.p.poll() is None:
            self.sched.p.kill()
            self.sched.p.wait()
        state = os.path.join(self.out, "state")
        # Children of a scheduler that died: found by their log files in our state dir.
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/comm" % d) as f:
                    comm = f.read().strip()
                if comm in ("corral-router", "corral-replica") and \
                        os.readlink("/proc/%s/fd/1" % d).startswith(state + os.sep):
                    os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass
        self.tmp.cleanup()

    # -- output --

    def window_rows(self):
        kinds = [g.kind for g in self.gens]
        rows = []
        n_win = int(math.ceil(self.t_end / WINDOW_S))
        for w in range(n_win):
            span = min(WINDOW_S, self.t_end - w * WINDOW_S)
            if span < WINDOW_S / 2:
                continue          # the tail of the run: too short to say a rate
            per = self.tally.windows.get(w, {})
            allv = sorted(v for k in per for v in per[k])
            row = {"t_start_s": w * WINDOW_S, "t_end_s": round(w * WINDOW_S + span, 1),
                   "answers": len(allv), "rps": len(allv) / span,
                   "p50_ms": pct(allv, 0.5) * 1000, "p99_ms": pct(allv, 0.99) * 1000,
                   "max_ms": (allv[-1] if allv else 0) * 1000}
            for k in kinds:
                vs = sorted(per.get(k, []))
                row["rps_" + k] = len(vs) / span
                row["p99_ms_" + k] = pct(vs, 0.99) * 1000
            rows.append(row)
        return rows

    def write_outputs(self, rss_info):
        with open(os.path.join(self.out, "seconds.csv"), "w") as f:
            f.write("t_s,router_rss_kib,scheduler_rss_kib,answered\n")
            for t, r, s, a in self.samples:
                f.write("%.1f,%d,%d,%d\n" % (t, r // 1024, s // 1024, a))
        rows = self.window_rows()
        with open(os.path.join(self.out, "windows.csv"), "w") as f:
            if rows:
                keys = list(rows[0])
                f.write(",".join(keys) + "\n")
                for r in rows:
                    f.write(",".join(fmt_num(r[k]) for k in keys) + "\n")
        with open(os.path.join(self.out, "events.csv"), "w") as f:
            f.write("t_s,event,detail\n")
            for t, e, d in self.events:
                f.write('%.1f,%s,"%s"\n' % (t, e, d.replace('"', "'")))
        lat = sorted(v for w in self.tally.windows.values() for k in w for v in w[k])
        per_kind = {}
        for g in self.gens:
            vs = sorted(v for w in self.tally.windows.values() for v in w.get(g.kind, []))
            per_kind[g.kind] = {
                "model": g.model, "protocol": g.protocol, "sent": g.sent,
                "answered": g.answered, "statuses": {str(k): v for k, v in g.statuses.items()},
                "errors": len(g.errors), "wrong": len(g.wrong),
                "retried_draining": g.retried_draining,
                "p50_ms": pct(vs, 0.5) * 1000, "p99_ms": pct(vs, 0.99) * 1000,
                "max_ms": (vs[-1] if vs else 0) * 1000}
        replaced = [k["replaced_s"] for k in self.kills if k["replaced_s"] is not None]
        self.summary = {
            "minutes": self.args.minutes, "load_seconds": round(self.t_end, 1),
            "kill_every_s": self.args.kill_every, "rate": self.args.rate,
            "sent": sum(g.sent for g in self.gens),
            "answered": sum(g.answered for g in self.gens),
            "lost": sum(g.sent - g.answered for g in self.gens),
            "rps_mean": sum(g.answered for g in self.gens) / self.t_end,
            "p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000,
            "max_ms": (lat[-1] if lat else 0) * 1000,
            "worst_window_p99_ms": max((r["p99_ms"] for r in rows), default=0),
            "kinds": per_kind,
            "kills": self.kills,
            "replacement_s": {"min": min(replaced, default=None),
                              "max": max(replaced, default=None)},
            "rollout": {k: v for k, v in self.rollout.items() if k != "running"},
            "scale": {k: v for k, v in self.scale.items() if k not in ("running", "mark")},
            "health_kills": dict(getattr(self, "health_kills", {})),
            "router_retries": getattr(self, "retries", {}),
            "router_ejections": getattr(self, "ejections", {}),
            "router_requests_total": getattr(self, "router_counts", {}),
            "scheduler_metrics": getattr(self, "sched_metrics", {}),
            "rss": rss_info, "rss_bound": "last third's peak <= first third's peak x %.2f + "
                                          "%d MiB" % (1 + self.args.rss_bound, RSS_SLACK >> 20),
            "failures": self.failures}
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(self.summary, f, indent=1)
        with open(os.path.join(self.out, "soak.svg"), "w") as f:
            f.write(plot_svg(self.samples, rows, self.events, self.t_end,
                             "corral soak: %g min, %d requests, %d replicas SIGKILLed"
                             % (self.args.minutes, self.summary["sent"], len(self.kills))))

    def print_summary(self):
        s = self.summary
        log("---- summary ----")
        log("load %.0f s: %d sent, %d answered, %d lost; %.0f answers/s; latency p50 %.1f ms, "
            "p99 %.1f ms, max %.0f ms; the worst 10 s window's p99 %.1f ms"
            % (s["load_seconds"], s["sent"], s["answered"], s["lost"], s["rps_mean"], s["p50_ms"],
               s["p99_ms"], s["max_ms"], s["worst_window_p99_ms"]))
        for k, v in s["kinds"].items():
            log("  %-12s %-6s %-4s sent %6d answered %6d statuses %s errors %d wrong %d "
                "503-draining retried %d; p99 %.1f ms"
                % (k, v["model"], v["protocol"], v["sent"], v["answered"], v["statuses"],
                   v["errors"], v["wrong"], v["retried_draining"], v["p99_ms"]))
        log("kills: %d (%s); replacements served again after %s to %s s"
            % (len(s["kills"]), ", ".join("%s at %.0f s" % (k["name"], k["t"]) for k in s["kills"]),
               fmt_num(s["replacement_s"]["min"]), fmt_num(s["replacement_s"]["max"])))
        ro = s["rollout"]
        if ro:
            log("rollout digits 1 -> 2: %s, %s ms by the scheduler, %.1f s from apply to done"
                % (ro.get("state"), ro.get("duration_ms"), ro.get("end", 0) - ro.get("t", 0)))
        if s["scale"]:
            log("scale digits 2 -> 3: %s s from SIGHUP to 3 serving"
                % fmt_num(s["scale"].get("seconds")))
        log("replicas the scheduler killed after failed health checks: %s"
            % (s["health_kills"] or "none"))
        log("router retries %s, ejections %s" % (s["router_retries"], s["router_ejections"]))
        log("router corral_router_requests_total: %s" % s["router_requests_total"])
        for name, r in s["rss"].items():
            log("RSS %-9s start %.1f MiB, first third peak %.1f, last third peak %.1f (bound "
                "%.1f), peak %.1f, end %.1f MiB; slope over the last two thirds %+.1f KiB/min"
                % (name, r["start"] / 2**20, r["first_third_peak"] / 2**20,
                   r["last_third_peak"] / 2**20, r["bound"] / 2**20, r["peak"] / 2**20,
                   r["end"] / 2**20, r["slope_kib_per_min"]))
        log("outputs: %s" % self.out)

    def run(self):
        try:
            self.setup()
            self.t0 = time.monotonic()
            self.tally = Tally(self.t0)
            self.event("load started", "router pid %d, scheduler pid %d"
                       % (self.router_pid, self.sched.p.pid))
            self.start_load()
            try:
                self.timeline()
            finally:
                self.stop_load()
            # Answers are in; what the counters say now is final.
            self.check_counts()
            self.check_versions()
            self.check_router_metrics()
            self.check_scheduler_metrics()
            self.check_final_state()
            rss_info = self.rss_stats()
            self.stop_cluster()
        except SoakFailed as ex:
            self.fail(str(ex))
            if self.gens and not self.stop.is_set():
                self.stop_load()
            if self.gens:
                self.check_counts()
            rss_info = {}
        finally:
            if self.sched:
                self.teardown()
        if self.gens:
            self.write_outputs(rss_info)
            self.print_summary()
        if self.failures:
            log("FAILED:")
            for f in self.failures:
                log("  " + f)
            return 1
        log("PASSED: every request answered exactly once, 0 lost, /metrics agree, RSS flat")
        return 0


def pct(sorted_vals, q):
    if not sorted_vals:
        return 0.0
    return sorted_vals[min(len(sorted_vals) - 1, int(math.ceil(q * len(sorted_vals))) - 1)]


def fmt_num(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3f" % v
    return str(v)


# ---- the plot: an SVG of three panels sharing the time axis ----

def nice_step(span, ticks=5):
    raw = span / ticks if span > 0 else 1
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def plot_svg(samples, rows, events, t_end, title):
    W, left, right, ph, gap, top = 960, 70, 150, 170, 45, 60
    pw = W - left - right
    minutes = t_end > 300
    unit = 60.0 if minutes else 1.0
    x_max = max(t_end, 1) / unit
    xs = lambda t: left + pw * (t / unit) / x_max  # noqa: E731
    mid = lambda r: (r["t_start_s"] + r["t_end_s"]) / 2  # noqa: E731
    panels = [
        ("throughput (answers/s, 10 s windows)",
         [("all", "#1f77b4", [(mid(r), r["rps"]) for r in rows])]),
        ("latency p99 (ms, 10 s windows)",
         [("p99 all", "#d62728", [(mid(r), r["p99_ms"]) for r in rows]),
          ("p50 all", "#ff9896", [(mid(r), r["p50_ms"]) for r in rows])]),
        ("resident memory (MiB)",
         [("router", "#2ca02c", [(s[0], s[1] / 2**20) for s in samples if s[1]]),
          ("scheduler", "#9467bd", [(s[0], s[2] / 2**20) for s in samples if s[2]])]),
    ]
    H = top + len(panels) * (ph + gap) + 30
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
         'font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="15">%s</text>' % (left, esc(title))]
    for i, (name, series) in enumerate(panels):
        y0 = top + i * (ph + gap)
        vals = [v for _, _, pts in series for _, v in pts]
        y_max = max(vals) * 1.1 if vals and max(vals) > 0 else 1
        ystep = nice_step(y_max)
        y_max = ystep * math.ceil(y_max / ystep)
        ys = lambda v, y0=y0, y_max=y_max: y0 + ph - ph * v / y_max  # noqa: E731
        o.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (left, y0 - 6, esc(name)))
        o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888"/>'
                 % (left, y0, pw, ph))
        v = 0.0
        while v <= y_max + 1e-9:
            o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>'
                     % (left, left + pw, ys(v), ys(v)))
            o.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                     % (left - 4, ys(v) + 4, ("%g" % round(v, 6))))
            v += ystep
        for t, what, _ in events:
            if what == "kill":
                o.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#d62728" '
                         'stroke-dasharray="2,3" stroke-width="0.8"/>'
                         % (xs(t), xs(t), y0, y0 + ph))
            elif what in ("rollout", "rollout done", "scale", "scaled"):
                o.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#ff7f0e" '
                         'stroke-width="1.2"/>' % (xs(t), xs(t), y0, y0 + ph))
                if i == 0 and what in ("rollout", "scale"):
                    o.append('<text x="%.1f" y="%d" fill="#ff7f0e" text-anchor="middle">%s'
                             '</text>' % (xs(t), y0 - 20, what))
        for k, (label, color, pts) in enumerate(series):
            if pts:
                o.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>'
                         % (color, " ".join("%.1f,%.1f" % (xs(t), ys(v)) for t, v in pts)))
            o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                     % (left + pw + 10, left + pw + 30, y0 + 15 + 18 * k, y0 + 15 + 18 * k, color))
            o.append('<text x="%d" y="%d">%s</text>'
                     % (left + pw + 35, y0 + 19 + 18 * k, esc(label)))
        xstep = nice_step(x_max, 8)
        xv = 0.0
        while xv <= x_max + 1e-9:
            x = left + pw * xv / x_max
            o.append('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#888"/>'
                     % (x, x, y0 + ph, y0 + ph + 4))
            o.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>'
                     % (x, y0 + ph + 16, round(xv, 6)))
            xv += xstep
    yl = top + len(panels) * (ph + gap) - 10
    o.append('<text x="%d" y="%d" text-anchor="middle">time (%s); red dashes: a replica '
             'SIGKILLed; orange: rollout and scale change (start, end)</text>'
             % (left + pw / 2, yl, "min" if minutes else "s"))
    o.append("</svg>\n")
    return "\n".join(o)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def replot(out):
    """Draws DIR/soak.svg again from a finished run's CSV files and summary."""
    import csv
    with open(os.path.join(out, "seconds.csv")) as f:
        samples = [(float(r["t_s"]), int(r["router_rss_kib"]) * 1024,
                    int(r["scheduler_rss_kib"]) * 1024, int(r["answered"]))
                   for r in csv.DictReader(f)]
    with open(os.path.join(out, "windows.csv")) as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    with open(os.path.join(out, "events.csv")) as f:
        events = [(float(r["t_s"]), r["event"], r["detail"]) for r in csv.DictReader(f)]
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(out, "soak.svg"), "w") as f:
        f.write(plot_svg(samples, rows, events, s["load_seconds"],
                         "corral soak: %g min, %d requests, %d replicas SIGKILLed"
                         % (s["minutes"], s["sent"], len(s["kills"]))))
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--replot":
        return replot(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills")
    ap.add_argument("--rate", type=float, default=1.0,
                    help="load multiplier (1: about 190 requests/s in all)")
    ap.add_argument("--rss-bound", type=float, default=0.10,
                    help="allowed growth of the last third's RSS peak over the first's")
    ap.add_argument("--break", dest="break_", choices=("drop-answer", "kill-router"),
                    help="break the soak on purpose, to see it fail")
    args = ap.parse_args()
    if args.minutes <= 0:
        ap.error("--minutes must be positive")
    return Soak(args).run()


if __name__ == "__main__":
    sys.exit(main())
