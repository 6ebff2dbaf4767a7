"""The scheduler's operator page (GET / on the admin API) and the per-model traffic its
status carries, against a real corral-scheduler cluster (two digits replicas) under
load from this test.

Without a browser (entry integration_operator_page):
- GET / is one self-contained HTML page: text/html, every src/href a data: URL, a
  Content-Security-Policy that lets it load nothing from elsewhere; served without the
  token when admin.token_file is set, while GET /v1/status is 401 without it; POST /
  is 405 and an unknown path 404 naming GET /.
- models[].traffic: null at the first status read, though the cluster ran for two
  scrape periods before (an idle cluster is not scraped); under load a rate > 0 and a
  p99 in milliseconds; once the load stops, rate 0 and p99 null; then a burst of
  exactly N requests: the windows that follow add up (rate_rps x window_s) to N.

In headless chromium (entry integration_operator_page_chromium, skipped without it):
- `--dump-dom` after a virtual time budget (the script ran and fetched the status):
  each replica's name and pid as /v1/status and /proc say, the model's desired and
  ready, a numeric request rate > 0 and a p99; `--screenshot` is a 1280x800 PNG.
- with admin.token_file: the DOM shows the token form and no replica; with
  #token=TOKEN in the URL the replicas (and not the token); with a wrong token the
  error and the form again.

Usage: test_operator_page.py BUILD_DIR REPO_ROOT [--chromium PATH]
"""
import html.parser
import http.client
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import wait_until  # noqa: E402
from test_control_plane import Load  # noqa: E402
from test_scheduler_run import SchedulerHarness, children  # noqa: E402
import testrun  # noqa: E402

ROOT = os.path.abspath(sys.argv[2])
CHROMIUM = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--chromium" else None
TOKEN = "s3cret-operator-token"
MODELS = [{"name": "digits", "version": 1, "replicas": 2, "threads": 1}]
SCRAPE_EVERY_S = 2.0  # SCHED_SCRAPE_EVERY_MS in scheduler/scrape.h


class Dom(html.parser.HTMLParser):
    """A dumped DOM: each table's body rows as {data-field: text}, the attributes of
    every element with an id, and the text inside each such element."""

    VOID = {"meta", "link", "input", "br", "img", "hr", "col", "source", "wbr"}

    def __init__(self, text):
        super().__init__()
        self.rows, self.ids, self.text = {}, {}, {}
        self._table = self._row = self._field = None
        self._tbody = False
        self._open = []  # the id (or None) of each element we are inside
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids[a["id"]] = a
            self.text[a["id"]] = ""
        if tag not in self.VOID:
            self._open.append(a.get("id"))
        if tag == "table":
            self._table = a.get("id")
            self.rows.setdefault(self._table, [])
        elif tag == "tbody":
            self._tbody = True
        elif tag == "tr" and self._table and self._tbody:
            self._row = {}
            self.rows[self._table].append(self._row)
        elif tag == "td" and self._row is not None:
            self._field = a.get("data-field")
            self._row[self._field] = ""

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self._open:
            self._open.pop()
        if tag == "td":
            self._field = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._tbody = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._row is not None and self._field:
            self._row[self._field] += data
        for i in self._open:
            if i:
                self.text[i] += data

    def shown(self, id_):
        return id_ in self.ids and "hidden" not in self.ids[id_]


class OperatorPage(SchedulerHarness, unittest.TestCase):
    # The cluster as test_scheduler_run.py starts and tears it down.

    def get(self, path, token=None, method="GET"):
        """(status, headers, body text) of one admin call."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=30)
        conn.request(method, path, headers={"Authorization": "Bearer " + token} if token else {})
        r = conn.getresponse()
        body = r.read().decode()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    def start_cluster(self, token=False):
        token_file = None
        if token:
            token_file = os.path.join(self.tmp.name, "admin.token")
            with open(token_file, "w") as f:
                f.write(TOKEN + "\n")
        self.start(os.path.join(ROOT, "models"), MODELS, token_file=token_file)
        wait_until("2 ready replicas", lambda: len(self.ready_replicas("digits")) == 2, 60)
        self.token = TOKEN if token else None

    def traffic(self):
        return self.status(self.token)["models"][0]["traffic"]

    def wait_traffic(self, what, cond, timeout=40):
        """Reads the status (which keeps the scraper going) until cond(traffic)."""
        return wait_until(what, lambda: (lambda t: t if t and cond(t) else None)(self.traffic()),
                          timeout, every=0.1)

    def chromium(self, url, *extra):
        with tempfile.TemporaryDirectory(prefix="corral-chromium-") as profile:
            p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                                "--no-first-run", "--user-data-dir=" + profile,
                                "--virtual-time-budget=5000"] + list(extra) + [url],
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        return p.stdout

    def page_url(self, fragment=""):
        return "http://127.0.0.1:%d/%s" % (self.admin_port, fragment)

    # ---- without a browser ---------------------------------------------------------

    def assert_page(self, token):
        st, h, page = self.get("/")
        self.assertEqual(st, 200, page)
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        self.assertIn("default-src 'none'", h["content-security-policy"])
        self.assertIn("connect-src 'self'", h["content-security-policy"])
        self.assertTrue(page.startswith("<!doctype html>"), page[:100])
        self.assertIn("/v1/status", page)
        refs = re.findall(r"""\b(?:src|href|action)\s*=\s*["']?([^"'\s>]*)""", page)
        self.assertEqual([r for r in refs if not r.startswith("data:")], [], refs)
        self.assertNotRegex(page, r"@import|url\(|https?://")
        self.assertEqual(self.get("/", token, method="POST")[0], 405)
        st, _, body = self.get("/nope", token)
        self.assertEqual(st, 404)
        self.assertIn("GET / (the operator page)", body)

    def test_page_and_traffic(self):
        self.start_cluster()
        # Two scrape periods and more with nobody reading the status: no scrape ran,
        # so the first read finds no samples (nominally none; a scraper that ran on
        # its own would have two by now).
        time.sleep(2.5 * SCRAPE_EVERY_S)
        self.assertIsNone(self.traffic())
        self.assert_page(None)

        self.load = Load(self.c, self.body, clients=2)
        t = self.wait_traffic("traffic under load", lambda t: t["rate_rps"] > 0)
        self.assertIsNotNone(t["p99_ms"], t)
        self.assertTrue(0 < t["p99_ms"] < 10000, t)
        self.assertTrue(1.0 <= t["window_s"] < 10 * SCRAPE_EVERY_S, t)
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.load = None
        t = self.wait_traffic("a window with no request", lambda t: t["rate_rps"] == 0)
        self.assertIsNone(t["p99_ms"], t)

        # Exactly N requests, then windows until one is empty again: rate x window
        # adds up to N, whichever windows the burst fell into (N odd: two windows
        # that split it always differ, so each is seen once).
        n = 51
        seen = [(t["rate_rps"], t["window_s"])]
        for _ in range(n):
            st, r = self.c.http("POST", "/v2/models/digits/infer", self.body)
            self.assertEqual(st, 200, r)

        def burst_counted():
            t = self.traffic()
            now = (t["rate_rps"], t["window_s"])
            if now != seen[-1]:
                seen.append(now)
            return len(seen) > 2 and now[0] == 0
        wait_until("the burst's windows and an empty one after", burst_counted, 40, every=0.1)
        counted = sum(r * w for r, w in seen[1:-1])
        print("a burst of %d requests, as the status counted it (rate_rps, window_s): %s"
              % (n, seen[1:-1]))
        self.assertEqual(round(counted), n, seen)
        self.assertAlmostEqual(counted, n, delta=0.01 * n)
        # A clean stop (the sanitizer build checks for leaks at exit).
        self.sched.p.send_signal(signal.SIGTERM)
        self.assertEqual(self.sched.p.wait(90), 0, self.sched.output()[-3000:])

    def test_token_http(self):
        self.start_cluster(token=True)
        self.assert_page(TOKEN)
        st, h, body = self.get("/v1/status")
        self.assertEqual(st, 401, body)
        self.assertEqual(h.get("www-authenticate"), "Bearer")
        self.assertEqual(self.get("/v1/status", "wrong")[0], 401)
        self.assertIn("traffic", self.status(TOKEN)["models"][0])

    # ---- in headless chromium ------------------------------------------------------

    def assert_replicas_shown(self, dom, st):
        """The DOM's replica rows are the status's replicas (names, pids), and the
        model row its desired and ready."""
        rows = dom.rows["replicas"]
        self.assertEqual([r["name"] for r in rows], [r["name"] for r in st["replicas"]], rows)
        self.assertEqual([int(r["pid"]) for r in rows], [r["pid"] for r in st["replicas"]], rows)
        models = dom.rows["models"]
        self.assertEqual(len(models), 1, models)
        self.assertEqual(models[0]["name"], "digits")
        self.assertEqual(int(models[0]["desired"]), st["models"][0]["desired"])
        self.assertEqual(int(models[0]["ready"]), st["models"][0]["ready"])
        self.assertTrue(dom.shown("cluster"))
        self.assertFalse(dom.shown("login"))
        return models[0]

    def test_page_in_chromium(self):
        self.start_cluster()
        self.load = Load(self.c, self.body, clients=2)
        self.wait_traffic("traffic under load", lambda t: t["rate_rps"] > 0)
        before = self.status()
        dom = Dom(self.chromium(self.page_url(), "--dump-dom"))
        after = self.status()
        self.assertEqual([r["pid"] for r in before["replicas"]],
                         [r["pid"] for r in after["replicas"]], "the cluster changed meanwhile")
        # The scheduler's own children, from /proc: what the page must show.
        kids = sorted(p for p, comm in children(self.sched.p.pid).items()
                      if comm == "corral-replica")
        self.assertEqual(sorted(r["pid"] for r in after["replicas"]), kids)
        model = self.assert_replicas_shown(dom, after)
        self.assertEqual((int(model["desired"]), int(model["ready"])), (2, 2))
        self.assertRegex(model["rate"], r"^\d+(\.\d+)?$", model)
        self.assertGreater(float(model["rate"]), 0, model)
        self.assertRegex(model["p99"], r"^\d+(\.\d+)? ms$", model)
        self.assertFalse(dom.shown("error"), dom.text.get("error"))
        for r in dom.rows["replicas"]:
            self.assertEqual(r["state"], "ready", r)

        png = os.path.join(self.tmp.name, "page.png")
        self.chromium(self.page_url(), "--screenshot=" + png, "--window-size=1280,800",
                      "--hide-scrollbars")
        with open(png, "rb") as f:
            data = f.read()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(data[12:16], b"IHDR")
        self.assertEqual(struct.unpack(">II", data[16:24]), (1280, 800))
        self.load.stop()
        self.assertEqual(self.load.bad, [])
        self.load = None

    def test_token_form_in_chromium(self):
        self.start_cluster(token=True)
        # No token: the form, and nothing of the cluster.
        dom = Dom(self.chromium(self.page_url(), "--dump-dom"))
        self.assertTrue(dom.shown("login"))
        self.assertFalse(dom.shown("cluster"))
        self.assertFalse(dom.shown("error"), dom.text.get("error"))
        self.assertEqual(dom.rows["replicas"], [])
        self.assertEqual(dom.rows["models"], [])
        self.assertNotIn("digits#", "".join(dom.text.values()))

        # #token=TOKEN: taken, sent, the replicas shown; the token itself nowhere.
        text = self.chromium(self.page_url("#token=" + TOKEN), "--dump-dom")
        self.assert_replicas_shown(Dom(text), self.status(TOKEN))
        self.assertNotIn(TOKEN, text)

        # A wrong token: refused, said so, asked again.
        dom = Dom(self.chromium(self.page_url("#token=wrong"), "--dump-dom"))
        self.assertTrue(dom.shown("login"))
        self.assertFalse(dom.shown("cluster"))
        self.assertTrue(dom.shown("error"))
        self.assertIn("token was refused", dom.text["error"])
        self.assertIn("wrong", dom.text["error"])
        self.assertEqual(dom.rows["replicas"], [])


BROWSER_TESTS = ("test_page_in_chromium", "test_token_form_in_chromium")

if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[3] == "--chromium":
        if not CHROMIUM or not os.access(CHROMIUM, os.X_OK):
            testrun.skip_all("chromium not found (Debian package chromium)")
        testrun.main(unittest.TestSuite([OperatorPage(n) for n in BROWSER_TESTS]))
    testrun.main(unittest.TestSuite(
        [t for t in unittest.TestLoader().loadTestsFromTestCase(OperatorPage)
         if t._testMethodName not in BROWSER_TESTS]))
