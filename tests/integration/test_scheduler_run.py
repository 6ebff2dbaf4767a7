"""corral-scheduler --config: the supervisor of a single-machine cluster, run as a
real process over real corral-router and corral-replica children, under load from
this test (every request started is counted back):

- SIGKILL one of two replicas: no request fails (the router retries on the other),
  the scheduler removes it from the router's table, starts a replacement, which
  takes traffic once ready; two replicas run again. Then SIGTERM the scheduler:
  every replica drained and stopped, then the router; exit 0, no child left.
- SIGSTOP one of two replicas (alive, but it answers nothing, its health included):
  no request fails (the router's own probes take it out of rotation and retry what
  it held); after health.failure_threshold missed health checks the scheduler takes
  it out of the router's table, SIGKILLs it and starts a replacement, which takes
  traffic; the stopped process is gone.
- For the SIGKILL and the SIGSTOP, the time to leaving rotation and to a ready
  replacement is printed (measured, not asserted: the suite runs on shared cores).
- A replica whose model cannot load crash-loops: marked failed after 5 exits in a
  row with its last log lines as the reason, while the healthy model keeps
  serving with no failed request (the admin API says "failed" with the reason,
  and `corralctl status --admin` exits 3).
- The admin API (admin.listen): GET /v1/status lists the ready replicas with the
  pids of the scheduler's real children (from /proc) and the URLs the router's
  table holds; after a SIGKILL the replica's restarts is 1 (the test killed it
  once) and 2 are ready again; `corralctl status --admin` prints the table and
  exits 0; /metrics' desired/ready/restarts equal the status and what the test
  did; with admin.token_file a missing or wrong token is 401 on every path, the
  right one 200, corralctl --token-file works, and the token is in no log.
- Scaling under load (issue 12 item 6): 2 -> 3 -> 1 with `corralctl apply` and
  1 -> 2 with SIGHUP after rewriting the file; no request fails, the scheduler's
  corral-replica children, the admin status and the router's table hold the desired
  count at each step; a scaled-down replica is out of the router's table
  (acknowledged) before its SIGTERM, and the one kept is one that was serving; a dry
  run changes nothing; the same file twice says "no changes"; a malformed edit and a
  change that needs a restart are refused with their paths, the cluster untouched
  (same pids).
- Re-adoption (issue 12 item 4) under load: SIGKILL the scheduler: the router and
  replicas it started keep running and serving (no request fails); a scheduler
  started again with the same config and state dir reads its state file and adopts
  them: the same router and replica processes of this cluster (found on the machine
  by their log files in this test's state dir), none started, none duplicated; its
  admin status shows them ready with those pids; an adopted replica SIGKILLed is
  replaced (no failed request); SIGTERM then drains and stops every one of them,
  though they are not its children (no process of the cluster left).
- Without oversubscribe, a scale-up beyond this process's cores is refused (nothing
  changes); one that fits gives the new replicas the cores the running one leaves
  (its own unchanged, every replica on a core of its own).

Usage: test_scheduler_run.py BUILD_DIR REPO_ROOT
       test_scheduler_run.py BUILD_DIR REPO_ROOT --promtool PATH
The second runs only `promtool check metrics` on the scheduler's /metrics (a ctest
entry of its own, skipped where promtool is missing).
"""
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
from cluster import Cluster, wait_until  # noqa: E402
from test_control_plane import Load  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
PROMTOOL_ONLY = len(sys.argv) > 3 and sys.argv[3] == "--promtool"
PROMTOOL = sys.argv[4] if PROMTOOL_ONLY and len(sys.argv) > 4 else ""
SCHED = os.path.join(BUILD, "scheduler", "corral-scheduler")
CORRALCTL = os.path.join(BUILD, "client", "corralctl")
CRASH_LIMIT = 5  # SCHED_CRASH_LIMIT in scheduler/supervisor.h
HEALTH_THRESHOLD = 3  # health.failure_threshold's default (docs/operations.md)


def children(pid):
    """{child pid: comm} of the processes whose parent is `pid`, from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out[int(d)] = comm
    return out


def cluster_procs(state_dir):
    """{pid: comm} of the corral-router and corral-replica processes on this machine whose
    output goes to a log file in state_dir: this test's cluster, whoever their parent."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/comm" % d) as f:
                comm = f.read().strip()
            if comm not in ("corral-router", "corral-replica") or not alive(int(d)):
                continue
            log = os.readlink("/proc/%s/fd/1" % d)
        except OSError:
            continue
        if log.startswith(state_dir + os.sep):
            out[int(d)] = comm
    return out


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


class Scheduler:
    """corral-scheduler --config as a child of the test; its output kept line by line."""

    def __init__(self, config, state, extra=()):
        self.p = subprocess.Popen([SCHED, "--config", config, "--state-dir", state] + list(extra),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  bufsize=1)
        self.lines = []
        self.mu = threading.Lock()
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        for line in self.p.stdout:
            with self.mu:
                self.lines.append(line)

    def output(self):
        with self.mu:
            return "".join(self.lines)

    def wait_for(self, what, rx, timeout=60):
        """The first match of rx in the output, waited for."""
        def find():
            if self.p.poll() is not None:
                time.sleep(0.2)
                raise AssertionError("the scheduler exited (%s) waiting for %s:\n%s" %
                                     (self.p.returncode, what, self.output()[-4000:]))
            return re.search(rx, self.output())
        try:
            return wait_until(what, find, timeout)
        except AssertionError as ex:
            raise AssertionError("%s\n%s" % (ex, self.output()[-4000:]))

    def kill_all(self):
        """Teardown: the scheduler and whatever it left, so a failed test leaks nothing."""
        if self.p.poll() is None:
            kids = children(self.p.pid)
            self.p.kill()
            self.p.wait()
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


class RotationClock:
    """From the moment start() is called, polls the router's replica table and notes
    when `url` leaves rotation (its state not "ready", or gone from the table) and when
    another replica of the model, not in `before`, is ready."""

    def __init__(self, c, model, url, before):
        self.c, self.model, self.url, self.before = c, model, url, set(before)
        self.left = self.replaced = None
        self.errors = []
        self._stop = threading.Event()

    def start(self):
        self.t0 = time.monotonic()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        cl = Cluster(self.c.build, self.c.repo)
        cl.port = self.c.port
        while not self._stop.is_set() and self.replaced is None:
            try:
                st, r = cl.http("GET", "/v2/corral/replicas")
                now = time.monotonic() - self.t0
                if st == 200:
                    states = {x["url"]: x["state"] for x in r["replicas"]
                              if x["model"] == self.model}
                    if self.left is None and states.get(self.url) != "ready":
                        self.left = now
                    if any(u not in self.before and s == "ready" for u, s in states.items()):
                        self.replaced = now
            except Exception as ex:  # noqa: BLE001 - kept for the report
                self.errors.append(repr(ex))
            time.sleep(0.01)
        cl.close()

    def stop(self):
        self._stop.set()
        self.t.join(10)

    def report(self, what):
        fmt = lambda v: "not seen" if v is None else "%.0f ms" % (v * 1000)  # noqa: E731
        print("%s: out of rotation after %s, a replacement ready after %s%s" %
              (what, fmt(self.left), fmt(self.replaced),
               " (poll errors: %s)" % self.errors[:3] if self.errors else ""))


class SchedulerHarness:
    """A scheduler-run cluster for a test case: start() it, call its admin API, read its
    status and the router's table; torn down after each test. Mixed into the test cases
    of this file and of the tests built on it (the operator page, the admin API)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-sched-run-")
        with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
            x = json.load(f)["inputs"][0]
        self.body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]}
        self.sched = None
        self.load = None
        self.c = None

    def tearDown(self):
        if self.load:
            self.load.stop()
        if self.c:
            self.c.close()
        if self.sched:
            self.sched.kill_all()
        # Children adopted by a second scheduler are not its children.
        for pid in cluster_procs(getattr(self, "state", "/nonexistent")):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.tmp.cleanup()

    def start(self, repo, models, token_file=None, oversubscribe=True, extra=()):
        admin = {"listen": "127.0.0.1:0"}
        if token_file:
            admin["token_file"] = token_file
        cfg = {"model_repository": repo,
               "router": {"listen": "127.0.0.1:0", "rpc_listen": "off",
                          "control_listen": "127.0.0.1:0"},
               "admin": admin,
               # two replicas on whatever cores this machine lends
               "oversubscribe": oversubscribe,
               "models": models}
        path = os.path.join(self.tmp.name, "cluster.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.cfg, self.cfg_path = cfg, path
        self.state = os.path.join(self.tmp.name, "state")
        self.sched = Scheduler(path, self.state, extra)
        m = self.sched.wait_for("the router ready", r"router: ready \(pid \d+\): "
                                r"http://127\.0\.0\.1:(\d+)")
        self.c = Cluster(BUILD, repo)
        self.c.port = int(m.group(1))
        a = self.sched.wait_for("the admin API listening",
                                r"corral-scheduler admin listening on http://127\.0\.0\.1:(\d+)")
        self.admin_port = int(a.group(1))
        return self.c

    def admin(self, path, token=None, method="GET", auth=None):
        """(status, body text) of one admin API call."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=30)
        headers = {}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if auth is not None:
            headers["Authorization"] = auth
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        body = r.read().decode()
        conn.close()
        return r.status, body

    def status(self, token=None):
        st, body = self.admin("/v1/status", token)
        self.assertEqual(st, 200, body)
        return json.loads(body)

    def corralctl_status(self, *extra):
        return subprocess.run([CORRALCTL, "status", "--admin", "127.0.0.1:%d" % self.admin_port]
                              + list(extra), capture_output=True, text=True, timeout=60)

    @staticmethod
    def metric(text, name, **labels):
        want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
        rx = r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % want) if want else "")
        m = re.findall(rx, text, re.M)
        if len(m) != 1:
            raise AssertionError("%s{%s}: %d samples in\n%s" % (name, want, len(m), text))
        return float(m[0])

    def ready_replicas(self, model):
        st, r = self.c.http("GET", "/v2/corral/replicas")
        if st != 200:
            return []
        return [x["url"] for x in r["replicas"] if x["model"] == model and x["state"] == "ready"]

    def replica_requests(self, url):
        st, data, _ = self.c.http("GET", "/metrics", raw=True)
        self.assertEqual(st, 200)
        m = re.search(r'^corral_router_replica_requests_total\{model="[^"]*",replica="%s"\} (\d+)$'
                      % re.escape(url), data.decode(), re.M)
        return int(m.group(1)) if m else 0

    def replica_children(self):
        return sorted(p for p, comm in children(self.sched.p.pid).items()
                      if comm == "corral-replica")


class SchedulerRun(SchedulerHarness, unittest.TestCase):
    def test_sigkill_one_replica_then_stop(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        wait_until("2 ready replicas", lambda: len(self.ready_replicas("digits")) == 2, 60)
        self.assertEqual(self.c.http("GET", "/v2/health/ready")[0], 200)
        self.assertEqual(len(self.replica_children()), 2)
        out = self.sched.output()
        victim = re.search(r"digits#0: ready \(pid (\d+)\) at (tcp://\S+),", out)
        self.assertIsNotNone(victim, out)
        victim_pid, victim_url = int(victim.group(1)), victim.group(2)
        self.assertIn(victim_pid, self.replica_children())

        self.load = Load(self.c, self.body, clients=3)
        self.load.more(100)
        clock = RotationClock(self.c, "digits", victim_url, self.ready_replicas("digits"))
        clock.start()
        os.kill(victim_pid, signal.SIGKILL)
        # The scheduler sees the exit, takes the URL out of the router's table
        # (acknowledged), then starts a replacement and adds it once it is ready.
        m = self.sched.wait_for("the replacement added to the router's table",
                                r"digits#0: added (tcp://\S+) to the router's table[^\n]*\n"
                                r"(?:.*\n)*?.*digits#0: added (tcp://\S+) to the router's table")
        new_url = m.group(2)
        self.assertNotEqual(new_url, victim_url)
        out = self.sched.output()
        removed = out.find("digits#0: removed %s from the router's table" % victim_url)
        started_again = out.find("digits#0: started", out.find("digits#0: exited"))
        self.assertGreaterEqual(removed, 0, out)
        self.assertLess(removed, started_again, "removed after its successor started:\n" + out)
        wait_until("the replacement taking traffic", lambda: self.replica_requests(new_url) > 0)
        wait_until("the clock seeing the replacement ready", lambda: clock.replaced is not None)
        clock.stop()
        clock.report("SIGKILL with the default health settings")
        self.load.more(100)
        kids = self.replica_children()
        self.assertEqual(len(kids), 2, kids)
        self.assertNotIn(victim_pid, kids)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        answered = self.load.answered
        self.load = None

        everyone = list(children(self.sched.p.pid))
        self.assertEqual(len(everyone), 3, everyone)  # the router and two replicas
        self.sched.p.send_signal(signal.SIGTERM)
        rc = self.sched.p.wait(90)
        self.sched.t.join(10)
        out = self.sched.output()
        self.assertEqual(rc, 0, out[-4000:])
        self.assertEqual([p for p in everyone if alive(p)], [])
        # Each replica drained in the table before its SIGTERM, the router last.
        for url in self.ready_urls_at_stop(out):
            drained = out.find("drained %s in the router's table" % url)
            self.assertGreaterEqual(drained, 0, out[-3000:])
        for i in (0, 1):
            self.assertLess(out.find("digits#%d: drained" % i), out.find("digits#%d: SIGTERM" % i))
            self.assertLess(out.find("digits#%d: exited (pid" % i, out.find("stopping the cluster")),
                            out.find("router: SIGTERM sent"))
        self.assertRegex(out, r"router: exited \(pid \d+, exit status 0\)")
        print("%d requests answered under load across a SIGKILLed replica, none failed" % answered)

    def test_sigstop_one_replica_replaced_after_health_checks(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        wait_until("2 ready replicas", lambda: len(self.ready_replicas("digits")) == 2, 60)
        before = self.ready_replicas("digits")
        out = self.sched.output()
        victim = re.search(r"digits#0: ready \(pid (\d+)\) at (tcp://\S+),", out)
        self.assertIsNotNone(victim, out)
        victim_pid, victim_url = int(victim.group(1)), victim.group(2)
        self.assertIn(victim_pid, self.replica_children())
        self.assertIn(victim_url, before)

        self.load = Load(self.c, self.body, clients=3)
        self.load.more(100)
        clock = RotationClock(self.c, "digits", victim_url, before)
        clock.start()
        os.kill(victim_pid, signal.SIGSTOP)
        # Alive but silent: only health checks can tell. The scheduler counts its
        # misses, takes it out of the table (acknowledged), SIGKILLs it, and starts a
        # replacement on a new URL that is added once ready. Nominal: about 2 s to the
        # SIGKILL with the defaults (3 misses of 500 ms); the wait allows far more.
        m = self.sched.wait_for("the stopped replica's replacement added to the table",
                                r"digits#0: unhealthy \(pid %d at %s\)[^\n]*\n(?:.*\n)*?"
                                r".*digits#0: added (tcp://\S+) to the router's table"
                                % (victim_pid, re.escape(victim_url)), timeout=90)
        new_url = m.group(1)
        self.assertNotEqual(new_url, victim_url)
        wait_until("the replacement taking traffic", lambda: self.replica_requests(new_url) > 0)
        wait_until("the clock seeing the replacement ready", lambda: clock.replaced is not None)
        clock.stop()
        clock.report("SIGSTOP with the default health settings")
        wait_until("the stopped process gone", lambda: not alive(victim_pid), 30)
        self.load.more(100)

        out = self.sched.output()
        # Exactly `threshold` misses in a row led to it, each a probe with no answer.
        misses = re.findall(r"digits#0: health check of %s failed \((\d+) of (\d+) in a row\)"
                            % re.escape(victim_url), out)
        self.assertEqual([int(a) for a, _ in misses], list(range(1, HEALTH_THRESHOLD + 1)), out)
        self.assertTrue(all(int(b) == HEALTH_THRESHOLD for _, b in misses), misses)
        # Out of the table (acknowledged) before the SIGKILL; the successor after both.
        unhealthy = out.find("digits#0: unhealthy (pid %d" % victim_pid)
        removed = out.find("digits#0: removed %s from the router's table" % victim_url, unhealthy)
        killed = out.find("digits#0: SIGKILL sent (pid %d)" % victim_pid, unhealthy)
        started = out.find("digits#0: started", unhealthy)
        self.assertTrue(0 <= unhealthy < removed < killed < started, out[-4000:])
        self.assertRegex(out, r"digits#0: exited \(pid %d, killed by signal 9 [^\n]*after %d "
                         r"failed health checks\)" % (victim_pid, HEALTH_THRESHOLD))
        # digits#1 was never touched.
        self.assertNotIn("digits#1: unhealthy", out)
        self.assertEqual(out.count("digits#1: started"), 1, out)
        kids = self.replica_children()
        self.assertEqual(len(kids), 2, kids)
        self.assertNotIn(victim_pid, kids)
        self.assertEqual(sorted(self.ready_replicas("digits")),
                         sorted([new_url] + [u for u in before if u != victim_url]))
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        print("%d requests answered under load across a SIGSTOPped replica, none failed"
              % self.load.answered)
        self.load = None
        # A clean stop after it (under the sanitizers: no leak from the probes).
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])

    @staticmethod
    def ready_urls_at_stop(out):
        last = {}
        for m in re.finditer(r"(digits#\d): added (tcp://\S+) to the router's table", out):
            last[m.group(1)] = m.group(2)
        return list(last.values())

    def ready_in_status(self, model):
        st = self.status()
        return [r for r in st["replicas"] if r["model"] == model and r["state"] == "ready"]

    def test_admin_status_after_sigkill_corralctl_metrics(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        wait_until("2 ready replicas in the admin status",
                   lambda: len(self.ready_in_status("digits")) == 2, 60)
        wait_until("2 ready replicas in the router",
                   lambda: len(self.ready_replicas("digits")) == 2, 60)
        st = self.status()
        reps = st["replicas"]
        self.assertEqual(len(reps), 2, st)
        # The pids are the scheduler's real children (from /proc), the URLs the
        # router's table.
        self.assertEqual(sorted(r["pid"] for r in reps), self.replica_children())
        self.assertTrue(all(alive(r["pid"]) for r in reps))
        self.assertEqual(sorted(r["url"] for r in reps), sorted(self.ready_replicas("digits")))
        for r in reps:
            self.assertEqual((r["model"], r["version"], r["device"], r["restarts"]),
                             ("digits", 1, "cpu", 0), r)
            self.assertGreaterEqual(r["uptime_s"], 0)
            self.assertIsNone(r["last_error"], r)
        # traffic (the router's rate and p99) and rollout are pinned by their own tests.
        self.assertEqual([{k: v for k, v in m.items() if k not in ("traffic", "rollout")}
                          for m in st["models"]],
                         [{"name": "digits", "version": 1, "desired": 2, "ready": 2,
                           "failed": 0, "restarts": 0}])
        self.assertEqual(st["router"]["state"], "ready")
        self.assertIn(st["router"]["pid"], children(self.sched.p.pid))
        self.assertEqual(st["router"]["http"], "http://127.0.0.1:%d" % self.c.port)
        self.assertEqual(json.loads(self.admin("/v1/health")[1]),
                         {"live": True, "models_ready": True})

        p = self.corralctl_status()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        rows = [l.split() for l in p.stdout.splitlines() if l.startswith("digits ")]
        self.assertEqual(sorted(int(r[4]) for r in rows), self.replica_children(), p.stdout)
        self.assertTrue(all(r[1] == "1" and r[3] == "ready" and r[6] == "0" for r in rows), rows)
        self.assertEqual(sorted(r[7] for r in rows), sorted(self.ready_replicas("digits")))
        self.assertIn("model digits version 1: 2 of 2 desired replicas ready", p.stdout)

        # SIGKILL digits#0: once replaced, its restarts is 1 (the test killed it once),
        # digits#1's 0, and 2 are ready again on the new pid.
        victim = next(r for r in reps if r["name"] == "digits#0")
        other = next(r for r in reps if r["name"] == "digits#1")
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced():
            now = {r["name"]: r for r in self.status()["replicas"]}
            v = now["digits#0"]
            return (v["state"] == "ready" and v["pid"] != victim["pid"] and
                    now["digits#1"]["state"] == "ready") and now
        now = wait_until("digits#0 replaced and ready in the admin status", replaced, 60)
        self.assertEqual(now["digits#0"]["restarts"], 1, now)
        self.assertEqual(now["digits#1"]["restarts"], 0, now)
        self.assertEqual(now["digits#1"]["pid"], other["pid"])
        self.assertIn("killed by signal 9", now["digits#0"]["last_error"])
        self.assertEqual(sorted(r["pid"] for r in now.values()), self.replica_children())
        self.assertNotIn(victim["pid"], self.replica_children())
        st = self.status()
        self.assertEqual(st["models"][0]["ready"], 2, st)
        self.assertEqual(st["models"][0]["restarts"], 1, st)

        # /metrics says what the status says, and what the test did.
        code, text = self.admin("/metrics")
        self.assertEqual(code, 200, text)
        st = self.status()
        m = st["models"][0]
        self.assertEqual(self.metric(text, "corral_scheduler_replicas_desired", model="digits"),
                         m["desired"])
        self.assertEqual(self.metric(text, "corral_scheduler_replicas_ready", model="digits"),
                         m["ready"])
        self.assertEqual(self.metric(text, "corral_scheduler_replica_restarts_total",
                                     model="digits"), 1)
        self.assertEqual(self.metric(text, "corral_scheduler_replicas", state="ready"), 2)
        self.assertEqual(self.metric(text, "corral_scheduler_replicas", state="failed"), 0)
        self.assertEqual(self.metric(text, "corral_scheduler_router_restarts_total"), 0)

        # Unknown path, wrong method: JSON errors naming what was wrong.
        code, body = self.admin("/v1/nope")
        self.assertEqual(code, 404)
        self.assertIn("/v1/status", json.loads(body)["error"])
        code, body = self.admin("/v1/status", method="POST")
        self.assertEqual(code, 405)
        self.assertIn("GET", json.loads(body)["error"])

        p = self.corralctl_status()
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])

    def test_admin_token(self):
        token = "s3cret-admin-token-%d" % os.getpid()
        tf = os.path.join(self.tmp.name, "admin.token")
        with open(tf, "w") as f:
            f.write(token + "\n")
        wrong = os.path.join(self.tmp.name, "wrong.token")
        with open(wrong, "w") as f:
            f.write("not-" + token + "\n")
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 1, "threads": 1}], token_file=tf)
        for path in ("/v1/status", "/v1/health", "/metrics", "/v1/nope"):
            for kw in ({}, {"token": "not-" + token}, {"token": token[:-1]},
                       {"auth": token}, {"auth": "Basic " + token}):
                code, body = self.admin(path, **kw)
                self.assertEqual(code, 401, (path, kw, body))
                self.assertIn("error", json.loads(body))
                self.assertNotIn(token, body)
        wait_until("1 ready replica in the admin status",
                   lambda: self.status(token)["models"][0]["ready"] == 1, 60)
        self.assertEqual(self.admin("/v1/health", token)[0], 200)
        self.assertEqual(self.admin("/metrics", token)[0], 200)
        self.assertEqual(self.admin("/v1/nope", token)[0], 404)
        # Apply is refused without the token before its body is looked at, and the
        # cluster keeps its one replica.
        for kw in ({}, {"token": "not-" + token}):
            code, body = self.admin("/v1/apply", method="POST", **kw)
            self.assertEqual(code, 401, (kw, body))
        self.assertEqual(self.status(token)["models"][0]["desired"], 1)

        p = self.corralctl_status("--token-file", tf)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("model digits version 1: 1 of 1 desired replica ready", p.stdout)
        p = self.corralctl_status()
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("401", p.stderr)
        p = self.corralctl_status("--token-file", wrong)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("401", p.stderr)

        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])
        self.sched.t.join(10)
        # The refusals were logged, the token never.
        out = self.sched.output()
        self.assertIn("admin: refused GET (401)", out)
        self.assertNotIn(token, out)
        logs = []
        for d, _, files in os.walk(self.state):
            for name in files:
                logs.append(os.path.join(d, name))
                with open(os.path.join(d, name), "rb") as f:
                    self.assertNotIn(token.encode(), f.read(), name)
        self.assertTrue(any(n.endswith("router.log") for n in logs), logs)

    def test_admin_metrics_promtool(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        wait_until("2 ready replicas in the admin status",
                   lambda: len(self.ready_in_status("digits")) == 2, 60)
        code, text = self.admin("/metrics")
        self.assertEqual(code, 200, text)
        self.assertEqual(self.metric(text, "corral_scheduler_replicas_ready", model="digits"), 2)
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])

    def apply(self, cfg, *extra):
        """corralctl apply of cfg (a dict, or text as is) written to the config file."""
        with open(self.cfg_path, "w") as f:
            f.write(cfg if isinstance(cfg, str) else json.dumps(cfg))
        return subprocess.run([CORRALCTL, "apply", "--admin", "127.0.0.1:%d" % self.admin_port]
                              + list(extra) + [self.cfg_path], capture_output=True, text=True,
                              timeout=60)

    def with_replicas(self, n):
        cfg = json.loads(json.dumps(self.cfg))
        cfg["models"][0]["replicas"] = n
        return cfg

    def wait_scaled(self, n):
        """n corral-replica children, n ready in the router's table, the admin status
        desired == ready == n, every replica in the status ready."""
        def done():
            st = self.status()
            m = st["models"][0]
            return (len(self.replica_children()) == n and
                    len(self.ready_replicas("digits")) == n and
                    (m["desired"], m["ready"]) == (n, n) and len(st["replicas"]) == n and
                    all(r["state"] == "ready" for r in st["replicas"])) and st
        st = wait_until("%d replicas: processes, router table and admin status" % n, done, 90)
        self.assertEqual(sorted(r["pid"] for r in st["replicas"]), self.replica_children())
        self.assertEqual(sorted(r["url"] for r in st["replicas"]),
                         sorted(self.ready_replicas("digits")))
        return st

    def assert_removed_before_sigterm(self, out, names):
        for name in names:
            removed = out.find("%s: scaled down: removed " % name)
            term = out.find("%s: SIGTERM sent" % name, removed)
            self.assertGreaterEqual(removed, 0, "%s never left the table first:\n%s"
                                    % (name, out[-4000:]))
            self.assertGreater(term, removed, out[-4000:])

    def test_scale_apply_and_sighup_under_load(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        self.wait_scaled(2)
        self.load = Load(self.c, self.body, clients=3)
        self.load.more(50)

        # A dry run says what it would do and does nothing.
        pids = self.replica_children()
        p = self.apply(self.with_replicas(3), "--dry-run")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("dry run", p.stdout)
        self.assertIn("models[0] (digits): replicas 2 -> 3", p.stdout)
        self.load.more(30)
        self.assertEqual(self.replica_children(), pids)
        self.assertEqual(self.status()["models"][0]["desired"], 2)

        # 2 -> 3 with corralctl apply.
        p = self.apply(self.with_replicas(3))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("applied", p.stdout)
        self.assertIn("models[0] (digits): replicas 2 -> 3", p.stdout)
        st = self.wait_scaled(3)
        self.assertTrue(set(pids) <= set(self.replica_children()), (pids, st))
        new = [r for r in st["replicas"] if r["pid"] not in pids]
        self.assertEqual(len(new), 1, st)
        wait_until("the new replica taking traffic",
                   lambda: self.replica_requests(new[0]["url"]) > 0)
        self.load.more(50)

        # The same file again: nothing to do.
        pids = self.replica_children()
        p = self.apply(self.with_replicas(3))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stdout.strip(), "no changes")
        self.assertEqual(self.replica_children(), pids)

        # A malformed edit, and one that needs a restart: refused with their paths,
        # the cluster untouched.
        bad = self.with_replicas("two")
        bad["models"][0]["thread"] = 1
        p = self.apply(bad)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn('models[0].replicas: expected an integer >= 0, got "two"', p.stderr)
        self.assertIn("models[0].thread", p.stderr)
        p = self.apply("{\"models\": [")
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        restart = self.with_replicas(1)
        restart["router"]["threads"] = 2
        p = self.apply(restart)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("router.threads: changing it needs a restart", p.stderr)
        self.load.more(30)
        self.assertEqual(self.replica_children(), pids)
        st = self.status()
        self.assertEqual((st["models"][0]["desired"], st["models"][0]["ready"]), (3, 3), st)

        # 3 -> 1 with corralctl apply: two drained out of the table, then stopped; the
        # one kept was serving all along.
        before = {r["name"]: r["pid"] for r in st["replicas"]}
        p = self.apply(self.with_replicas(1))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("models[0] (digits): replicas 3 -> 1", p.stdout)
        st = self.wait_scaled(1)
        self.assertIn(st["replicas"][0]["pid"], before.values())
        gone = [n for n in before if n != st["replicas"][0]["name"]]
        self.assertEqual(len(gone), 2)
        self.load.more(50)
        self.assert_removed_before_sigterm(self.sched.output(), gone)
        self.assertTrue(all(not alive(before[n]) for n in gone))

        # 1 -> 2 with SIGHUP after rewriting the file.
        with open(self.cfg_path, "w") as f:
            json.dump(self.with_replicas(2), f)
        self.sched.p.send_signal(signal.SIGHUP)
        self.sched.wait_for("the SIGHUP applied", r"SIGHUP: applied")
        self.wait_scaled(2)
        self.load.more(50)
        self.assertIn("SIGHUP: change: models[0] (digits): replicas 1 -> 2", self.sched.output())

        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        print("%d requests answered under load across scaling 2 -> 3 -> 1 -> 2, none failed"
              % self.load.answered)
        self.load = None
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])

    def test_scale_up_places_around_cores_in_use_or_refuses(self):
        cores = len(os.sched_getaffinity(0))
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 1, "threads": 1}],
                   oversubscribe=False)
        st = self.wait_scaled(1)
        first = st["replicas"][0]
        pids = self.replica_children()
        # More cores than this process may use: refused, nothing changed.
        p = self.apply(self.with_replicas(cores + 1))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("models: the CPU replicas need %d cores" % (cores + 1), p.stderr)
        self.assertEqual(self.replica_children(), pids)
        self.assertEqual(self.status()["models"][0]["desired"], 1)
        if cores < 2:
            print("one core: the scale-up onto free cores is not checked here")
        else:
            # Every core: the new replicas get the ones the first leaves, each its own.
            p = self.apply(self.with_replicas(cores))
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            st = self.wait_scaled(cores)
            by_pid = {r["pid"]: r["cores"] for r in st["replicas"]}
            self.assertEqual(by_pid[first["pid"]], first["cores"], st)
            self.assertEqual(len(set(by_pid.values())), cores, st)
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])

    def test_scheduler_sigkilled_then_restarted_adopts(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        wait_until("2 ready replicas", lambda: len(self.ready_replicas("digits")) == 2, 60)
        state_file = os.path.join(self.state, "scheduler-state.json")
        wait_until("the state file listing both replicas in the table", lambda: os.path.exists(
            state_file) and sum(r["in_table"] for r in json.load(open(state_file))["replicas"]) == 2)
        procs = cluster_procs(self.state)
        self.assertEqual(sorted(procs.values()), ["corral-replica"] * 2 + ["corral-router"], procs)
        self.assertEqual(set(procs), set(children(self.sched.p.pid)))
        urls = sorted(self.ready_replicas("digits"))

        self.load = Load(self.c, self.body, clients=3)
        self.load.more(50)
        # The scheduler dies; its children were in their own process groups and keep serving.
        self.sched.p.kill()
        self.sched.p.wait(30)
        self.load.more(100)
        self.assertEqual(cluster_procs(self.state), procs)
        self.assertEqual(sorted(self.ready_replicas("digits")), urls)
        self.assertEqual(self.load.bad, [])

        # The same config and state dir: it observes first and adopts.
        self.sched = Scheduler(self.cfg_path, self.state)
        a = self.sched.wait_for("the admin API listening",
                                r"corral-scheduler admin listening on http://127\.0\.0\.1:(\d+)")
        self.admin_port = int(a.group(1))
        router_pid = [p for p, comm in procs.items() if comm == "corral-router"][0]
        self.sched.wait_for("the router adopted", r"router: adopted \(pid %d," % router_pid)
        for i in (0, 1):
            self.sched.wait_for("digits#%d adopted" % i, r"digits#%d: adopted \(pid \d+" % i)

        def all_ready():
            st = self.status()
            return st["router"]["state"] == "ready" and \
                [r["state"] for r in st["replicas"]] == ["ready", "ready"]
        wait_until("the adopted replicas ready in the admin status", all_ready)
        st = self.status()
        self.assertEqual(st["router"]["pid"], router_pid, st)
        self.assertEqual(sorted(r["pid"] for r in st["replicas"]),
                         sorted(p for p, comm in procs.items() if comm == "corral-replica"), st)
        self.assertEqual(sorted(r["url"] for r in st["replicas"]), urls, st)
        self.load.more(100)
        out = self.sched.output()
        self.assertNotRegex(out, r"(router|digits#\d): started", out)
        # No duplicate: exactly the processes that ran before, and no child of its own.
        self.assertEqual(cluster_procs(self.state), procs)
        self.assertEqual(children(self.sched.p.pid), {})
        self.assertEqual(sorted(self.ready_replicas("digits")), urls)

        # An adopted replica that dies is replaced (watched by pid and start time).
        victim = [r for r in st["replicas"] if r["name"] == "digits#0"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        m = self.sched.wait_for("the replacement added to the router's table",
                                r"digits#0: added (tcp://\S+) to the router's table")
        new_url = m.group(1)
        self.assertNotIn(new_url, urls)
        out = self.sched.output()
        removed = out.find("digits#0: removed %s from the router's table" % victim["url"])
        self.assertGreaterEqual(removed, 0, out)
        self.assertLess(removed, out.find("digits#0: started"), out)
        wait_until("the replacement taking traffic", lambda: self.replica_requests(new_url) > 0)
        self.load.more(100)
        now = cluster_procs(self.state)
        self.assertEqual(sorted(now.values()), ["corral-replica"] * 2 + ["corral-router"], now)
        self.assertNotIn(victim["pid"], now)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        answered = self.load.answered
        self.load = None

        # SIGTERM stops everything, adopted or not.
        self.sched.p.send_signal(signal.SIGTERM)
        rc = self.sched.p.wait(90)
        self.sched.t.join(10)
        out = self.sched.output()
        self.assertEqual(rc, 0, out[-4000:])
        self.assertEqual(cluster_procs(self.state), {})
        self.assertEqual([p for p in set(procs) | set(now) if alive(p)], [])
        self.assertRegex(out, r"digits#1: drained %s in the router's table" %
                         re.escape([r for r in st["replicas"] if r["name"] == "digits#1"][0]["url"]))
        print("%d requests answered across a SIGKILLed scheduler, its re-adoption and a "
              "SIGKILLed adopted replica, none failed" % answered)

    def test_crash_loop_marked_failed_others_serve(self):
        repo = os.path.join(self.tmp.name, "repo")
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(repo, "digits"))
        broken = os.path.join(repo, "broken")
        shutil.copytree(os.path.join(ROOT, "models", "digits"), broken)
        with open(os.path.join(broken, "config.json")) as f:
            cfg = json.load(f)
        cfg["name"] = "broken"
        with open(os.path.join(broken, "config.json"), "w") as f:
            json.dump(cfg, f)
        # --check sees the file; the replica cannot parse it.
        with open(os.path.join(broken, "1", "model.onnx"), "wb") as f:
            f.write(b"this is not an ONNX model\n" * 10)
        self.start(repo, [{"name": "digits", "version": 1, "replicas": 1},
                          {"name": "broken", "version": 1, "replicas": 1}])
        wait_until("digits ready", lambda: len(self.ready_replicas("digits")) == 1, 60)
        self.load = Load(self.c, self.body, clients=2)
        m = self.sched.wait_for("broken#0 marked failed",
                                r"broken#0: failed: exited (\d+) times in a row[^\n]*"
                                r"last log lines: ([^\n]*)")
        self.assertEqual(int(m.group(1)), CRASH_LIMIT)
        self.assertNotEqual(m.group(2), "(none)")
        self.load.more(50)
        out = self.sched.output()
        self.assertEqual(out.count("broken#0: started"), CRASH_LIMIT, out)
        # Backoff between the tries: 100, 200, 400, 800 ms at least (nominal).
        self.assertEqual(len(re.findall(r"broken#0: exited .* restart in (100|200|400|800) ms",
                                        out)), CRASH_LIMIT - 1, out)
        self.assertNotIn("broken#0: ready", out)
        # Failed means not restarted: no new start after a while.
        time.sleep(1.0)
        self.assertEqual(self.sched.output().count("broken#0: started"), CRASH_LIMIT)
        self.assertEqual(self.ready_replicas("broken"), [])
        self.assertEqual(len(self.ready_replicas("digits")), 1)
        self.assertEqual(self.replica_children(), self.replica_children()[:1])
        # The admin API: failed with the reason; corralctl exits 3 (a model with
        # desired > 0 has no ready replica).
        st = {r["name"]: r for r in self.status()["replicas"]}
        self.assertEqual(st["broken#0"]["state"], "failed", st)
        self.assertIsNone(st["broken#0"]["pid"], st)
        self.assertEqual(st["broken#0"]["restarts"], CRASH_LIMIT - 1, st)
        self.assertIn("exited %d times in a row" % CRASH_LIMIT, st["broken#0"]["last_error"])
        self.assertEqual(st["digits#0"]["state"], "ready", st)
        self.assertEqual(json.loads(self.admin("/v1/health")[1]),
                         {"live": True, "models_ready": False})
        p = self.corralctl_status()
        self.assertEqual(p.returncode, 3, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"broken +1 +cpu\S* +failed +- ")
        self.assertIn("model broken version 1: 0 of 1 desired replica ready", p.stdout)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        self.load = None
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])


if __name__ == "__main__":
    if PROMTOOL_ONLY:
        if not PROMTOOL or not os.access(PROMTOOL, os.X_OK):
            testrun.skip_all("promtool not found (Debian package prometheus)")
        testrun.main(unittest.TestSuite([SchedulerRun("test_admin_metrics_promtool")]))
    # Otherwise every test but that one, which needs nothing else.
    testrun.main(unittest.TestSuite(
        [t for t in unittest.TestLoader().loadTestsFromTestCase(SchedulerRun)
         if t._testMethodName != "test_admin_metrics_promtool"]))
