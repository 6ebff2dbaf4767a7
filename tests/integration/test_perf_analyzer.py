"""perf_analyzer, Triton's load generator, unmodified against a real cluster:
it reads the model configuration (max_batch_size, dims) and metadata, then
sends load at batch 1 and 4 with JSON and with binary tensors. Every run must
exit 0 (perf_analyzer fails on any request error), the server must count no
failed request, and every request must have carried exactly the batch asked
(rows = batch x requests in the router's statistics). A model that does not
batch is measured with --shape, and perf_analyzer refuses it a batch of 4 on
the strength of its max_batch_size 0.

perf_analyzer is fetched by bench/perf_analyzer.sh --fetch (the pinned
tritonclient 2.51.0 wheel, cached outside the tree); where that cannot be done
(no network, not x86_64, no libb64-0d) the whole entry is skipped (exit 77).

Usage: test_perf_analyzer.py BUILD_DIR REPO_ROOT
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_protocol_util import start_cluster, stop_and_clean  # noqa: E402
import testrun  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]


def fetch():
    """The directory holding bin/perf_analyzer and lib/, or a skip with the reason."""
    env = dict(os.environ, CORRAL_PYTHON=sys.executable)
    try:
        p = subprocess.run([os.path.join(ROOT, "bench", "perf_analyzer.sh"), "--fetch"],
                           env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        testrun.skip_all("fetching perf_analyzer took over 2 minutes")
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines()
        testrun.skip_all("perf_analyzer cannot be had here: %s" % (lines[-1] if lines else
                                                                   "exit %d" % p.returncode))
    return p.stdout.strip().splitlines()[-1]


PA_DIR = fetch()


class PerfAnalyzer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-pa-")
        for name, batching in (("digits", {"max_batch_size": 8, "max_queue_delay_us": 0}),
                               ("plain", None)):
            d = os.path.join(cls.tmp.name, name)
            shutil.copytree(os.path.join(ROOT, "models", "digits"), d)
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            cfg["name"] = name
            cfg.pop("batching", None)
            if batching:
                cfg["batching"] = batching
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
        cls.c = start_cluster(BUILD, cls.tmp.name, [("digits", []), ("plain", [])])

    @classmethod
    def tearDownClass(cls):
        stop_and_clean(cls.c, cls.tmp)

    def counts(self, model):
        """(requests answered, rows, failed requests) of the model, from its statistics."""
        st, r = self.c.http("GET", "/v2/models/%s/stats" % model)
        self.assertEqual(st, 200, r)
        e = r["model_stats"][0]
        return (e["inference_stats"]["success"]["count"], e["inference_count"],
                e["inference_stats"]["fail"]["count"])

    def perf_analyzer(self, *args):
        """Runs perf_analyzer for a fixed number of requests (no stability windows, which a
        busy machine can fail); returns the process and its CSV rows."""
        csv_path = os.path.join(self.tmp.name, "pa.csv")
        if os.path.exists(csv_path):
            os.unlink(csv_path)
        argv = [os.path.join(PA_DIR, "bin", "perf_analyzer"), "-u", "127.0.0.1:%d" % self.c.port,
                "-i", "http", "--request-count", "300", "-f", csv_path] + list(args)
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(PA_DIR, "lib"))
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        rows = []
        if p.returncode == 0:
            with open(csv_path) as f:
                rows = list(csv.DictReader(f))
        return p, rows

    def test_batches_and_tensor_formats(self):
        for batch in (1, 4):
            for fmt in ("json", "binary"):
                with self.subTest(batch=batch, tensors=fmt):
                    ok0, rows0, fail0 = self.counts("digits")
                    p, rows = self.perf_analyzer("-m", "digits", "-b", str(batch),
                                                 "--concurrency-range", "2",
                                                 "--input-tensor-format", fmt,
                                                 "--output-tensor-format", fmt)
                    self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])
                    self.assertEqual(len(rows), 1, rows)
                    self.assertGreater(float(rows[0]["Inferences/Second"]), 0)
                    ok1, rows1, fail1 = self.counts("digits")
                    self.assertEqual(fail1, fail0)
                    self.assertGreater(ok1, ok0)
                    # Each request carried the batch perf_analyzer was asked for.
                    self.assertEqual(rows1 - rows0, batch * (ok1 - ok0))

    def test_model_without_batching(self):
        # max_batch_size 0: the dims keep the variable first dimension, given by --shape.
        ok0, _, fail0 = self.counts("plain")
        p, rows = self.perf_analyzer("-m", "plain", "--shape", "input:1,64")
        self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])
        ok1, _, fail1 = self.counts("plain")
        self.assertGreater(ok1, ok0)
        self.assertEqual(fail1, fail0)
        p, _ = self.perf_analyzer("-m", "plain", "--shape", "input:1,64", "-b", "4")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("does not support batching", p.stdout + p.stderr)


if __name__ == "__main__":
    testrun.main()
