"""The control plane's figures on this machine: for one model of a repository that
holds versions 1 and 2 of it, corral-scheduler runs 2 CPU replicas of version 1 and

- the time from a SIGKILL of a replica to its replacement ready in the router's table;
- the duration of a rolling update 1 -> 2 (as the scheduler's status reports it, and
  from the apply to "done" as seen from outside);
- the scheduler's RSS and CPU time over 10 s while idle.

Each is measured RUNS times; the medians are printed. Requests are not sent here
(the rollout tests count them); this measures the control plane alone.

Usage: scheduler_bench.py BUILD_DIR REPO MODEL [RUNS] [SOAK_MS]
  e.g. python3 bench/scheduler_bench.py build models digits 3
       (REPO must hold MODEL/1 and MODEL/2: copy 1 to 2 for a pure timing run)
"""
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def wait(what, cond, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise SystemExit("timed out waiting for " + what)


class Sched:
    def __init__(self, build, cfg_path, state):
        self.build = build
        self.log = open(os.path.join(os.path.dirname(cfg_path), "scheduler.log"), "w+")
        self.p = subprocess.Popen([os.path.join(build, "scheduler", "corral-scheduler"),
                                   "--config", cfg_path, "--state-dir", state],
                                  stdout=self.log, stderr=subprocess.STDOUT)
        self.admin = int(wait("the admin API", lambda: self.find(
            r"admin listening on http://127\.0\.0\.1:(\d+)")))

    def find(self, rx):
        self.log.flush()
        with open(self.log.name) as f:
            m = re.search(rx, f.read())
        return m and m.group(1)

    def status(self):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        c.request("GET", "/v1/status")
        r = json.loads(c.getresponse().read())
        c.close()
        return r

    def ready(self, n, version):
        st = self.status()
        return sum(1 for r in st["replicas"]
                   if r["state"] == "ready" and r["version"] == version) == n and st

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(120)


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def one_run(build, repo, model, soak_ms, tmp):
    cfg = {"model_repository": os.path.abspath(repo),
           "router": {"listen": "127.0.0.1:0", "rpc_listen": "off",
                      "control_listen": "127.0.0.1:0"},
           "admin": {"listen": "127.0.0.1:0"}, "oversubscribe": True,
           "rollout": {"soak_ms": soak_ms},
           "models": [{"name": model, "version": 1, "replicas": 2, "threads": 1}]}
    path = os.path.join(tmp, "cluster.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    s = Sched(build, path, os.path.join(tmp, "state"))
    try:
        st = wait("2 ready replicas", lambda: s.ready(2, 1))
        time.sleep(1)
        # Idle: 10 s with nothing happening but health checks.
        c0, t0 = cpu_s(s.p.pid), time.monotonic()
        time.sleep(10)
        idle_cpu = (cpu_s(s.p.pid) - c0) / (time.monotonic() - t0) * 100
        idle_rss = rss_kib(s.p.pid)
        # SIGKILL one replica: until a replacement is ready in the table.
        victim = st["replicas"][0]["pid"]
        before = {r["pid"] for r in st["replicas"]}
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait("a replacement", lambda: (lambda st: st and {r["pid"] for r in st["replicas"]
                                                             if r["state"] == "ready"} - before)(
            s.ready(2, 1)))
        replaced_ms = (time.monotonic() - t0) * 1000
        # Roll out 1 -> 2.
        cfg["models"][0]["version"] = 2
        body = json.dumps(cfg).encode()
        t0 = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", s.admin, timeout=30)
        c.request("POST", "/v1/apply", body)
        ans = c.getresponse().read()
        c.close()
        ro = wait("the rollout done: %s" % ans, lambda: (lambda r: r and r["state"] in (
            "done", "aborted") and r)(s.status()["models"][0]["rollout"]), 600)
        if ro["state"] != "done":
            raise SystemExit("the rollout was aborted: %s" % ro["reason"])
        seen_ms = (time.monotonic() - t0) * 1000
        return replaced_ms, ro["duration_ms"], seen_ms, idle_rss, idle_cpu
    finally:
        s.stop()


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    build, repo, model = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    soak = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    rows = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="corral-sched-bench-") as tmp:
            r = one_run(build, repo, model, soak, tmp)
        print("run %d: SIGKILL -> replacement ready %.0f ms; rollout 1 -> 2 of 2 replicas "
              "%.0f ms (scheduler), %.0f ms (apply to done); idle RSS %d KiB, CPU %.2f%%"
              % ((i + 1,) + r), flush=True)
        rows.append(r)
    med = [statistics.median(col) for col in zip(*rows)]
    print("median of %d (%s, soak_ms %d): SIGKILL -> replacement ready %.0f ms; rollout "
          "%.0f ms (scheduler), %.0f ms (apply to done); idle RSS %.0f KiB, CPU %.2f%%"
          % ((runs, model, soak) + tuple(med)))


if __name__ == "__main__":
    main()
