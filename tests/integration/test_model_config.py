"""Triton's model configuration and repository extensions over plain HTTP, with
replicas in every state the index reports: two ready replicas of digits (one
instance group of count 2), a replica of "held" kept starting by the test hook
(its version UNAVAILABLE until the hook lets it go, then READY), and a model
"ghost" whose only replica URL has nothing listening (no version known, so an
entry without one). Bad bodies, wrong methods, unknown models and versions,
model control and compressed bodies get their statuses with {"error": ...}.

Usage: test_model_config.py BUILD_DIR REPO_ROOT
"""
import json
import os
import shutil
import socket
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_protocol_util import stop_and_clean  # noqa: E402
import testrun  # noqa: E402
from cluster import Cluster, Proc, wait_until  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class ModelConfigAndIndex(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-config-")
        repo = cls.tmp.name
        # Both without batching (max_batch_size 0), whatever the bundled config says.
        for name in ("digits", "held"):
            shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(repo, name))
            with open(os.path.join(repo, name, "config.json")) as f:
                cfg = json.load(f)
            cfg["name"] = name
            cfg.pop("batching", None)
            with open(os.path.join(repo, name, "config.json"), "w") as f:
                json.dump(cfg, f)
        cls.gate = os.path.join(repo, "go")
        c = cls.c = Cluster(BUILD, repo)
        try:
            c.replica("digits")
            c.replica("digits")
            argv = [os.path.join(BUILD, "replica", "corral-replica"), "--model-repo", repo,
                    "--model", "held", "--listen", "tcp://127.0.0.1:0", "--device", "cpu",
                    "--test-hooks", "--test-hold-start", cls.gate, "--log-level", "debug"]
            held = Proc(argv, r"answering health at (tcp://127\.0\.0\.1:\d+)")
            c.replicas.append(("held", held))
            # One router thread: every answer below comes from the one view of the table.
            c.router("--threads", "1", "--health-interval-ms", "100",
                     "--replica", "ghost=tcp://127.0.0.1:%d" % free_port())
            c.wait_ready("/v2/models/digits/ready")
            # The held replica has answered health once it shows its version.
            wait_until("the held replica's first health answer", lambda: [
                r for r in c.http("GET", "/v2/corral/replicas")[1]["replicas"]
                if r["model"] == "held" and r["version"] == "1"])
            wait_until("the metadata of digits",
                       lambda: c.http("GET", "/v2/models/digits/config")[0] == 200)
        except Exception:
            c.close()
            cls.tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        stop_and_clean(cls.c, cls.tmp)

    def assert_error(self, status, method, path, body=None, headers=None, contains=""):
        st, r = self.c.http(method, path, body=body, headers=headers)
        self.assertEqual(st, status, r)
        self.assertEqual(list(r), ["error"], r)
        self.assertIn(contains, r["error"])
        return r["error"]

    def index(self, body=None):
        st, r = self.c.http("POST", "/v2/repository/index", body=body)
        self.assertEqual(st, 200, r)
        return r

    def test_1_config(self):
        st, cfg = self.c.http("GET", "/v2/models/digits/config")
        self.assertEqual(st, 200, cfg)
        self.assertEqual(cfg["name"], "digits")
        self.assertEqual(cfg["max_batch_size"], 0)
        self.assertEqual(cfg["input"][0]["dims"], [-1, 64])
        self.assertEqual(cfg["input"][0]["data_type"], "TYPE_FP32")
        self.assertEqual(cfg["instance_group"][0]["kind"], "KIND_CPU")
        self.assertEqual(cfg["instance_group"][0]["count"], 2)
        st, cfg1 = self.c.http("GET", "/v2/models/digits/versions/1/config")
        self.assertEqual((st, cfg1), (200, cfg))
        st, _, resp = self.c.http("HEAD", "/v2/models/digits/config", raw=True)
        self.assertEqual(st, 200)
        self.assertEqual(resp.getheader("Content-Type"), "application/json")
        self.assert_error(404, "GET", "/v2/models/nosuch/config", contains="unknown model")
        self.assert_error(404, "GET", "/v2/models/digits/versions/2/config",
                          contains="unknown version '2'")
        self.assert_error(405, "POST", "/v2/models/digits/config", body="{}")
        # A model whose replicas have not described themselves yet has no configuration.
        self.assert_error(503, "GET", "/v2/models/held/config", contains="not available yet")
        self.assert_error(503, "GET", "/v2/models/ghost/config", contains="not available yet")

    def test_1_index(self):
        idx = self.index()
        by = {e["name"]: e for e in idx}
        self.assertEqual([e["name"] for e in idx], ["digits", "ghost", "held"])
        self.assertEqual(by["digits"], {"name": "digits", "version": "1", "state": "READY",
                                        "reason": ""})
        self.assertEqual(by["held"]["version"], "1")
        self.assertEqual(by["held"]["state"], "UNAVAILABLE")
        self.assertIn("starting", by["held"]["reason"])
        self.assertNotIn("version", by["ghost"])
        self.assertEqual(by["ghost"]["state"], "UNAVAILABLE")
        self.assertTrue(by["ghost"]["reason"])
        # The reason is the replica table's: why that replica takes no traffic (read twice
        # until both agree, as it may change between the two requests).
        def same_reason():
            why = [r["why"] for r in self.c.http("GET", "/v2/corral/replicas")[1]["replicas"]
                   if r["model"] == "ghost"]
            return [e["reason"] for e in self.index() if e["name"] == "ghost"] == why
        wait_until("the ghost's reason in the index and the table", same_reason)
        for body in ("", "{}", '{"ready": false}', ' {"ready": false, "x": 1} '):
            self.assertEqual(self.index(body), idx, body)
        self.assertEqual(self.index('{"ready": true}'), [by["digits"]])

    def test_1_index_bad_requests(self):
        self.assert_error(400, "POST", "/v2/repository/index", body='{"ready": "yes"}',
                          contains="'ready' must be true or false")
        self.assert_error(400, "POST", "/v2/repository/index", body="[]",
                          contains="must be a JSON object")
        self.assert_error(400, "POST", "/v2/repository/index", body='{"ready": tr',
                          contains="not valid JSON")
        self.assert_error(400, "POST", "/v2/repository/index", body=b'{"ready": "\xff"}',
                          contains="not valid JSON")
        st, r, resp = self.c.http("GET", "/v2/repository/index", raw=True)
        self.assertEqual(st, 405)
        self.assertEqual(resp.getheader("Allow"), "POST")
        for verb in ("load", "unload"):
            self.assert_error(501, "POST", "/v2/repository/models/digits/" + verb, body="",
                              contains="corral-scheduler")
        self.assert_error(415, "POST", "/v2/repository/index", body="x",
                          headers={"Content-Encoding": "gzip"}, contains="uncompressed")
        self.assert_error(404, "POST", "/v2/repository/models/digits/reload", body="")
        # The router still serves after all of it.
        self.assertEqual(self.index('{"ready": true}')[0]["name"], "digits")

    def test_2_held_becomes_ready(self):
        with open(self.gate, "w"):
            pass
        wait_until("held READY in the index", lambda: [
            e for e in self.index('{"ready": true}') if e["name"] == "held"])
        wait_until("the configuration of held",
                   lambda: self.c.http("GET", "/v2/models/held/config")[0] == 200)
        st, cfg = self.c.http("GET", "/v2/models/held/config")
        self.assertEqual(cfg["name"], "held")
        self.assertEqual(cfg["instance_group"][0]["count"], 1)


if __name__ == "__main__":
    testrun.main()
