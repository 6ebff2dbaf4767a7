#!/usr/bin/env python3
"""Model parity through the real replica: the zoo's models served end to end match PyTorch.

Usage: test_model_parity.py --build BUILD_DIR [--device cpu|cuda:0] [--models a,b,...]

Every model of bench/models/zoo.py (resnet18, mobilenet_v2, squeezenet1_1,
mlp, transformer) is exported with deploy/export/export.py (random weights,
--seed 0) into one temporary model repository; the export tool publishes it
only after corral-replica --verify reproduced its parity vectors. One real
corral-replica per model then serves it behind a real corral-router on
loopback, and batches of 1 and 8 are sent over HTTP (batch 1 as JSON, batch 8
as binary tensor data) and compared with the logits PyTorch computes in this
process from the same seed: every logit within 1e-3.

With --device cuda:0 the same requests run against replicas on the GPU: a
ctest entry of its own, which exits 77 (skipped, with the reason) before any
export when nvidia-smi lists no device, and skips its tests when
corral-replica was built without the CUDA backend.
A model whose export fails (an op the engine does not support, say) fails its
tests with the export tool's own message.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import shutil
import time
import unittest
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from cluster import Cluster, ProcessFailed, cuda_devices, infer_binary, replica_on  # noqa: E402
from bench.models import zoo  # noqa: E402
import testrun  # noqa: E402

EXPORT = ROOT / "deploy" / "export" / "export.py"
SEED = 0
ATOL = 1e-3
BATCHES = (1, 8)
# Sequence lengths of the transformer's requests, per batch size: two lengths so
# that the replica runs the variable sequence axis at more than one size.
SEQ_LEN = {1: 7, 8: 16}
ALL_MODELS = ("mlp", "transformer", "squeezenet1_1", "mobilenet_v2", "resnet18")

OPTS = None  # the parsed command line, set in main()


def export_model(name, repo, replica):
    """Runs the export tool for one zoo model; returns (ok, seconds, output)."""
    spec = zoo.SPECS[name]
    cmd = [sys.executable, str(EXPORT), "--builder", "bench.models.zoo:%s" % name, "--seed", str(SEED),
           "--output", spec["output"], "--repo", repo, "--name", name, "--atol", str(ATOL),
           "--replica", replica]
    for s in spec["inputs"]:
        cmd += ["--input", s]
    t0 = time.time()
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=str(ROOT), timeout=900)
    return res.returncode == 0, time.time() - t0, res.stdout


def make_input(name, batch, rng):
    """(input name, wire datatype, array) of a request of `batch` rows for model `name`."""
    if name == "transformer":
        return "ids", "INT64", rng.randint(0, zoo.TRANSFORMER_VOCAB, size=(batch, SEQ_LEN[batch])).astype(np.int64)
    if name == "mlp":
        return "input", "FP32", rng.standard_normal((batch, 784)).astype(np.float32)
    return "input", "FP32", rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)


def torch_logits(name, arrays):
    """PyTorch's logits for each array, from the model built exactly as the export tool builds it."""
    torch.manual_seed(SEED)
    model = zoo.build(name).eval()  # as the export tool does after building
    with torch.inference_mode():
        return [model(torch.from_numpy(a)).numpy() for a in arrays]


def failure_summary(text):
    """The lines of the export tool's output that say what went wrong."""
    lines = [l for l in text.splitlines() if l.startswith("export: error")]
    return "\n".join(lines) or "\n".join(text.splitlines()[-15:])


class ModelParity(unittest.TestCase):
    """One export per model, shared by every test; one replica per model and device."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="corral-parity-")
        cls.repo = os.path.join(cls.tmp, "models")
        replica = os.path.join(OPTS.build, "replica", "corral-replica")
        cls.exports = {}
        # Exports run two at a time (each is mostly single-threaded Python and
        # one replica --verify); PyTorch's reference logits are computed meanwhile.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futs = {m: pool.submit(export_model, m, cls.repo, replica) for m in OPTS.models}
            rng = np.random.RandomState(1234)
            cls.requests = {m: [make_input(m, b, rng) for b in BATCHES] for m in OPTS.models}
            cls.expected = {m: torch_logits(m, [a for _, _, a in cls.requests[m]]) for m in OPTS.models}
            for m, f in futs.items():
                cls.exports[m] = f.result()
        for m in OPTS.models:
            ok, secs, out = cls.exports[m]
            print("export %-14s %s in %.1f s%s" % (m, "published" if ok else "FAILED", secs,
                                                   "" if ok else ": " + failure_summary(out)), flush=True)
        cls.clusters = {}
        cls.start_errors = {}

    @classmethod
    def tearDownClass(cls):
        for c in cls.clusters.values():
            if c is not None:
                c.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def cluster(self, device):
        """A router over one replica per exported model on `device`, started on first use."""
        if device in self.clusters:
            if self.clusters[device] is None:
                self.skipTest(self.start_errors[device])
            return self.clusters[device]
        c = Cluster(OPTS.build, self.repo)
        self.clusters[device] = c
        for m in OPTS.models:
            if not self.exports[m][0]:
                continue
            try:
                # Without a batching section in config.json the replica's stall limit is
                # 300 ms, shorter than a batch of 8 images takes on a slow or sanitized
                # build; parity, not liveness, is what this test checks.
                replica_on(c, m, device, "--stall-ms", "120000")
            except ProcessFailed as ex:
                text = str(ex)
                # A build without the CUDA backend is a reason to skip; a CUDA build that
                # cannot use a device nvidia-smi lists is a failure.
                if device != "cpu" and "no CUDA backend" in text:
                    c.close()
                    self.clusters[device] = None
                    self.start_errors[device] = "corral-replica cannot use %s: %s" % (
                        device, text.strip().splitlines()[-1])
                    self.skipTest(self.start_errors[device])
                self.start_errors[(device, m)] = text
        if c.replicas:
            c.router()
            c.wait_ready()
        return c

    def check(self, model, device, batch):
        ok, _, out = self.exports[model]
        if not ok:
            self.fail("export of %s failed:\n%s" % (model, failure_summary(out)))
        c = self.cluster(device)
        if (device, model) in self.start_errors:
            self.fail("corral-replica for %s on %s did not start:\n%s"
                      % (model, device, self.start_errors[(device, model)]))
        k = BATCHES.index(batch)
        name, dt, arr = self.requests[model][k]
        want = self.expected[model][k]
        if batch == 1:
            body = {"id": "%s-b%d" % (model, batch),
                    "inputs": [{"name": name, "datatype": dt, "shape": list(arr.shape),
                                "data": arr.ravel().tolist()}]}
            status, resp = c.http("POST", "/v2/models/%s/infer" % model, body)
        else:
            status, resp = infer_binary(c, model, [(name, dt, arr)], outputs=["logits"])
        self.assertEqual(status, 200, resp)
        outs = {o["name"]: o for o in resp["outputs"]}
        self.assertIn("logits", outs, resp)
        o = outs["logits"]
        self.assertEqual(o["datatype"], "FP32")
        self.assertEqual(o["shape"], list(want.shape))
        got = np.asarray(o["data"], dtype=np.float32).reshape(want.shape)
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
        print("%s %s batch %d: max |corral - pytorch| %.3g (logits up to %.3g)"
              % (model, device, batch, diff, float(np.abs(want).max())), flush=True)
        self.assertLessEqual(diff, ATOL, "%s on %s, batch %d: logits differ from PyTorch by %.3g"
                             % (model, device, batch, diff))
        # A result that agreed only because every logit is tiny would prove nothing.
        self.assertGreater(float(np.abs(want).max()), 10 * ATOL)



def _add_tests(models, device):
    """One test per model and batch size on `device`."""
    for m in models:
        for b in BATCHES:
            def test(self, m=m, b=b):
                self.check(m, device, b)
            setattr(ModelParity, "test_%s_%s_batch%d" % (m, device.split(":")[0], b), test)


class TransformerIsTorchEncoder(unittest.TestCase):
    """The exported transformer's plain layers compute what nn.TransformerEncoder does."""

    def test_same_logits_as_nn_transformer_encoder(self):
        torch.manual_seed(SEED)
        plain = zoo.build("transformer")
        fused = zoo.TransformerClassifier(fused=True).eval()
        fused.load_state_dict(plain.state_dict(), strict=True)
        ids = torch.randint(0, zoo.TRANSFORMER_VOCAB, (3, 11))
        with torch.inference_mode():
            d = (plain(ids) - fused(ids)).abs().max().item()
        self.assertLess(d, 1e-5)


def main():
    global OPTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", required=True, help="CMake build directory holding replica/ and router/")
    p.add_argument("--device", default="cpu", help="device of the replicas: cpu (default) or cuda:N")
    p.add_argument("--models", default=",".join(ALL_MODELS),
                   help="comma-separated zoo models to test (default: all)")
    OPTS = p.parse_args()
    OPTS.models = [m for m in OPTS.models.split(",") if m]
    bad = [m for m in OPTS.models if m not in ALL_MODELS]
    if bad:
        p.error("unknown model(s) %s; expected some of %s" % (", ".join(bad), ", ".join(ALL_MODELS)))
    if OPTS.device != "cpu" and not cuda_devices():
        testrun.skip_all("no CUDA device for %s: nvidia-smi is missing or lists no GPU" % OPTS.device)
    _add_tests(OPTS.models, OPTS.device)
    loader = unittest.defaultTestLoader
    suite = loader.loadTestsFromTestCase(ModelParity)
    if OPTS.device == "cpu":
        suite.addTests(loader.loadTestsFromTestCase(TransformerIsTorchEncoder))
    testrun.main(suite)


if __name__ == "__main__":
    main()
