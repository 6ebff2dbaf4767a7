"""Version aliases (issue 13, item 3), with real processes on loopback:

- a router over two digits replicas, versions 1 and 2, in a repository whose
  aliases.json says production=2, staging=1: /versions/production/infer is answered by
  version 2 with model_version "2" (and staging by 1), over HTTP and over RPC
  (corralctl infer --version production); metadata, ready, config and stats under the
  alias carry the version number; an unknown alias is a 404 naming the aliases served;
  editing aliases.json while they run changes nothing.
- corralctl alias set/list/remove: the file holds exactly the new mapping and no
  temporary file is left; a version not in the repository and an all-digit alias are
  refused.
- corral-scheduler with "version": "production": `corralctl alias set ... production
  2` alone changes nothing; `corralctl apply` then rolls version 2 out.

Usage: test_aliases.py BUILD_DIR REPO_ROOT
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_scheduler_run as tsr  # noqa: E402  (reads BUILD_DIR REPO_ROOT from argv)
from cluster import wait_until  # noqa: E402
from test_protocol_util import start_cluster  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = tsr.BUILD, tsr.ROOT
CORRALCTL = tsr.CORRALCTL


def make_repo(dest, aliases):
    """digits with versions 1 and 2 (the same model) and `aliases` in aliases.json."""
    src = os.path.join(ROOT, "models", "digits")
    d = os.path.join(dest, "digits")
    os.makedirs(d)
    for f in ("config.json", "labels.txt"):
        shutil.copy(os.path.join(src, f), d)
    for v in ("1", "2"):
        shutil.copytree(os.path.join(src, "1"), os.path.join(d, v))
    if aliases is not None:
        with open(os.path.join(d, "aliases.json"), "w") as f:
            json.dump(aliases, f)
    return d


def ctl(*args):
    return subprocess.run([CORRALCTL] + list(args), capture_output=True, text=True, timeout=60)


def digits_body():
    with open(os.path.join(ROOT, "tests", "data", "digits_heldout.json")) as f:
        x = json.load(f)["inputs"][0]
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]}


class RouterAliases(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="corral-aliases-")
        cls.repo = os.path.join(cls.tmp, "repo")
        cls.mdir = make_repo(cls.repo, {"production": 2, "staging": 1})
        cls.c = start_cluster(BUILD, cls.repo, [("digits", ["--version", "1"]),
                                                ("digits", ["--version", "2"])])
        cls.body = digits_body()

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        shutil.rmtree(cls.tmp)

    def versions(self, path, n=12):
        seen = set()
        for _ in range(n):
            st, r = self.c.http("POST", path, self.body)
            self.assertEqual(st, 200, r)
            seen.add(r["model_version"])
        return seen

    def test_infer_by_alias(self):
        self.assertEqual(self.versions("/v2/models/digits/versions/production/infer"), {"2"})
        self.assertEqual(self.versions("/v2/models/digits/versions/staging/infer"), {"1"})
        self.assertEqual(self.versions("/v2/models/digits/versions/2/infer", 4), {"2"})

    def test_rpc_by_alias(self):
        sample = os.path.join(self.tmp, "sample.json")
        with open(sample, "w") as f:
            json.dump(self.body, f)
        for alias, want in (("production", "2"), ("staging", "1")):
            for _ in range(4):
                p = ctl("infer", "--rpc", self.c.rpc_url, "--model", "digits", "--version",
                        alias, sample)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertEqual(json.loads(p.stdout)["model_version"], want)
        p = ctl("infer", "--rpc", self.c.rpc_url, "--model", "digits", "--version", "prod",
                sample)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("'prod'", p.stderr)

    def test_metadata_ready_config_stats_carry_the_number(self):
        base = "/v2/models/digits/versions/production"
        st, r = self.c.http("GET", base)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["versions"], ["2"])
        st, r = self.c.http("GET", base + "/ready")
        self.assertEqual((st, r["version"], r["ready"]), (200, "2", True), r)
        st, r = self.c.http("GET", base + "/config")
        self.assertEqual(st, 200, r)
        self.assertEqual(r["name"], "digits")
        self.versions(base + "/infer", 2)
        st, r = self.c.http("GET", base + "/stats")
        self.assertEqual(st, 200, r)
        self.assertEqual([s["version"] for s in r["model_stats"]], ["2"])

    def test_unknown_alias(self):
        for path in ("/infer", "", "/ready", "/stats"):
            st, r = self.c.http("POST" if path == "/infer" else "GET",
                                "/v2/models/digits/versions/prod" + path,
                                self.body if path == "/infer" else None)
            self.assertEqual(st, 404, r)
            self.assertIn("unknown version 'prod' of model 'digits' (serving: 1, 2; aliases: ",
                          r["error"])
            self.assertIn("production=2", r["error"])
            self.assertIn("staging=1", r["error"])

    def test_editing_the_file_changes_nothing_running(self):
        with open(os.path.join(self.mdir, "aliases.json"), "w") as f:
            json.dump({"production": 1, "staging": 2}, f)
        try:
            time.sleep(0.5)  # several health rounds
            self.assertEqual(self.versions("/v2/models/digits/versions/production/infer"),
                             {"2"})
        finally:
            with open(os.path.join(self.mdir, "aliases.json"), "w") as f:
                json.dump({"production": 2, "staging": 1}, f)


class CtlAlias(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="corral-ctl-alias-")
        self.mdir = make_repo(self.tmp, None)
        self.file = os.path.join(self.mdir, "aliases.json")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def read(self):
        with open(self.file) as f:
            return json.load(f)

    def test_set_list_remove(self):
        p = ctl("alias", "set", "--repo", self.tmp, "digits", "production", "1")
        self.assertEqual((p.returncode, p.stdout), (0, "digits: alias production = version 1\n"),
                         p.stderr)
        self.assertEqual(self.read(), {"production": 1})
        p = ctl("alias", "set", "--repo", self.tmp, "digits", "staging", "2")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = ctl("alias", "set", "--repo", self.tmp, "digits", "production", "2")
        self.assertEqual(p.stdout, "digits: alias production = version 2 (was 1)\n")
        self.assertEqual(self.read(), {"production": 2, "staging": 2})
        # Nothing but the file itself is left beside the versions.
        self.assertEqual(sorted(os.listdir(self.mdir)),
                         ["1", "2", "aliases.json", "config.json", "labels.txt"])
        p = ctl("alias", "list", "--repo", self.tmp, "digits")
        self.assertEqual(p.stdout.split(), ["production", "2", "staging", "2"])
        p = ctl("alias", "remove", "--repo", self.tmp, "digits", "staging")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(self.read(), {"production": 2})

    def test_refusals_leave_the_file_alone(self):
        ctl("alias", "set", "--repo", self.tmp, "digits", "production", "1")
        with open(self.file, "rb") as f:
            before = f.read()
        p = ctl("alias", "set", "--repo", self.tmp, "digits", "production", "3")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stderr, "corralctl: alias: model 'digits' has no version 3: "
                         "%s/digits/3/model.onnx does not exist\n" % self.tmp)
        p = ctl("alias", "set", "--repo", self.tmp, "digits", "42", "1")
        self.assertEqual(p.returncode, 1)
        self.assertIn("alias '42' is all digits", p.stderr)
        p = ctl("alias", "remove", "--repo", self.tmp, "digits", "nope")
        self.assertEqual(p.returncode, 1)
        self.assertIn("no alias 'nope' (aliases: production)", p.stderr)
        with open(self.file, "rb") as f:
            self.assertEqual(f.read(), before)
        # A broken file is reported with its path, and not overwritten.
        with open(self.file, "w") as f:
            f.write('{"production": "one"}')
        p = ctl("alias", "set", "--repo", self.tmp, "digits", "staging", "1")
        self.assertEqual(p.returncode, 1)
        self.assertIn("%s: alias 'production' must name a version" % self.file, p.stderr)
        with open(self.file) as f:
            self.assertEqual(f.read(), '{"production": "one"}')


class RolloutByAlias(tsr.SchedulerHarness, unittest.TestCase):

    def served(self, n=10):
        seen = set()
        for _ in range(n):
            st, r = self.c.http("POST", "/v2/models/digits/infer", self.body)
            self.assertEqual(st, 200, r)
            seen.add(r["model_version"])
        return seen

    def test_alias_set_then_apply_rolls_out(self):
        repo = os.path.join(self.tmp.name, "repo")
        make_repo(repo, {"production": 1})
        self.start(repo, [{"name": "digits", "version": "production", "replicas": 1,
                           "threads": 1}])
        wait_until("1 ready replica", lambda: len(self.ready_replicas("digits")) == 1, 60)
        self.assertEqual(self.served(), {"1"})
        p = ctl("alias", "set", "--repo", repo, "digits", "production", "2")
        self.assertEqual(p.returncode, 0, p.stderr)
        time.sleep(1)
        self.assertEqual(self.served(), {"1"}, "the alias file alone changed what runs")
        p = ctl("apply", "--admin", "127.0.0.1:%d" % self.admin_port, self.cfg_path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("version 1 -> 2: rolling update", p.stdout)

        def done():
            ro = self.status()["models"][0]["rollout"]
            return ro and ro["state"] == "done"
        wait_until("the rollout done", done, 120)
        self.assertEqual(self.served(), {"2"})


if __name__ == "__main__":
    testrun.main()
