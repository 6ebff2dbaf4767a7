"""Bearer tokens: a router started with --token-file lets nobody infer without the token.

Over HTTP every endpoint but health, model readiness and /metrics answers 401 (with
WWW-Authenticate) without "Authorization: Bearer <token>" or with another token, and
works with it; over RPC, corralctl (libcorral) without --token-file or with another
token's file gets UNAUTHORIZED, with the right one the answer, and health needs none.
The refusals are counted as 401 in /metrics, and the token appears in no log line of
the router or the replica.

Usage: test_auth.py BUILD_DIR REPO_ROOT
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402
from cluster import digits_request  # noqa: E402
from test_protocol_util import make_repo, start_cluster, stop_and_clean  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
TOKEN = "corral-test-token-5b1e9f"
CTL = os.path.join(BUILD, "client", "corralctl")


class Auth(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-auth-")
        make_repo(cls.tmp.name, ROOT)
        cls.token_file = os.path.join(cls.tmp.name, "token")
        with open(cls.token_file, "w") as f:
            f.write(TOKEN + "\n")
        cls.wrong_file = os.path.join(cls.tmp.name, "wrong")
        with open(cls.wrong_file, "w") as f:
            f.write(TOKEN + "x\n")
        cls.c = start_cluster(BUILD, cls.tmp.name, [("digits", [])],
                              router_args=["--token-file", cls.token_file,
                                           "--health-interval-ms", "2000"])
        cls.body = json.dumps(digits_request(ROOT))

    @classmethod
    def tearDownClass(cls):
        out = cls.c.router_proc.output() + "".join(r.output() for _, r in cls.c.replicas)
        stop_and_clean(cls.c, cls.tmp)
        # The token was sent a hundred times; it is never written anywhere.
        if TOKEN in out:
            raise AssertionError("the token appears in a log line")

    def http(self, method, path, token=None, scheme="Bearer", body=None):
        headers = {}
        if token is not None:
            headers["Authorization"] = "%s %s" % (scheme, token)
        st, r, resp = self.c.http(method, path, body=body, headers=headers, raw=True)
        return st, r, resp

    def test_http_endpoints_need_the_token(self):
        protected = [("POST", "/v2/models/digits/infer", self.body),
                     ("POST", "/v1/models/digits:predict",
                      json.dumps({"instances": [[0.0] * 64]})),
                     ("GET", "/v2/models/digits", None),
                     ("GET", "/v2/models/digits/config", None),
                     ("GET", "/v2/models/digits/stats", None),
                     ("GET", "/v2/corral/replicas", None),
                     ("GET", "/v2", None),
                     ("POST", "/v2/repository/index", "{}"),
                     ("POST", "/v2/models/digits/classify", b"\xff\xd8\xff")]
        for method, path, body in protected:
            for token, scheme in ((None, "Bearer"), (TOKEN + "x", "Bearer"), (TOKEN[:-1], "Bearer"),
                                  ("", "Bearer"), (TOKEN, "Basic")):
                with self.subTest(path=path, token=token, scheme=scheme):
                    st, r, resp = self.http(method, path, token, scheme, body)
                    self.assertEqual(st, 401, r)
                    self.assertEqual(resp.getheader("WWW-Authenticate"), 'Bearer realm="corral"')
                    self.assertIn("bearer token", json.loads(r)["error"])
            with self.subTest(path=path, token="right"):
                st, r, _ = self.http(method, path, TOKEN, "Bearer", body)
                self.assertNotEqual(st, 401, r)
                if path != "/v2/models/digits/classify":  # digits takes no images: 400
                    self.assertEqual(st, 200, r)
        # The scheme is case-insensitive, blanks around the token are not part of it.
        st, r, _ = self.http("POST", "/v2/models/digits/infer", " %s " % TOKEN, "bearer", self.body)
        self.assertEqual(st, 200, r)

    def test_probes_need_none(self):
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready",
                     "/v1/models/digits", "/metrics"):
            with self.subTest(path=path):
                st, r, _ = self.http("GET", path)
                self.assertEqual(st, 200, r)

    def test_refusals_counted(self):
        def refused():
            st, text, _ = self.http("GET", "/metrics")
            return sum(float(v) for v in re.findall(
                r'corral_router_requests_total\{model="",[^}]*protocol="http",code="401"\} (\S+)',
                text.decode()))
        before = refused()
        for _ in range(7):
            st, _, _ = self.http("POST", "/v2/models/digits/infer", None, body=self.body)
            self.assertEqual(st, 401)
        self.assertEqual(refused() - before, 7)

    def ctl(self, *args):
        sample = os.path.join(ROOT, "models", "digits", "sample.json")
        return subprocess.run([CTL, "infer", "--rpc", self.c.rpc_url, "--model", "digits"] +
                              list(args) + [sample], capture_output=True, text=True, timeout=60)

    def test_rpc_needs_the_token(self):
        p = self.ctl()
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("UNAUTHORIZED", p.stderr)
        p = self.ctl("--token-file", self.wrong_file)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("UNAUTHORIZED", p.stderr)
        p = self.ctl("--token-file", self.token_file)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["outputs"][0]["shape"], [1, 10])
        p = subprocess.run([CTL, "health", "--rpc", self.c.rpc_url], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.ctl("--token-file", os.path.join(self.tmp.name, "missing"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("missing", p.stderr)


if __name__ == "__main__":
    testrun.main(argv=sys.argv[3:])
