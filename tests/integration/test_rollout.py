"""Rolling updates through corral-scheduler (issue 12, item 5), real processes on
loopback under a steady load from this test; every request started is counted back,
and every answer's model_version is recorded in order:

- v1 -> v2 on 2 replicas (`corralctl apply`): no request fails; every answer names
  version 1 or 2, both are seen, and once the rollout is done only 2 answers; while
  it runs, the router's table never holds fewer than 2 ready replicas of digits
  (surge first: a new replica is in the table before an old one drains); each new
  replica joins only after rollout.soak_ms; at the end 2 corral-replica children run,
  both version 2.
- v2 -> v3 whose parity vectors do not match its model: the rollout is aborted, no
  request fails, version 2 keeps serving with 2 ready replicas, only 2 answers, and
  the reason (the replica's parity error) is in `corralctl status --admin`.
- rolling back is applying the old version: v2 -> v1, done, only 1 answers.
- a canary (rollout.canary_percent 50): the new version serves a share of the
  unversioned traffic next to the 2 old replicas until `corralctl promote`, which
  finishes the rollout.
- the router SIGKILLed under load: the scheduler restarts it on the same port with
  the replicas that serve (--replica), and it accepts connections only once they
  answered their first health check; clients retry refused or cut connections, and
  only inside the window from the kill to the new router's first ready answer; no
  request gets an HTTP error (no 503 from a router that does not know its replicas
  yet).

The rollout durations are printed (measured, not asserted).

Usage: test_rollout.py BUILD_DIR REPO_ROOT
"""
import datetime
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
import test_scheduler_run as tsr  # noqa: E402  (reads BUILD_DIR REPO_ROOT from argv)
from cluster import Cluster, wait_until  # noqa: E402
from test_control_plane import Load  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = tsr.BUILD, tsr.ROOT
CORRALCTL = tsr.CORRALCTL


def make_versions(dest):
    """digits with versions 1 and 2 (the same model) and 3, whose parity vectors hold
    another input's expected output (so its replicas refuse to start)."""
    src = os.path.join(ROOT, "models", "digits")
    d = os.path.join(dest, "digits")
    os.makedirs(d)
    for f in ("config.json", "labels.txt"):
        shutil.copy(os.path.join(src, f), d)
    for v in ("1", "2", "3"):
        shutil.copytree(os.path.join(src, "1"), os.path.join(d, v))
    vec = os.path.join(d, "3", "vectors")
    a, b = os.path.join(vec, "0", "output_0.pb"), os.path.join(vec, "1", "output_0.pb")
    with open(a, "rb") as f:
        first = f.read()
    shutil.copy(b, a)
    with open(b, "wb") as f:
        f.write(first)


def stamp(out, rx):
    """The time (s) on the scheduler's first log line matching rx."""
    m = re.search(r"^(\S+)Z \S+ \S+: .*%s" % rx, out, re.M)
    if not m:
        raise AssertionError("no line matches %s in\n%s" % (rx, out[-3000:]))
    return datetime.datetime.fromisoformat(m.group(1)).timestamp()


class VersionLoad(Load):
    """Load (test_control_plane) that also keeps every answer's model_version in the
    order the answers came. A client whose connection is refused or cut retries the
    request after 20 ms when `retry_window(now)` says the failure falls in a window it
    may (the router's restart); else it is a failure, and so is any HTTP error."""

    def __init__(self, c, body, clients=3, retry_window=None):
        self.retry_window = retry_window
        self.versions = []
        self.retried = 0
        super().__init__(c, body, clients)

    def attempt(self, cl):
        """(ok, detail, client) of one request; a failed connection is replaced."""
        try:
            st, r = cl.http("POST", "/v2/models/digits/infer", self.body)
            return st == 200, (st, r), cl
        except Exception as ex:  # noqa: BLE001 - counted, never lost
            cl.close()
            fresh = Cluster(self.c.build, self.c.repo)
            fresh.port = self.c.port
            return False, repr(ex), fresh

    def run(self):
        cl = Cluster(self.c.build, self.c.repo)
        cl.port = self.c.port
        while not self._stop.is_set():
            with self.mu:
                self.started += 1
            ok, detail, cl = self.attempt(cl)
            # Only a refused or cut connection is retried; an HTTP error is an answer.
            while not ok and isinstance(detail, str) and self.retry_window and \
                    self.retry_window(time.monotonic()):
                with self.mu:
                    self.retried += 1
                time.sleep(0.02)
                ok, detail, cl = self.attempt(cl)
            with self.mu:
                if ok:
                    self.answered += 1
                    self.versions.append(str(detail[1].get("model_version")))
                else:
                    self.bad.append((time.monotonic(), detail))
        cl.close()

    def mark(self):
        with self.mu:
            return len(self.versions)

    def since(self, mark):
        with self.mu:
            return self.versions[mark:]


class TableWatch:
    """Polls the router's replica table every 10 ms and keeps the fewest ready replicas
    of `model` it saw."""

    def __init__(self, c, model):
        self.c, self.model = c, model
        self.fewest = None
        self.samples = 0
        self._stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        cl = Cluster(self.c.build, self.c.repo)
        cl.port = self.c.port
        while not self._stop.is_set():
            try:
                st, r = cl.http("GET", "/v2/corral/replicas")
            except Exception:  # noqa: BLE001 - a poll that failed says nothing
                cl.close()
                time.sleep(0.01)
                continue
            if st == 200:
                n = sum(1 for x in r["replicas"]
                        if x["model"] == self.model and x["state"] == "ready")
                self.fewest = n if self.fewest is None else min(self.fewest, n)
                self.samples += 1
            time.sleep(0.01)
        cl.close()

    def stop(self):
        self._stop.set()
        self.t.join(10)
        return self


class Rollout(tsr.SchedulerHarness, unittest.TestCase):

    def apply(self, version, **rollout):
        """Writes the config with digits at `version` and applies it with corralctl."""
        cfg = json.loads(json.dumps(self.cfg))
        cfg["models"][0]["version"] = version
        cfg.setdefault("rollout", {}).update(rollout)
        with open(self.cfg_path, "w") as f:
            json.dump(cfg, f)
        r = subprocess.run([CORRALCTL, "apply", "--admin", "127.0.0.1:%d" % self.admin_port,
                            self.cfg_path], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("rolling", r.stdout + r.stderr)
        return r

    def rollout(self):
        return self.status()["models"][0]["rollout"]

    def wait_rollout(self, state, timeout=120):
        def done():
            ro = self.rollout()
            return ro and ro["state"] == state and ro
        return wait_until("the rollout %s" % state, done, timeout)

    def versions_now(self, n=60):
        mark = self.load.mark()
        self.load.more(n)
        return set(self.load.since(mark))

    def test_rollout_abort_rollback_under_load(self):
        self.start_v1_under_load()
        self.assertEqual(self.versions_now(), {"1"})

        # v1 -> v2.
        watch = TableWatch(self.c, "digits")
        t0 = time.monotonic()
        self.apply(2, soak_ms=1000)
        ro = self.wait_rollout("done")
        took = time.monotonic() - t0
        watch.stop()
        self.assertEqual(self.versions_now(), {"2"})
        self.assertEqual((ro["from"], ro["to"], ro["started"], ro["drained"]), (1, 2, 2, 2), ro)
        self.assertGreaterEqual(watch.samples, 20)
        self.assertEqual(watch.fewest, 2, "capacity dropped below 2 during the rollout")
        st = self.status()
        self.assertEqual(sorted((r["version"], r["state"]) for r in st["replicas"]),
                         [(2, "ready"), (2, "ready")], st)
        self.assertEqual(len(self.replica_children()), 2)
        out = self.sched.output()
        # Each new replica soaked before it joined: ready, then >= soak_ms, then added.
        new = re.findall(r"digits: rolling update: (digits#\d+) starts version 2", out)
        self.assertEqual(len(new), 2, out)
        for name in new:
            ready = stamp(out, r"%s: ready \(pid" % re.escape(name))
            added = stamp(out, r"%s: added tcp" % re.escape(name))
            self.assertGreaterEqual(added - ready, 0.95, "%s joined before its soak" % name)
        self.assertIn("rolling update from version 1 to 2 done", out)
        seen = set(self.load.versions)
        self.assertEqual(seen, {"1", "2"})
        print("rollout v1 -> v2 of 2 digits replicas: %.0f ms by the scheduler, %.1f s from "
              "apply to done seen by the test" % (ro["duration_ms"], took))

        # v2 -> v3, whose parity vectors are wrong: aborted, v2 keeps serving.
        self.apply(3, soak_ms=1000)
        ro = self.wait_rollout("aborted")
        self.assertEqual((ro["from"], ro["to"]), (2, 3), ro)
        self.assertIn("differs from the reference", ro["reason"])
        self.assertEqual(self.status()["models"][0]["version"], 2)
        text = self.admin("/metrics")[1]
        for state, v in (("aborted", 1), ("done", 0), ("rolling", 0)):
            self.assertEqual(tsr.SchedulerHarness.metric(text, "corral_scheduler_rollout_state",
                                                     model="digits", state=state), v)
        wait_until("2 ready version-2 replicas", lambda: sorted(
            (r["version"], r["state"]) for r in self.status()["replicas"]) ==
            [(2, "ready"), (2, "ready")], 30)
        self.assertEqual(self.versions_now(), {"2"})
        r = self.corralctl_status()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("aborted", r.stdout)
        self.assertIn("differs from the reference", r.stdout)
        wait_until("2 replica children", lambda: len(self.replica_children()) == 2, 30)

        # Rolling back is applying the old version.
        self.apply(1, soak_ms=1000)
        ro = self.wait_rollout("done")
        self.assertEqual((ro["from"], ro["to"]), (2, 1), ro)
        self.assertEqual(self.versions_now(), {"1"})

        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        self.assertTrue(set(self.load.versions) <= {"1", "2"}, set(self.load.versions))
        print("%d requests answered across a rollout, an aborted one and a rollback, none "
              "failed" % self.load.answered)
        self.load = None

    def start_v1_under_load(self, extra=()):
        """digits version 1 on 2 replicas (of a repository with 1, 2 and 3), and load."""
        repo = os.path.join(self.tmp.name, "repo")
        make_versions(repo)
        self.start(repo, [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}],
                   extra=extra)
        wait_until("2 ready replicas", lambda: len(self.ready_replicas("digits")) == 2, 60)
        self.load = VersionLoad(self.c, self.body)
        self.load.more(50)

    def page_shows_canary(self):
        """The operator page, in headless chromium where there is one, draws the canary."""
        browser = shutil.which("chromium")
        if not browser:
            print("operator page not checked: chromium not found (Debian package chromium)")
            return
        with tempfile.TemporaryDirectory(prefix="corral-chromium-") as profile:
            p = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                                "--no-first-run", "--user-data-dir=" + profile,
                                "--virtual-time-budget=5000", "--dump-dom",
                                "http://127.0.0.1:%d/" % self.admin_port],
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        for want in (">canary<", "version 1 → 2", "1 new and 2 old serving",
                     "30% canary until promoted"):
            self.assertIn(want, p.stdout)

    def test_surge_first_broken_on_purpose_fails_requests(self):
        # CONTROL-PLANE.md rule 5 broken by a test hook: old replicas drain before their
        # successors serve. The same rollout that loses nothing when the rule is kept
        # (test_rollout_abort_rollback_under_load) now answers 503s.
        self.start_v1_under_load(extra=["--test-break-rule", "surge-first"])
        self.apply(2, soak_ms=500)
        self.wait_rollout("done")
        self.load.more(50)
        self.load.stop()
        codes = {d[1][0] if isinstance(d[1], tuple) else d[1] for d in self.load.bad}
        self.assertGreater(len(self.load.bad), 0, "no request failed with rule 5 broken")
        self.assertEqual(codes, {503}, self.load.bad[:3])
        print("rule 5 (surge first) broken on purpose: %d of %d requests failed (503)"
              % (len(self.load.bad), self.load.started))
        self.load = None

    def promote(self, model="digits"):
        return subprocess.run([CORRALCTL, "promote", "--admin", "127.0.0.1:%d" % self.admin_port,
                               model], capture_output=True, text=True, timeout=60)

    def test_canary_then_promote(self):
        self.start_v1_under_load()
        r = self.promote()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no canary waits for promotion", r.stderr)
        r = self.promote("nosuch")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("promote refused (404): model: no model named 'nosuch'", r.stderr)
        st, body = self.admin("/v1/promote", method="POST")
        self.assertEqual(st, 400, body)
        self.assertIn('expected a JSON object {"model": NAME}', json.loads(body)["error"])
        self.assertEqual(self.admin("/v1/promote")[0], 405)

        self.apply(2, soak_ms=500, canary_percent=30)
        ro = wait_until("the canary serving", lambda: (lambda r: r["state"] == "canary" and
                                                       r["serving_to"] == 1 and r)(
            self.rollout()), 60)
        self.assertEqual((ro["from"], ro["to"], ro["canary_percent"]), (1, 2, 30), ro)
        # It stays a canary: the old replicas all serve, no second new one starts.
        mark = self.load.mark()
        self.load.more(600)
        got = self.load.since(mark)
        share = got.count("2") / len(got)
        self.assertTrue(set(got) <= {"1", "2"}, set(got))
        # 30 % of 600+ requests: 5 sigma is about 0.09.
        self.assertTrue(0.18 <= share <= 0.42, "version 2 took %.2f of %d" % (share, len(got)))
        ro = self.rollout()
        self.assertEqual((ro["state"], ro["serving_from"], ro["serving_to"], ro["started"],
                          ro["drained"]), ("canary", 2, 1, 1, 0), ro)
        self.assertEqual(len(self.replica_children()), 3)
        r = self.corralctl_status()
        self.assertIn("canary at 30% until corralctl promote", r.stdout)
        self.page_shows_canary()

        r = self.promote()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("promoted: digits version 2", r.stdout)
        ro = self.wait_rollout("done")
        self.assertEqual((ro["started"], ro["drained"]), (2, 2), ro)
        self.assertEqual(self.versions_now(), {"2"})
        self.assertIn("canary split cleared", self.sched.output())
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        print("canary at 30%%: version 2 answered %.1f%% of %d requests until promoted"
              % (share * 100, len(got)))
        self.load = None

    def test_scheduler_sigkilled_mid_rollout_adopts_both_versions(self):
        self.start_v1_under_load()
        # A long soak holds the rollout with the surge replica ready but not serving.
        self.apply(2, soak_ms=4000)
        self.sched.wait_for("the surge replica ready", r"digits#2: ready \(pid \d+\)")
        state_file = os.path.join(self.state, "scheduler-state.json")
        wait_until("the state file listing 3 replicas with their URLs", lambda: [
            bool(r["url"]) for r in json.load(open(state_file))["replicas"]] == [True] * 3)
        procs = tsr.cluster_procs(self.state)
        self.assertEqual(sorted(procs.values()), ["corral-replica"] * 3 + ["corral-router"])
        self.sched.p.kill()
        self.sched.p.wait(30)
        self.load.more(100)

        self.sched = tsr.Scheduler(self.cfg_path, self.state)
        a = self.sched.wait_for("the admin API listening",
                                r"corral-scheduler admin listening on http://127\.0\.0\.1:(\d+)")
        self.admin_port = int(a.group(1))
        for name in ("digits#0", "digits#1", "digits#2"):
            self.sched.wait_for(name + " adopted", r"%s: adopted \(pid \d+" % name)
        # Adopted, not restarted: the same three replicas and router, none started.
        self.assertEqual(tsr.cluster_procs(self.state), procs)
        ro = self.wait_rollout("done")
        self.assertEqual((ro["from"], ro["to"]), (1, 2), ro)
        out = self.sched.output()
        self.assertNotIn("digits#2: started", out)
        self.assertEqual(len(re.findall(r"starts version 2", out)), 1, out)
        self.assertEqual(self.versions_now(), {"2"})
        wait_until("2 replica processes", lambda: sorted(
            tsr.cluster_procs(self.state).values()) == ["corral-replica"] * 2 + ["corral-router"])
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        self.load = None

    def test_router_sigkill_under_load(self):
        self.start(os.path.join(ROOT, "models"),
                   [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}])
        wait_until("2 ready replicas", lambda: len(self.ready_replicas("digits")) == 2, 60)
        router_pid = self.status()["router"]["pid"]
        window = {"from": None, "to": None}

        def in_window(t):
            return window["from"] is not None and t >= window["from"] and (
                window["to"] is None or t <= window["to"])
        self.load = VersionLoad(self.c, self.body, retry_window=in_window)
        self.load.more(100)
        window["from"] = time.monotonic()
        os.kill(router_pid, signal.SIGKILL)
        m = self.sched.wait_for("the router restarted",
                                r"router: ready \(pid (?!%d\))(\d+)\)" % router_pid, 60)
        new_pid = int(m.group(1))

        def ready():
            try:
                return self.c.http("GET", "/v2/health/ready")[0] == 200
            except Exception:  # noqa: BLE001 - not listening yet
                self.c.close()
                return False
        wait_until("the new router ready", ready, 30)
        window["to"] = time.monotonic()
        self.load.more(200)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.assertEqual(self.load.answered, self.load.started)
        self.assertEqual(self.status()["router"]["pid"], new_pid)
        self.assertIn("and 2 serving replicas (--replica)", self.sched.output())
        print("router SIGKILLed under load: back and ready after %.0f ms; %d requests "
              "retried inside that window, %d answered, none failed outside it"
              % ((window["to"] - window["from"]) * 1000, self.load.retried,
                 self.load.answered))
        self.load = None


if __name__ == "__main__":
    names = sys.argv[3:]  # optional: test method names
    loader = unittest.TestLoader()
    testrun.main(unittest.TestSuite([Rollout(n) for n in names]) if names
                 else loader.loadTestsFromTestCase(Rollout))
