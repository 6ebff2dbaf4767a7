#!/usr/bin/env python3
"""End-to-end tests of deploy/export/export.py: real models, real exports, real repositories.

Usage: test_export.py [--replica PATH_TO_corral-replica] [unittest options]

Each test runs the export tool as a subprocess into a fresh temporary model
repository and checks what it published (or that it published nothing). With
--replica (or $CORRAL_REPLICA) the tests that need corral-replica's verification
run too; without it they are skipped.
"""

import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import take_replica_arg  # noqa: E402
import testrun  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "deploy" / "export" / "export.py"
REPLICA = os.environ.get("CORRAL_REPLICA") or None
# torch.export-based ONNX export (torch >= 2.5); older torch only has the TorchScript one.
HAS_DYNAMO = "dynamo" in inspect.signature(torch.onnx.export).parameters and hasattr(torch, "export")

# Builders the tests export. They are written into the temporary working
# directory so that the tool's "current directory is importable" rule is used.
NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self, n_in=16, hidden=32, n_out=5):
            super().__init__()
            self.fc1 = nn.Linear(n_in, hidden)
            self.fc2 = nn.Linear(hidden, n_out)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    def mlp(n_in=16, hidden=32, n_out=5):
        return MLP(n_in, hidden, n_out)

    class Tagger(nn.Module):
        """Token ids [batch, seq] -> per-token scores [batch, seq, tags]."""
        def __init__(self, vocab=100, dim=8, tags=3):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            self.out = nn.Linear(dim, tags)

        def forward(self, ids):
            return self.out(torch.tanh(self.emb(ids)))

    def tagger(vocab=100, dim=8, tags=3):
        return Tagger(vocab, dim, tags)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(6, 4)

        def forward(self, a, b):
            h = torch.relu(self.body(a)) + b
            return {"scores": h, "probs": torch.softmax(h, dim=1)}

    def two_heads():
        return TwoHeads()

    class LeakyTrace(nn.Module):
        """Turns a tensor into a Python number inside forward: tracing freezes it
        into a constant, so the ONNX graph is wrong for any other input."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * float(x.abs().max())

    def leaky_trace():
        return LeakyTrace()

    class Odd(nn.Module):
        """Gemm followed by CumSum: onnxruntime runs it, corral's engine does not."""
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return torch.cumsum(self.fc(x), dim=1)

    def odd():
        return Odd()

    def not_a_module():
        return 42
''')


def run_export(cwd, *args, env=None):
    res = subprocess.run([sys.executable, str(EXPORT)] + [str(a) for a in args], cwd=str(cwd),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=600)
    return res.returncode, res.stdout.decode(), res.stderr.decode()


def read_pb(path):
    t = onnx.TensorProto()
    t.ParseFromString(Path(path).read_bytes())
    return t.name, numpy_helper.to_array(t)


class ExportTest(unittest.TestCase):
    def need_replica(self):
        if not REPLICA:
            self.skipTest("no corral-replica given (--replica or $CORRAL_REPLICA)")

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="corral-export-test-")
        self.work = Path(self._tmp.name)
        (self.work / "nets.py").write_text(NETS)
        self.repo = self.work / "repo"
        sys.path.insert(0, str(self.work))
        import nets
        self.nets = nets

    def tearDown(self):
        sys.path.remove(str(self.work))
        sys.modules.pop("nets", None)
        self._tmp.cleanup()

    def export(self, *args, expect=0):
        rc, out, err = run_export(self.work, *args)
        if rc != expect:
            self.fail("export.py %s exited %d, expected %d\nstdout:\n%s\nstderr:\n%s"
                      % (" ".join(map(str, args)), rc, expect, out, err))
        return out, err

    def assert_nothing_published(self, name):
        model_dir = self.repo / name
        if model_dir.exists():
            self.assertEqual([p.name for p in model_dir.iterdir() if p.name.isdigit()], [],
                             "a version was published")
        if self.repo.exists():
            leftovers = [p.name for p in self.repo.iterdir() if p.name.startswith(".")]
            self.assertEqual(leftovers, [], "temporary export directories were left behind")

    def check_vectors(self, name, version, n_vectors, in_names, out_names):
        """Every vector holds named tensors, and onnxruntime reproduces its outputs."""
        vdir = self.repo / name / str(version)
        sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
        vecs = sorted((vdir / "vectors").iterdir(), key=lambda p: int(p.name))
        self.assertEqual([p.name for p in vecs], [str(k) for k in range(n_vectors)])
        shapes = []
        for d in vecs:
            feeds = {}
            for i, n in enumerate(in_names):
                tname, arr = read_pb(d / ("input_%d.pb" % i))
                self.assertEqual(tname, n)
                feeds[n] = arr
            got = sess.run(out_names, feeds)
            for j, n in enumerate(out_names):
                tname, want = read_pb(d / ("output_%d.pb" % j))
                self.assertEqual(tname, n)
                np.testing.assert_allclose(got[j], want, atol=1e-4, rtol=0)
            self.assertFalse((d / ("input_%d.pb" % len(in_names))).exists())
            self.assertFalse((d / ("output_%d.pb" % len(out_names))).exists())
            shapes.append({n: a.shape for n, a in feeds.items()})
        return shapes

    # --- successful exports -------------------------------------------------

    def test_mlp_state_dict(self):
        torch.manual_seed(1)
        m = self.nets.mlp(n_in=16, hidden=32, n_out=5)
        torch.save(m.state_dict(), self.work / "mlp.pt")
        labels = self.work / "classes.txt"
        labels.write_text("a\nb\nc\nd\ne\n")
        out, _ = self.export("--builder", "nets:mlp", "--builder-args", '{"n_in": 16, "hidden": 32, "n_out": 5}',
                             "--state-dict", "mlp.pt", "--input", "x:-1x16:FP32", "--output", "y",
                             "--repo", self.repo, "--name", "mlp", "--labels", labels,
                             "--no-verify-replica")
        for line in ("exporting", "writing 4 parity vectors", "onnxruntime: max |onnx - pytorch| y=",
                     "ops: Gemm x2, Relu x1", "published"):
            self.assertIn(line, out)
        cfg = json.loads((self.repo / "mlp" / "config.json").read_text())
        self.assertEqual(cfg["name"], "mlp")
        self.assertEqual(cfg["platform"], "onnx")
        self.assertEqual(cfg["inputs"], [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}])
        self.assertEqual(cfg["outputs"], [{"name": "y", "datatype": "FP32", "shape": [-1, 5]}])
        self.assertEqual(cfg["labels"], "labels.txt")
        self.assertEqual(cfg["parity"]["atol"], 1e-4)
        self.assertEqual((self.repo / "mlp" / "labels.txt").read_text(), "a\nb\nc\nd\ne\n")
        shapes = self.check_vectors("mlp", 1, 4, ["x"], ["y"])
        self.assertEqual(len({s["x"][0] for s in shapes}), 4, "vectors should vary the batch size")
        self.assertIn(1, {s["x"][0] for s in shapes})

        # The published weights are the file's, not the builder's fresh ones.
        sess = ort.InferenceSession(str(self.repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        x = np.random.RandomState(5).standard_normal((7, 16)).astype(np.float32)
        with torch.no_grad():
            want = m(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(sess.run(["y"], {"x": x})[0], want, atol=1e-5)

        # A second export goes to version 2, keeps fields it does not own and the labels.
        cfg["batching"] = {"max_batch": 8}
        (self.repo / "mlp" / "config.json").write_text(json.dumps(cfg))
        out, _ = self.export("--builder", "nets:mlp", "--seed", "3", "--input", "x:-1x16:FP32",
                             "--output", "y", "--repo", self.repo, "--name", "mlp", "--vectors", "2",
                             "--atol", "1e-3", "--no-verify-replica")
        self.assertIn("published %s" % (self.repo / "mlp" / "2"), out)
        cfg2 = json.loads((self.repo / "mlp" / "config.json").read_text())
        self.assertEqual(cfg2["batching"], {"max_batch": 8})
        self.assertEqual(cfg2["labels"], "labels.txt")
        self.assertEqual(cfg2["parity"]["atol"], 1e-3)
        self.assertTrue((self.repo / "mlp" / "labels.txt").is_file())
        self.check_vectors("mlp", 2, 2, ["x"], ["y"])
        self.check_vectors("mlp", 1, 4, ["x"], ["y"])

        # An existing version is never replaced silently.
        _, err = self.export("--builder", "nets:mlp", "--input", "x:-1x16:FP32", "--repo", self.repo,
                             "--name", "mlp", "--version", "1", "--no-verify-replica", expect=1)
        self.assertIn("exists already", err)

    def test_seed_makes_random_init_reproducible(self):
        for v in (1, 2):
            self.export("--builder", "nets:mlp", "--seed", "7", "--input", "x:-1x16:FP32",
                        "--repo", self.repo, "--name", "r", "--version", v, "--no-verify-replica")
        a = onnx.load(str(self.repo / "r" / "1" / "model.onnx")).graph.initializer
        b = onnx.load(str(self.repo / "r" / "2" / "model.onnx")).graph.initializer
        self.assertEqual([numpy_helper.to_array(t).tolist() for t in a], [numpy_helper.to_array(t).tolist() for t in b])
        cfg = json.loads((self.repo / "r" / "config.json").read_text())
        self.assertEqual(cfg["outputs"][0]["name"], "output")

    def test_lightning_checkpoint(self):
        torch.manual_seed(2)
        inner = self.nets.mlp(n_in=16, hidden=32, n_out=5)
        ckpt = self.work / "last.ckpt"
        try:
            import logging
            import pytorch_lightning as pl
            for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
                logging.getLogger(name).setLevel(logging.ERROR)

            class Wrapper(pl.LightningModule):
                def __init__(self, model):
                    super().__init__()
                    self.model = model
                    self.loss = torch.nn.CrossEntropyLoss(weight=torch.ones(5))

                def training_step(self, batch, _):
                    x, y = batch
                    return self.loss(self.model(x), y)

                def configure_optimizers(self):
                    return torch.optim.SGD(self.parameters(), lr=0.1)

            data = torch.utils.data.TensorDataset(torch.randn(32, 16), torch.randint(0, 5, (32,)))
            trainer = pl.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, default_root_dir=str(self.work))
            wrapper = Wrapper(inner)
            trainer.fit(wrapper, torch.utils.data.DataLoader(data, batch_size=16))
            trainer.save_checkpoint(str(ckpt))
        except ImportError:
            # Without Lightning, a dict of the same shape as its checkpoints.
            torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.0.0",
                        "state_dict": {"model." + k: v for k, v in inner.state_dict().items()}
                        | {"loss.weight": torch.ones(5)},
                        "optimizer_states": [], "lr_schedulers": []}, ckpt)
        raw = torch.load(str(ckpt), map_location="cpu", weights_only=False)
        self.assertIn("state_dict", raw)
        self.assertTrue(all(k.startswith(("model.", "loss.")) for k in raw["state_dict"]))
        out, _ = self.export("--builder", "nets:mlp", "--state-dict", ckpt, "--input", "x:-1x16:FP32",
                             "--repo", self.repo, "--name", "lit", "--no-verify-replica")
        self.assertIn("stripped key prefix 'model.'", out)
        sess = ort.InferenceSession(str(self.repo / "lit" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        x = np.random.RandomState(0).standard_normal((3, 16)).astype(np.float32)
        with torch.no_grad():
            want = inner(torch.from_numpy(x)).numpy()  # the trained weights, shared with the wrapper
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, atol=1e-5)

    def test_int64_ids_with_range_and_dynamic_sequence(self):
        out, _ = self.export("--builder", "nets:tagger", "--builder-args", '{"vocab": 100}', "--seed", "0",
                             "--input", "ids:-1x-1:INT64:0:100", "--output", "scores",
                             "--repo", self.repo, "--name", "tagger", "--vectors", "6",
                             "--no-verify-replica")
        self.assertIn("Gather", out)  # the op list names the embedding lookup
        cfg = json.loads((self.repo / "tagger" / "config.json").read_text())
        self.assertEqual(cfg["inputs"], [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}])
        self.assertEqual(cfg["outputs"][0]["shape"][0], -1)
        self.assertEqual(cfg["outputs"][0]["shape"][1], -1)
        self.assertEqual(cfg["outputs"][0]["shape"][2], 3)
        shapes = self.check_vectors("tagger", 1, 6, ["ids"], ["scores"])
        self.assertGreater(len({s["ids"][1] for s in shapes}), 1, "vectors should vary the sequence length")
        all_ids = np.concatenate([read_pb(p)[1].ravel() for p in
                                  (self.repo / "tagger" / "1" / "vectors").glob("*/input_0.pb")])
        self.assertEqual(all_ids.dtype, np.int64)
        self.assertGreaterEqual(all_ids.min(), 0)
        self.assertLess(all_ids.max(), 100)
        self.assertGreater(len(set(all_ids.tolist())), 20, "ids should spread over [0, 100)")

    def test_two_inputs_dict_outputs_and_dynamo_exporter(self):
        exporter = "dynamo" if HAS_DYNAMO else "torchscript"
        if not HAS_DYNAMO:
            _, err = self.export("--builder", "nets:two_heads", "--input", "a:-1x6:FP32", "--input", "b:-1x4:FP32",
                                 "--repo", self.repo, "--name", "heads", "--exporter", "dynamo",
                                 "--no-verify-replica", expect=1)
            self.assertIn("--exporter dynamo needs torch >= 2.5", err)
        out, _ = self.export("--builder", "nets:two_heads", "--input", "a:-1x6:FP32:-1:1", "--input", "b:-1x4:FP32",
                             "--repo", self.repo, "--name", "heads", "--exporter", exporter,
                             "--no-verify-replica")
        self.assertIn("exporter: " + exporter, out)
        cfg = json.loads((self.repo / "heads" / "config.json").read_text())
        self.assertEqual([o["name"] for o in cfg["outputs"]], ["scores", "probs"])
        self.assertEqual([o["shape"] for o in cfg["outputs"]], [[-1, 4], [-1, 4]])
        shapes = self.check_vectors("heads", 1, 4, ["a", "b"], ["scores", "probs"])
        for s in shapes:
            self.assertEqual(s["a"][0], s["b"][0], "inputs of one vector share the batch size")
        a = read_pb(self.repo / "heads" / "1" / "vectors" / "2" / "input_0.pb")[1]
        self.assertTrue((a >= -1).all() and (a < 1).all())

    # --- refusals -----------------------------------------------------------

    def test_refuses_when_onnx_disagrees_with_pytorch(self):
        # The model scales every row by the batch's largest value: it mixes rows, which
        # batching must not do, so without --no-batching the row check refuses it first.
        rc, out, err = run_export(self.work, "--builder", "nets:leaky_trace", "--seed", "0",
                                  "--input", "x:-1x4:FP32", "--repo", self.repo, "--name", "leaky",
                                  "--exporter", "torchscript", "--no-verify-replica")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("depends on the other rows of its batch", err)
        self.assertIn("pass --no-batching", err)
        self.assertNotIn("onnxruntime", out)
        rc, out, err = run_export(self.work, "--builder", "nets:leaky_trace", "--seed", "0",
                                  "--input", "x:-1x4:FP32", "--repo", self.repo, "--name", "leaky",
                                  "--exporter", "torchscript", "--no-verify-replica", "--no-batching")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("warning: the model's output for a row depends on the other rows", out)
        self.assertIn("does not reproduce PyTorch's outputs within atol", err)
        self.assertIn("nothing was published", err)
        self.assertIn("onnxruntime: max |onnx - pytorch| output=", out)
        self.assert_nothing_published("leaky")

    def test_tolerance_is_enforced(self):
        # The same sound model passes at the default tolerance and is refused at
        # one below the error onnxruntime actually shows against PyTorch.
        # The first seed whose weights give onnxruntime a float difference from PyTorch
        # (a model they compute bit for bit has no tolerance to undercut).
        for seed in ("4", "5", "6", "7"):
            out, _ = self.export("--builder", "nets:mlp", "--builder-args",
                                 '{"n_in": 16, "hidden": 512}', "--seed", seed, "--input",
                                 "x:-1x16:FP32:-100:100", "--repo", self.repo, "--name", "tol",
                                 "--no-verify-replica", "--version", "1", "--overwrite")
            diff = float(out.split("onnxruntime: max |onnx - pytorch| output=")[1].split()[0])
            if diff > 0.0:
                break
        self.assertGreater(diff, 0.0, "onnxruntime matched PyTorch bit for bit for every seed")
        _, err = self.export("--builder", "nets:mlp", "--builder-args", '{"n_in": 16, "hidden": 512}',
                             "--seed", seed, "--input", "x:-1x16:FP32:-100:100", "--repo", self.repo,
                             "--name", "tol", "--atol", "%g" % (diff / 4), "--no-verify-replica", expect=1)
        self.assertIn("within atol", err)
        self.assertEqual(sorted(p.name for p in (self.repo / "tol").iterdir() if p.name.isdigit()), ["1"])
        self.assertEqual(json.loads((self.repo / "tol" / "config.json").read_text())["parity"]["atol"], 1e-4)
        self.assert_nothing_published("nonexistent")

    def test_bad_dims(self):
        for spec, what in (("x:-1xabc:FP32", "DIMS"), ("x:0x4:FP32", "DIMS"), ("x:-1x4", "NAME:DIMS:DTYPE"),
                           ("x:-1x4:FLOAT7", "unknown datatype"), ("x:-1x4:INT64:5:1", "MIN"),
                           ("x:-1x4:INT64:a:b", "integers")):
            rc, out, err = run_export(self.work, "--builder", "nets:mlp", "--input", spec,
                                      "--repo", self.repo, "--name", "m", "--no-verify-replica")
            self.assertEqual(rc, 2, spec)
            self.assertIn(what, err, spec)
        self.assert_nothing_published("m")

    def test_bad_builder(self):
        cases = (("nosuchmodule:build", "cannot import builder module 'nosuchmodule'"),
                 ("nets:nosuchfn", "has no function 'nosuchfn'"),
                 ("nets:not_a_module", "expected a torch.nn.Module"),
                 ("nets", "must be MODULE:FUNCTION"))
        for ref, what in cases:
            rc, out, err = run_export(self.work, "--builder", ref, "--input", "x:-1x16:FP32",
                                      "--repo", self.repo, "--name", "m", "--no-verify-replica")
            self.assertNotEqual(rc, 0, ref)
            self.assertIn(what, err, ref)
        rc, _, err = run_export(self.work, "--builder", "nets:mlp", "--builder-args", '{"bogus": 1}',
                                "--input", "x:-1x16:FP32", "--repo", self.repo, "--name", "m",
                                "--no-verify-replica")
        self.assertEqual(rc, 1)
        self.assertIn("bogus", err)
        rc, _, err = run_export(self.work, "--builder", "nets:mlp", "--builder-args", '[1]',
                                "--input", "x:-1x16:FP32", "--repo", self.repo, "--name", "m")
        self.assertEqual(rc, 2)
        self.assertIn("JSON object", err)
        self.assert_nothing_published("m")

    def test_state_dict_mismatch(self):
        torch.save(self.nets.mlp(hidden=8).state_dict(), self.work / "small.pt")
        _, err = self.export("--builder", "nets:mlp", "--state-dict", "small.pt", "--input", "x:-1x16:FP32",
                             "--repo", self.repo, "--name", "m", "--no-verify-replica", expect=1)
        self.assertIn("does not match the model", err)
        self.assertIn("fc1.weight: file (8, 16), model (32, 16)", err)
        torch.save({"encoder.weight": torch.zeros(3)}, self.work / "other.pt")
        _, err = self.export("--builder", "nets:mlp", "--state-dict", "other.pt", "--input", "x:-1x16:FP32",
                             "--repo", self.repo, "--name", "m", "--no-verify-replica", expect=1)
        self.assertIn("4 missing from the file", err)
        self.assertIn("1 not in the model (encoder.weight)", err)
        _, err = self.export("--builder", "nets:mlp", "--state-dict", "absent.pt", "--input", "x:-1x16:FP32",
                             "--repo", self.repo, "--name", "m", "--no-verify-replica", expect=1)
        self.assertIn("does not exist", err)
        # A wrong input width surfaces as PyTorch's own error, with the shapes tried.
        _, err = self.export("--builder", "nets:mlp", "--input", "x:-1x15:FP32",
                             "--repo", self.repo, "--name", "m", "--no-verify-replica", expect=1)
        self.assertIn("x[2, 15]", err)
        self.assert_nothing_published("m")

    def test_missing_replica_is_an_error(self):
        _, err = self.export("--builder", "nets:mlp", "--input", "x:-1x16:FP32", "--repo", self.repo,
                             "--name", "m", "--replica", self.work / "no-such-replica", expect=1)
        self.assertIn("not an executable file", err)
        self.assert_nothing_published("m")

    # --- with corral-replica ------------------------------------------------

    def test_replica_verifies_mlp(self):
        self.need_replica()
        torch.manual_seed(3)
        torch.save(self.nets.mlp().state_dict(), self.work / "mlp.pt")
        out, _ = self.export("--builder", "nets:mlp", "--state-dict", "mlp.pt", "--input", "x:-1x16:FP32",
                             "--output", "y", "--repo", self.repo, "--name", "mlp", "--vectors", "5",
                             "--replica", REPLICA)
        self.assertIn("verifying with corral-replica", out)
        self.assertIn("corral-replica reproduced all 5 parity vectors", out)
        self.check_vectors("mlp", 1, 5, ["x"], ["y"])

    def test_replica_refusal_blocks_publication(self):
        self.need_replica()
        # onnxruntime runs CumSum; the engine does not, so the replica cannot load
        # the model and the export must not publish it.
        rc, out, err = run_export(self.work, "--builder", "nets:odd", "--input", "x:-1x4:FP32",
                                  "--repo", self.repo, "--name", "odd", "--replica", REPLICA)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("onnxruntime: max |onnx - pytorch|", out)
        self.assertIn("corral-replica --verify failed", err)
        self.assert_nothing_published("odd")


def main():
    global REPLICA
    REPLICA, rest = take_replica_arg(sys.argv[1:])
    argv = [sys.argv[0]] + rest
    if REPLICA and not os.access(REPLICA, os.X_OK):
        print("test_export.py: --replica %s is not an executable file" % REPLICA, file=sys.stderr)
        return 2
    prog = unittest.main(argv=argv, exit=False, verbosity=2)
    return testrun.verdict(prog.result)


if __name__ == "__main__":
    sys.exit(main())
