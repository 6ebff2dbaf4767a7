"""Starts real corral processes on loopback for integration tests.

Usage:
    with Cluster(build_dir, repo) as c:
        c.replica("digits")            # a corral-replica on an ephemeral port
        c.replica("digits")
        c.router()                     # corral-router over every replica started
        status, body = c.http("GET", "/v2/health/ready")

Every process is started with port 0 and the bound address is read from its
log line, so tests can run in parallel. Everything started is killed on exit.
"""
import http.client
import json
import os
import re
import subprocess
import threading
import time


class ProcessFailed(Exception):
    pass


class Proc:
    def __init__(self, argv, ready_re, timeout=60):
        self.argv = argv
        self.lines = []
        # Whatever bytes a process writes, the reader keeps reading (escaped, not decoded).
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, errors="backslashreplace")
        self.match = None
        self._cv = threading.Condition()
        self._t = threading.Thread(target=self._pump, args=(re.compile(ready_re),), daemon=True)
        self._t.start()
        deadline = time.time() + timeout
        with self._cv:
            while self.match is None and self.p.poll() is None and time.time() < deadline:
                self._cv.wait(0.1)
        if self.match is None:
            self.kill()
            raise ProcessFailed("%s did not start (exit %s):\n%s" %
                                (argv[0], self.p.returncode, "".join(self.lines[-30:])))

    def _pump(self, rx):
        for line in self.p.stdout:
            with self._cv:
                self.lines.append(line)
                if self.match is None:
                    m = rx.search(line)
                    if m:
                        self.match = m
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def output(self):
        with self._cv:
            return "".join(self.lines)

    def kill(self, sig=None):
        if self.p.poll() is None:
            if sig is None:
                self.p.terminate()
            else:
                self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Cluster:
    def __init__(self, build_dir, repo):
        self.build = build_dir
        self.repo = repo
        self.replicas = []
        self.router_proc = None
        self.port = None
        self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._conn:
            self._conn.close()
        if self.router_proc:
            self.router_proc.kill()
        for name, r in self.replicas:
            r.kill()

    def replica(self, model, *extra):
        argv = [os.path.join(self.build, "replica", "corral-replica"), "--model-repo", self.repo,
                "--model", model, "--listen", "tcp://127.0.0.1:0", "--device", "cpu"] + list(extra)
        r = Proc(argv, r" on (tcp://127\.0\.0\.1:\d+)")
        self.replicas.append((model, r))
        return r.match.group(1)

    def router(self, *extra):
        argv = [os.path.join(self.build, "router", "corral-router"), "--listen", "127.0.0.1:0"]
        for name, r in self.replicas:
            argv += ["--replica", "%s=%s" % (name, r.match.group(1))]
        if "--rpc-listen" not in extra:
            # An ephemeral RPC port, so that routers of parallel tests do not collide.
            argv += ["--rpc-listen", "tcp://127.0.0.1:0"]
        if "--control-listen" not in extra:
            argv += ["--control-listen", "127.0.0.1:0"]
        self.router_proc = Proc(argv + list(extra), r"corral-router listening on http://127\.0\.0\.1:(\d+)")
        self.port = int(self.router_proc.match.group(1))
        self.control_port = None
        deadline = time.time() + 30
        while time.time() < deadline:
            out = self.router_proc.output()
            m = re.search(r"control listening on http://127\.0\.0\.1:(\d+)", out)
            if m:
                self.control_port = int(m.group(1))
                break
            if "control endpoint off" in out or "--control-listen off" in " ".join(argv + list(extra)):
                break
            time.sleep(0.01)
        return self.port

    def control(self, method, path, body=None, token=None):
        """One request to the router's control endpoint; (status, parsed JSON body). A str
        or bytes body is sent as it is (for malformed JSON), anything else as JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=30)
        try:
            headers = {"Authorization": "Bearer " + token} if token else {}
            if body is not None and not isinstance(body, (str, bytes)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def http(self, method, path, body=None, headers=None, raw=False):
        """One request on a kept-alive connection; reconnects when the server closed it."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self._conn.close()
                    self._conn = None
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        if raw:
            return resp.status, data, resp
        try:
            return resp.status, json.loads(data) if data else None
        except ValueError:
            return resp.status, data

    def wait_ready(self, path="/v2/health/ready", timeout=30, in_a_row=24):
        """Waits until `path` answers 200 on `in_a_row` fresh connections in a row. Each
        router thread has its own view of the replicas and the kernel spreads connections
        over the threads, so one 200 speaks for one thread only; 24 in a row leave a
        thread of four unasked with a chance of 0.1 %."""
        deadline = time.time() + timeout
        good = 0
        while time.time() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            finally:
                conn.close()
            good = good + 1 if status == 200 else 0
            if good >= in_a_row:
                return
            if status != 200:
                time.sleep(0.05)
        raise ProcessFailed("router never became ready at %s" % path)


def digits_request(root):
    """The infer body of one held-out digits row (tests/data/digits_heldout.json)."""
    with open(os.path.join(root, "tests", "data", "digits_heldout.json")) as f:
        x = json.load(f)["inputs"][0]
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]}


def set_batching(repo, model="digits", **batching):
    """Rewrites REPO/MODEL/config.json with these batching settings (default: batches of up
    to 8 rows, 2 ms of queue delay)."""
    cfgp = os.path.join(repo, model, "config.json")
    with open(cfgp) as f:
        cfg = json.load(f)
    cfg["batching"] = batching or {"max_batch_size": 8, "max_queue_delay_us": 2000}
    with open(cfgp, "w") as f:
        json.dump(cfg, f)


def infer_async(cluster, body, n=1, model="digits"):
    """n infer requests to the cluster's router, each on a thread and a connection of its
    own; returns (threads, statuses): each status (or the exception's repr) is appended
    as its answer comes."""
    out = []

    def one():
        cl = Cluster(cluster.build, cluster.repo)
        cl.port = cluster.port
        try:
            out.append(cl.http("POST", "/v2/models/%s/infer" % model, body)[0])
        except Exception as ex:  # noqa: BLE001 - counted
            out.append(repr(ex))
        cl.close()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, out


def sanitizer_build(binary):
    """True when the executable links a sanitizer's runtime (address or thread)."""
    with open(binary, "rb") as f:
        data = f.read()
    return b"libasan.so" in data or b"libtsan.so" in data


def sanitized(pid):
    """True when the process runs with a sanitizer's runtime (address or thread), whose
    quarantine and shadow memory grow with traffic: memory bounds say nothing about
    corral's own memory there, and are checked on the Release build."""
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


def wait_until(what, cond, timeout=30.0, every=0.02):
    """Polls cond() every `every` s until it returns something true, and returns that;
    fails (AssertionError naming `what`) after `timeout` s. Tests wait for what a step
    caused with this, never for a fixed time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def replica_counts(cluster, model):
    """(requests received, queue depth) of MODEL's replicas, summed, from the router's
    /metrics: what the replicas themselves counted, for tests that order requests."""
    status, data, _ = cluster.http("GET", "/metrics", raw=True)
    if status != 200:
        raise ProcessFailed("GET /metrics answered %d" % status)
    got = {}
    for line in data.decode().splitlines():
        for name in ("corral_model_requests_total", "corral_model_queue_depth"):
            if line.startswith('%s{model="%s",' % (name, model)):
                got[name] = got.get(name, 0) + int(float(line.split()[-1]))
    return (got.get("corral_model_requests_total", 0), got.get("corral_model_queue_depth", 0))


def replica_on(cluster, model, device, *extra):
    """Like Cluster.replica, but on `device` ("cpu", "cuda:0", ...)."""
    argv = [os.path.join(cluster.build, "replica", "corral-replica"), "--model-repo", cluster.repo,
            "--model", model, "--listen", "tcp://127.0.0.1:0", "--device", device] + list(extra)
    r = Proc(argv, r" on (tcp://127\.0\.0\.1:\d+)")
    cluster.replicas.append((model, r))
    return r.match.group(1)


def cuda_devices():
    """The CUDA devices nvidia-smi lists (["GPU 0: ...", ...]); [] without a driver."""
    try:
        res = subprocess.run(["nvidia-smi", "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0:
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.startswith("GPU ")]


def proc_memory(pid):
    """{"VmRSS": bytes, "VmHWM": bytes, ...} of a live process, from /proc/PID/status."""
    mem = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
                mem[key] = int(parts[0]) * 1024
    return mem


def infer_binary(cluster, model, inputs, outputs=None):
    """POST /v2/models/MODEL/infer with the inputs as binary tensor data.

    inputs: [(name, datatype, numpy array)], little-endian row-major bytes are
    appended after the JSON header. outputs: names to request (as JSON data);
    all of them when None. Returns (status, parsed JSON body).
    """
    header = {"inputs": [{"name": n, "datatype": dt, "shape": list(a.shape),
                          "parameters": {"binary_data_size": a.nbytes}} for n, dt, a in inputs]}
    if outputs:
        header["outputs"] = [{"name": o} for o in outputs]
    head = json.dumps(header).encode()
    body = head + b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for _, _, a in inputs)
    return cluster.http("POST", "/v2/models/%s/infer" % model, body,
                        headers={"Inference-Header-Content-Length": str(len(head)),
                                 "Content-Type": "application/octet-stream"})


def take_replica_arg(args):
    """Splits `--replica PATH` / `--replica=PATH` out of a test's arguments.

    Returns (absolute path or None, the other arguments). The path is made
    absolute because the tests run tools from other directories.
    """
    replica, rest = None, []
    it = iter(args)
    for a in it:
        if a == "--replica":
            replica = next(it, None)
        elif a.startswith("--replica="):
            replica = a.split("=", 1)[1]
        else:
            rest.append(a)
    return (os.path.abspath(replica) if replica else None), rest

