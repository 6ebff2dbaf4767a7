"""Several hosts in network namespaces: the router in one, replicas in others, found
through DNS (--replica digits=dns://NAME:9101) served by dnsmasq from a hosts file it
re-reads on SIGHUP, under a steady load from this test, every request counted.

    namespace R (router host)            namespaces A, B, C (replica hosts)
      br0 198.18.0.1/24 --- veth --------- 198.18.0.11  corral-replica :9101
      corral-router :8000                  198.18.0.12  corral-replica :9101
      dnsmasq 127.0.0.1:53                 198.18.0.13  corral-replica :9101 (added later)
      this test's load (it enters R)

Addresses come from 198.18.0.0/24 (RFC 2544, for network tests) and exist only in the
namespaces the test makes; no namespace has a route beyond its /24, and every one is
deleted at the end, also when the test fails (and stale ones of a killed run at the
start). The router reads its own resolv.conf (bind-mounted in its mount namespace).

One test, in steps, on one load:
1. requests reach both hosts (each replica's own /metrics counts them);
2. cutting host A's link (ip link set down) fails no request (the router's retry
   takes the ones A held) and routes around within 2 s; the figures are printed;
3. bringing the link up brings A back into rotation;
4. adding host C's address to DNS puts C into rotation within a refresh;
5. removing B's address from DNS drains B (no new requests, then out of the table)
   with no failed request, after which B can stop.

Skipped (77) only where namespaces cannot be created (not root, no ip netns).

Usage: test_multihost_netns.py BUILD_DIR REPO_ROOT
"""
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Proc, digits_request, wait_until  # noqa: E402
from test_protocol_util import make_repo  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
PREFIX = "corral-mh-"
TAG = "%s%d" % (PREFIX, os.getpid())
NAME = "digits.corral.test"
ROUTER_IP = "198.18.0.1"
HOSTS = {"a": "198.18.0.11", "b": "198.18.0.12", "c": "198.18.0.13"}
REFRESH_MS = 500
HEALTH_MS = 200
CLONE_NEWNET = 0x40000000


def ip(*args, check=True):
    res = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=30)
    if check and res.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), res.stdout.strip()))
    return res


def ns(host):
    return "%s-%s" % (TAG, host)


def delete_namespaces(names):
    """Ends what runs in each namespace (only this test's processes run there), deletes it."""
    for name in names:
        pids = ip("netns", "pids", name, check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        ip("netns", "del", name, check=False)


def stale_namespaces():
    """Namespaces of earlier runs of this test whose process is gone (killed by a timeout)."""
    out = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(re.escape(PREFIX) + r"(\d+)-", name)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            out.append(name)
    return out


def cannot_make_namespaces():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "iproute2's ip is not installed"
    probe = "%s-probe" % TAG
    res = ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return "cannot create a network namespace: %s" % res.stdout.strip()
    ip("netns", "del", probe, check=False)
    return None


class Netns:
    """Enters a network namespace on this thread (threads started later share it)."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)

    def enter(self, name):
        fd = os.open("/run/netns/%s" % name, os.O_RDONLY)
        try:
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns %s" % name)
        finally:
            os.close(fd)

    def leave(self):
        self.libc.setns(self.home, CLONE_NEWNET)
        os.close(self.home)


def request(host, port, method, path, body=None, timeout=30):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data
    finally:
        conn.close()


def replica_requests(host):
    """corral_replica_requests_total of host's replica (its --health-listen), None when
    unreachable."""
    try:
        st, data = request(HOSTS[host], 8080, "GET", "/metrics", timeout=1)
    except OSError:
        return None
    m = re.search(r'^corral_replica_requests_total\{[^}]*\} (\S+)$', data.decode(), re.M)
    return float(m.group(1)) if st == 200 and m else None


class Load:
    """Closed-loop HTTP clients on keep-alive connections until stop(); every request is
    recorded (start, end, ok, detail)."""

    def __init__(self, body, clients=4):
        self.body = json.dumps(body)
        self.mu = threading.Lock()
        self.started = 0
        self.done = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def one(self, conn):
        conn.request("POST", "/v2/models/digits/infer", body=self.body)
        resp = conn.getresponse()
        data = resp.read()
        return resp, data

    def run(self):
        conn = None
        while not self._stop.is_set():
            with self.mu:
                self.started += 1
            t0 = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(ROUTER_IP, 8000, timeout=30)
                try:
                    resp, data = self.one(conn)
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    # The router closed an idle keep-alive connection: sent again once.
                    conn.close()
                    conn = http.client.HTTPConnection(ROUTER_IP, 8000, timeout=30)
                    resp, data = self.one(conn)
                ok, detail = resp.status == 200, (resp.status, data[:200])
            except Exception as ex:  # noqa: BLE001 - counted, never lost
                ok, detail = False, repr(ex)
                if conn:
                    conn.close()
                conn = None
            with self.mu:
                self.done.append((t0, time.time(), ok, detail))
        if conn:
            conn.close()

    def count(self):
        with self.mu:
            return len(self.done)

    def more(self, n, timeout=30):
        target = self.count() + n
        wait_until("%d more answers" % n, lambda: self.count() >= target, timeout=timeout)

    def bad(self, since=0.0):
        with self.mu:
            return [d for d in self.done if not d[2] and d[0] >= since]

    def stop(self):
        self._stop.set()
        for t in self.threads:
            t.join(60)
        return self


class MultiHost(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-mh-")
        self.names = []
        self.procs = []
        self.load = None
        self.netns = None
        delete_namespaces(stale_namespaces())
        make_repo(self.tmp.name, ROOT)
        self.plain = digits_request(ROOT)
        self.hosts_file = os.path.join(self.tmp.name, "hosts")
        self.resolv = os.path.join(self.tmp.name, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")

    def tearDown(self):
        if self.load:
            self.load.stop()
        if self.netns:
            self.netns.leave()
        for p in reversed(self.procs):
            p.kill()
        delete_namespaces(self.names)
        left = [n for n in self.names if ip("netns", "pids", n, check=False).returncode == 0]
        self.tmp.cleanup()
        if left:
            raise AssertionError("namespaces left behind: %s" % left)

    # ---- the hosts ---------------------------------------------------------------------

    def network(self):
        r = ns("r")
        for host in ["r"] + list(HOSTS):
            ip("netns", "add", ns(host))
            self.names.append(ns(host))
            ip("-n", ns(host), "link", "set", "lo", "up")
        ip("-n", r, "link", "add", "br0", "type", "bridge")
        ip("-n", r, "addr", "add", ROUTER_IP + "/24", "dev", "br0")
        ip("-n", r, "link", "set", "br0", "up")
        for host, addr in HOSTS.items():
            # eth0 in the replica's host, its peer a port of R's bridge.
            ip("link", "add", "eth0", "netns", ns(host), "type", "veth", "peer", "name",
               "to-" + host, "netns", r)
            ip("-n", r, "link", "set", "to-" + host, "master", "br0")
            ip("-n", r, "link", "set", "to-" + host, "up")
            ip("-n", ns(host), "addr", "add", addr + "/24", "dev", "eth0")
            ip("-n", ns(host), "link", "set", "eth0", "up")
        for host in ["r"] + list(HOSTS):
            routes = ip("-n", ns(host), "route", "show").stdout
            self.assertNotIn("default", routes)

    def dns(self, *hosts):
        """Writes the service's addresses and has dnsmasq read them (waits for it)."""
        with open(self.hosts_file, "w") as f:
            f.write("".join("%s %s\n" % (HOSTS[h], NAME) for h in hosts))
        if not hasattr(self, "dnsmasq"):
            return
        reads = self.dnsmasq.output().count(" names")
        self.dnsmasq.p.send_signal(signal.SIGHUP)
        wait_until("dnsmasq re-reading its hosts file",
                   lambda: self.dnsmasq.output().count(" names") > reads, timeout=10)

    def start(self, argv, ready, host):
        p = Proc(["ip", "netns", "exec", ns(host)] + argv, ready)
        self.procs.append(p)
        return p

    def replica(self, host):
        addr = HOSTS[host]
        return self.start([os.path.join(BUILD, "replica", "corral-replica"), "--model-repo",
                           self.tmp.name, "--model", "digits", "--listen",
                           "tcp://%s:9101" % addr, "--health-listen", "%s:8080" % addr],
                          r" on (tcp://%s:9101)" % re.escape(addr), host)

    def table(self):
        st, data = request("127.0.0.1", 8003, "GET", "/v1/replicas")
        self.assertEqual(st, 200, data)
        return {e["url"]: e for e in json.loads(data)["replicas"]}

    # ---- the test ----------------------------------------------------------------------

    def test_hosts_in_namespaces(self):
        self.network()
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.assertTrue(os.path.exists(dnsmasq), "dnsmasq is not installed (deploy/setup.sh "
                        "installs it)")
        self.dns("a", "b")
        self.dnsmasq = self.start([dnsmasq, "--no-daemon", "--log-facility=-",
                                   "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                                   "--addn-hosts=" + self.hosts_file, "--listen-address=127.0.0.1",
                                   "--bind-interfaces", "--port=53"], r" - \d+ names", "r")
        for h in ("a", "b"):
            self.replica(h)
        router = os.path.join(BUILD, "router", "corral-router")
        self.router = self.start(
            ["sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.resolv, router,
             "--listen", "%s:8000" % ROUTER_IP, "--control-listen", "127.0.0.1:8003",
             "--rpc-listen", "off", "--threads", "2",
             "--replica", "digits=dns://%s:9101" % NAME, "--dns-refresh-ms", str(REFRESH_MS),
             "--health-interval-ms", str(HEALTH_MS)],
            r"corral-router listening on http://198\.18\.0\.1:8000", "r")
        wait_until("the control endpoint", lambda: "control listening on "
                   "http://127.0.0.1:8003" in self.router.output())
        # From here on this thread, and the load's threads, live in the router's host.
        self.netns = Netns()
        self.netns.enter(ns("r"))
        url = {h: "tcp://%s:9101" % a for h, a in HOSTS.items()}
        self.assertEqual(sorted(self.table()), sorted([url["a"], url["b"]]))
        wait_until("the router ready", lambda: request(ROUTER_IP, 8000, "GET",
                                                    "/v2/health/ready")[0] == 200)

        # 1. Under load, requests reach both hosts.
        self.load = Load(self.plain)
        base = {h: replica_requests(h) for h in ("a", "b")}
        wait_until("requests on both hosts", lambda: all(
            (replica_requests(h) or 0) > base[h] + 20 for h in ("a", "b")))

        # 2. Host A's link is cut.
        t_cut = time.time()
        ip("-n", ns("a"), "link", "set", "eth0", "down")
        b_at_cut = replica_requests("b")
        self.load.more(300)
        wait_until("3 s past the cut", lambda: time.time() > t_cut + 3)
        failed_cut = self.load.bad(since=t_cut - 1)
        done = self.load.done[:]
        slow = [d for d in done if d[1] > t_cut and d[0] < t_cut + 2.5 and d[1] - d[0] > 0.1]
        route_around = max([d[1] for d in slow], default=t_cut) - t_cut
        st, data = request(ROUTER_IP, 8000, "GET", "/metrics")
        retries = sum(float(v) for v in re.findall(
            r'^corral_router_retries_total\{model="digits"\} (\S+)$', data.decode(), re.M))
        self.assertIsNone(replica_requests("a"))
        self.assertGreater(replica_requests("b"), b_at_cut + 100)
        print("link cut: %d failed requests, routed around in %.2f s (%d requests waited "
              "past 100 ms, the longest %.2f s; %d retried by the router)" %
              (len(failed_cut), route_around, len(slow),
               max([d[1] - d[0] for d in slow], default=0.0), retries), flush=True)
        self.assertEqual(failed_cut, [])
        self.assertLess(route_around, 2.0)

        # 3. The link comes back, and so does A.
        t_up = time.time()
        ip("-n", ns("a"), "link", "set", "eth0", "up")
        a_up = wait_until("A reachable", lambda: replica_requests("a"), timeout=60)
        wait_until("A taking requests again", lambda: replica_requests("a") > a_up + 10,
                   timeout=60)
        print("link restored: A takes requests again after %.2f s" % (time.time() - t_up),
              flush=True)

        # 4. A third replica joins through DNS.
        self.replica("c")
        self.dns("a", "b", "c")
        t_add = time.time()
        wait_until("C in the table", lambda: url["c"] in self.table(), timeout=10)
        t_table = time.time()
        wait_until("C taking requests", lambda: (replica_requests("c") or 0) > 0, timeout=10)
        t_serve = time.time()
        print("DNS add: C in the table after %.2f s, taking requests after %.2f s "
              "(refresh %d ms, health interval %d ms)" %
              (t_table - t_add, t_serve - t_add, REFRESH_MS, HEALTH_MS), flush=True)
        self.assertEqual(self.table()[url["c"]]["source"], "digits=dns://%s:9101" % NAME)
        self.assertLess(t_table - t_add, REFRESH_MS / 1000.0 + 1.0)
        self.assertLess(t_serve - t_add, (REFRESH_MS + 2 * HEALTH_MS) / 1000.0 + 1.0)

        # 5. B leaves DNS: drained, then removed, with no failed request.
        t_rm = time.time()
        self.dns("a", "c")
        wait_until("B draining", lambda: self.table().get(url["b"], {}).get("state")
                   == "draining", timeout=10)
        wait_until("B out of the table", lambda: url["b"] not in self.table(), timeout=10)
        b_after = replica_requests("b")
        self.load.more(200)
        self.assertEqual(replica_requests("b"), b_after)
        print("DNS remove: B drained and out of the table after %.2f s" % (time.time() - t_rm),
              flush=True)
        victim = [p for p in self.procs if "tcp://%s:9101" % HOSTS["b"] in " ".join(p.argv)][0]
        victim.p.send_signal(signal.SIGTERM)
        self.assertEqual(victim.p.wait(30), 0, victim.output()[-2000:])
        self.load.more(100)
        self.load.stop()
        bad = self.load.bad()
        total = len(self.load.done)
        print("%d requests under load, %d failed" % (total, len(bad)), flush=True)
        self.assertEqual(bad, [])
        self.assertEqual(total, self.load.started)


if __name__ == "__main__":
    why = cannot_make_namespaces()
    if why:
        testrun.skip_all(why)
    testrun.main(argv=sys.argv[3:])
