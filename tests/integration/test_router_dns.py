"""The router's DNS discovery (--replica NAME=dns://HOST:PORT) on loopback, with the
router's own /etc/hosts (a file of this test bind-mounted over it in a mount namespace of
its own, which glibc's resolver reads at every lookup), so names change under the test's
control without a DNS server:

- a name with an A and an AAAA record is two replicas, tcp://127.0.0.1:P and
  tcp://[::1]:P, both in the table with the watch as their source, both taking traffic;
- a name that stops resolving keeps the last good set (the table's generation does not
  move) and is logged once, not at every refresh; resolving again is logged once too;
- an address that the control endpoint added is left to it: DNS neither takes it over,
  drains it nor removes it, while DNS's own address that leaves is drained, then removed.

Skipped (77) where a mount namespace cannot be made (not root, no unshare).

Usage: test_router_dns.py BUILD_DIR REPO_ROOT
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, Proc, digits_request, wait_until  # noqa: E402
from test_protocol_util import make_repo  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
NAME = "svc.corral.test"
REFRESH_MS = 200


def can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to give the router an /etc/hosts of its own"
    res = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /dev/null /etc/hostname"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        return "cannot bind-mount in a mount namespace: %s" % res.stdout.strip()
    return None


def free_port_both():
    """A port free on 127.0.0.1 and on ::1 at once."""
    for _ in range(50):
        s6 = socket.socket(socket.AF_INET6)
        s6.bind(("::1", 0))
        port = s6.getsockname()[1]
        s4 = socket.socket()
        try:
            s4.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s4.close()
            s6.close()
    raise AssertionError("no port free on both 127.0.0.1 and ::1")


class RouterDNS(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-dns-")
        make_repo(self.tmp.name, ROOT)
        self.plain = digits_request(ROOT)
        self.hosts = os.path.join(self.tmp.name, "hosts")
        self.c = Cluster(BUILD, self.tmp.name)
        self.port = free_port_both()
        self.v4 = "tcp://127.0.0.1:%d" % self.port
        self.v6 = "tcp://[::1]:%d" % self.port
        self.source = "digits=dns://%s:%d" % (NAME, self.port)

    def tearDown(self):
        self.c.close()
        self.tmp.cleanup()

    def names(self, *addrs):
        # In place (same inode): the bind mount shows the file, not the path.
        with open(self.hosts, "w") as f:
            f.write("".join("%s %s\n" % (a, NAME) for a in addrs) or "# none\n")

    def replica(self, url):
        argv = [os.path.join(BUILD, "replica", "corral-replica"), "--model-repo", self.tmp.name,
                "--model", "digits", "--listen", url]
        self.c.replicas.append(("digits", Proc(argv, r" on (tcp://\S+)")))

    def router(self):
        router = os.path.join(BUILD, "router", "corral-router")
        argv = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
                self.hosts, router, "--listen", "127.0.0.1:0", "--rpc-listen", "off",
                "--control-listen", "127.0.0.1:0", "--threads", "2",
                "--replica", "digits=dns://%s:%d" % (NAME, self.port),
                "--dns-refresh-ms", str(REFRESH_MS), "--health-interval-ms", "100"]
        self.c.router_proc = Proc(argv, r"corral-router listening on http://127\.0\.0\.1:(\d+)")
        self.c.port = int(self.c.router_proc.match.group(1))
        m = wait_until("the control port", lambda: re.search(
            r"control listening on http://127\.0\.0\.1:(\d+)", self.c.router_proc.output()))
        self.c.control_port = int(m.group(1))

    def table(self):
        st, r = self.c.control("GET", "/v1/replicas")
        self.assertEqual(st, 200, r)
        return r

    def entries(self):
        return {e["url"]: e for e in self.table()["replicas"]}

    def sent_to(self):
        """{replica URL: requests the router sent it}, from the router's metrics."""
        st, data, _ = self.c.http("GET", "/metrics", raw=True)
        out = {}
        for line in data.decode().splitlines():
            m = re.match(r'corral_router_replica_requests_total\{model="digits",replica="([^"]+)"\}'
                         r' (\S+)', line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
        return out

    def infer(self, n):
        for _ in range(n):
            st, r = self.c.http("POST", "/v2/models/digits/infer", self.plain)
            self.assertEqual(st, 200, r)

    def test_a_and_aaaa_records_are_replicas(self):
        self.replica(self.v4)
        self.replica(self.v6)
        self.names("127.0.0.1", "::1")
        self.router()
        self.c.wait_ready()
        got = self.entries()
        self.assertEqual(sorted(got), sorted([self.v4, self.v6]))
        for e in got.values():
            self.assertEqual((e["source"], e["state"], e["model"]), (self.source, "active",
                                                                     "digits"))
        wait_until("both ready", lambda: all(
            r["state"] == "ready"
            for r in self.c.http("GET", "/v2/corral/replicas")[1]["replicas"]))
        self.infer(60)
        sent = self.sent_to()
        self.assertGreater(sent.get(self.v4, 0), 0, sent)
        self.assertGreater(sent.get(self.v6, 0), 0, sent)

    def test_failure_keeps_the_last_good_set(self):
        self.replica(self.v4)
        self.names("127.0.0.1")
        self.router()
        self.c.wait_ready()
        g = self.table()["generation"]
        self.names()
        wait_until("the failure logged", lambda: "cannot resolve" in self.c.router_proc.output())
        time.sleep(10 * REFRESH_MS / 1000.0)  # ten refreshes that fail the same way
        out = self.c.router_proc.output()
        self.assertEqual(out.count("cannot resolve %s" % NAME), 1, out[-3000:])
        self.assertIn("keeping the 1 address it had", out)
        self.assertEqual(self.table()["generation"], g)
        self.assertEqual(list(self.entries()), [self.v4])
        self.infer(5)
        self.names("127.0.0.1")
        wait_until("resolving again logged", lambda: "%s resolves again" % NAME
                   in self.c.router_proc.output())
        time.sleep(5 * REFRESH_MS / 1000.0)
        out = self.c.router_proc.output()
        self.assertEqual(out.count("resolves again"), 1, out[-3000:])
        self.assertEqual(self.table()["generation"], g)

    def test_control_entries_are_left_alone(self):
        self.replica(self.v4)
        self.replica(self.v6)
        self.names("127.0.0.1")
        self.router()
        self.c.wait_ready()
        st, r = self.c.control("POST", "/v1/replicas", {"model": "digits", "url": self.v6})
        self.assertEqual(st, 200, r)
        self.names("127.0.0.1", "::1")
        wait_until("the address left to the control endpoint, logged",
                   lambda: "left to them" in self.c.router_proc.output())
        self.assertNotIn("source", self.entries()[self.v6])
        # DNS's own address leaves: drained, then removed; the control's stays active.
        self.names("::1")
        wait_until("v4 draining", lambda: self.entries().get(self.v4, {}).get("state")
                   == "draining")
        wait_until("v4 removed", lambda: self.v4 not in self.entries())
        self.assertEqual(self.entries()[self.v6]["state"], "active")
        self.names()
        time.sleep(3 * REFRESH_MS / 1000.0)
        self.assertEqual(list(self.entries()), [self.v6])
        self.infer(5)
        self.names("127.0.0.1")
        wait_until("v4 back", lambda: self.v4 in self.entries())
        self.assertEqual(self.entries()[self.v6]["state"], "active")


if __name__ == "__main__":
    why = can_unshare()
    if why:
        testrun.skip_all(why)
    testrun.main(argv=sys.argv[3:])
