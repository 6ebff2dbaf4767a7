#!/usr/bin/env python3
"""The export tool's --checkpoint forms and batching flags, end to end.

Usage: test_export_forms.py [unittest options]

Each test saves what a PyTorch user would (a checkpoint dict, a Lightning .ckpt,
TorchScript, an ExportedProgram, a pickled module, files that are wrong in one way),
runs deploy/export/export.py on it (its main() in this process, or a subprocess
where the environment matters) and checks what it published,
against PyTorch in eval mode, or that it refused with a message naming the file or
field and published nothing. Verification is onnxruntime's (--no-verify-replica);
test_from_pytorch.py serves the forms through corral-replica.
"""

import contextlib
import copy
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "deploy" / "export" / "export.py"
sys.path.insert(0, str(EXPORT.parent))
_spec = importlib.util.spec_from_file_location("corral_export_tool", EXPORT)
export_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_tool)

NETS = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        """BatchNorm and Dropout: what eval mode changes."""
        def __init__(self, hidden=24, classes=5):
            super().__init__()
            self.fc1 = nn.Linear(16, hidden)
            self.bn = nn.BatchNorm1d(hidden)
            self.drop = nn.Dropout(0.5)
            self.fc2 = nn.Linear(hidden, classes)

        def forward(self, x):
            return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))

    def net(hidden=24, classes=5):
        return Net(hidden, classes)

    def net_needs(hidden, classes=5):
        return Net(hidden, classes)

    class NormOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 8)
            self.bn = nn.BatchNorm1d(8)

        def forward(self, x):
            return self.bn(self.fc(x))

    class Cfg:
        def __init__(self, hidden):
            self.hidden = hidden
''')

# Stand-ins that fail any import of Lightning, put first on the export tool's path to
# show that it reads Lightning checkpoints without it.
NO_LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def trained(nets, hidden=24):
    """A Net with non-trivial BatchNorm statistics, in training mode."""
    torch.manual_seed(0)
    m = nets.net(hidden=hidden)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(30):
        x = torch.randn(32, 16) * 2 + 1
        loss = torch.nn.functional.cross_entropy(m(x), torch.randint(0, 5, (32,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, opt


class ExportForms(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        warnings.simplefilter("ignore")
        cls._tmp = tempfile.TemporaryDirectory(prefix="corral-export-forms-")
        cls.work = Path(cls._tmp.name)
        # The tool resolves the files it is given, and imports builders, from here.
        cls._cwd = os.getcwd()
        os.chdir(str(cls.work))
        (cls.work / "nets.py").write_text(NETS)
        block = cls.work / "no_lightning"
        block.mkdir()
        for m in NO_LIGHTNING:
            (block / (m + ".py")).write_text("raise ImportError('the export tool imported %s')\n" % m)
        sys.path.insert(0, str(cls.work))
        import nets
        cls.nets = nets
        cls.model, opt = trained(nets)
        cls.model32, _ = trained(nets, hidden=32)
        w = cls.work
        torch.save({"model_state": cls.model32.state_dict(), "optimizer_state": opt.state_dict(), "epoch": 3,
                    "val_loss": 0.25, "config": {"hidden": 32, "classes": 5}}, w / "checkpoint.pt")
        x4 = torch.randn(4, 16)
        batch = torch.export.Dim("batch")
        cls.model.train()
        torch.jit.save(torch.jit.trace(cls.model, x4, check_trace=False), w / "traced_train.pt")
        norm = nets.NormOnly().train()
        norm(torch.randn(32, 16) * 3)
        torch.export.save(torch.export.export(norm, (x4,), dynamic_shapes=({0: batch},)), w / "norm_train.pt2")
        cls.model.eval()
        torch.jit.save(torch.jit.trace(cls.model, x4), w / "traced.pt")
        torch.export.save(torch.export.export(cls.model, (x4,), dynamic_shapes=({0: batch},)), w / "prog.pt2")
        torch.export.save(torch.export.export(cls.model, (x4,)), w / "static.pt2")
        torch.save(cls.model, w / "whole.pt")
        torch.save({"model_state": cls.model.state_dict(), "config": nets.Cfg(24)}, w / "cfgobj.pt")

    @classmethod
    def tearDownClass(cls):
        os.chdir(cls._cwd)
        sys.path.remove(str(cls.work))
        sys.modules.pop("nets", None)
        cls._tmp.cleanup()

    def setUp(self):
        self.repo = Path(tempfile.mkdtemp(prefix="repo-", dir=str(self.work)))

    def export(self, *args, expect=0, env=None):
        """Runs the export tool into self.repo as model 'm'; returns (stdout, stderr).

        In this process (its main(), as the command line calls it) to spare each export
        the import of torch; as a subprocess when `env` is given."""
        argv = [str(a) for a in args] + ["--repo", str(self.repo), "--name", "m", "--vectors", "2",
                                         "--no-verify-replica"]
        if env is not None:
            res = subprocess.run([sys.executable, str(EXPORT)] + argv, cwd=str(self.work), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=dict(os.environ, PYTHONWARNINGS="ignore", **env), timeout=600)
            rc, out, err = res.returncode, res.stdout, res.stderr
        else:
            out_buf, err_buf = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
                try:
                    rc = export_tool.main(argv)
                except SystemExit as ex:   # argparse's usage errors
                    rc = ex.code
            out, err = out_buf.getvalue(), err_buf.getvalue()
        if rc != expect:
            self.fail("export.py %s exited %s, expected %d\nstdout:\n%s\nstderr:\n%s"
                      % (" ".join(argv), rc, expect, out, err))
        if expect == 1:
            self.assertIn("nothing was published", err)
        if expect:
            self.assert_nothing_published()
        return out, err

    def assert_nothing_published(self):
        self.assertFalse((self.repo / "m").exists(), "a model directory was published")
        self.assertEqual([p.name for p in self.repo.iterdir() if p.name.startswith(".")], [],
                         "temporary export directories were left behind")

    def config(self):
        return json.loads((self.repo / "m" / "config.json").read_text())

    def served_like(self, model, version=1):
        """The published ONNX answers as `model` does in eval mode (and not as in training)."""
        sess = ort.InferenceSession(str(self.repo / "m" / str(version) / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        x = (np.random.RandomState(3).standard_normal((6, 16)) * 2 + 1).astype(np.float32)
        got = sess.run(None, {"x": x})[0]
        # A copy runs in training mode, where BatchNorm would update the model's statistics.
        model, training = copy.deepcopy(model).eval(), copy.deepcopy(model).train()
        with torch.no_grad():
            np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-4, rtol=0)
            self.assertGreater(np.abs(training(torch.from_numpy(x)).numpy() - got).max(), 1e-2)

    # --- the forms -------------------------------------------------------------

    def test_checkpoint_dict_config_and_provenance(self):
        out, _ = self.export("--builder", "nets:net", "--checkpoint", "checkpoint.pt", "--input", "x:-1x16:FP32")
        self.assertIn("a checkpoint dict, weights under 'model_state'", out)
        self.assertIn("builder arguments from the checkpoint's 'config' (no --builder-args given): "
                      '{"hidden": 32, "classes": 5}', out)
        self.assertIn("not used (recorded in config.json's provenance): optimizer_state, epoch, val_loss", out)
        self.assertIn("eval mode: model.eval() called", out)
        self.served_like(self.model32)
        prov = self.config()["provenance"]["1"]
        self.assertEqual(prov["form"], "checkpoint dict")
        self.assertEqual(prov["weights_key"], "model_state")
        self.assertEqual(prov["builder_args"], {"hidden": 32, "classes": 5})
        self.assertEqual(prov["builder_args_from"], "the checkpoint's 'config'")
        self.assertEqual(prov["ignored"], {"optimizer_state": "a dict of 2 entries", "epoch": 3, "val_loss": 0.25})
        self.assertEqual(prov["mode"], "eval")
        self.assertEqual(len(prov["sha256"]), 64)

        # --builder-args wins over the file's config; a second version keeps the first's provenance.
        out, _ = self.export("--builder", "nets:net", "--builder-args", '{"hidden": 32}', "--state-dict",
                             "checkpoint.pt", "--input", "x:-1x16:FP32")
        self.assertIn("builder arguments from --builder-args; the checkpoint's 'config' is not used", out)
        prov = self.config()["provenance"]
        self.assertEqual(sorted(prov), ["1", "2"])
        self.assertEqual(prov["2"]["builder_args_from"], "--builder-args")

    def test_other_weight_and_config_keys(self):
        for wkey, hkey in (("model_state_dict", "hparams"), ("model", "hyper_parameters")):
            path = self.work / ("%s.pt" % wkey)
            torch.save({wkey: self.model32.state_dict(), hkey: {"hidden": 32}, "step": 7}, path)
            out, _ = self.export("--builder", "nets:net", "--checkpoint", path.name, "--input", "x:-1x16:FP32",
                                 "--overwrite", "--version", "1")
            self.assertIn("weights under '%s'" % wkey, out)
            self.assertIn("builder arguments from the checkpoint's '%s'" % hkey, out)
            self.assertEqual(self.config()["provenance"]["1"]["ignored"], {"step": 7})
            self.served_like(self.model32)

    def test_lightning_checkpoint_read_without_lightning(self):
        import logging
        import pytorch_lightning as pl
        from pytorch_lightning.utilities.parsing import AttributeDict
        for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        nets = self.nets

        class Lit(pl.LightningModule):
            def __init__(self, hidden=24, classes=5):
                super().__init__()
                self.save_hyperparameters()
                self.net = nets.net(hidden, classes)
                self.loss = torch.nn.CrossEntropyLoss(weight=torch.ones(classes))

            def training_step(self, batch, _):
                x, y = batch
                return self.loss(self.net(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        torch.manual_seed(4)
        lit = Lit(hidden=20)
        data = torch.utils.data.TensorDataset(torch.randn(64, 16) * 2 + 1, torch.randint(0, 5, (64,)))
        trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=str(self.work))
        trainer.fit(lit, torch.utils.data.DataLoader(data, batch_size=16))
        trainer.save_checkpoint(str(self.work / "lit.ckpt"))
        # Older Lightning saved hyper-parameters as its AttributeDict.
        raw = torch.load(str(self.work / "lit.ckpt"), weights_only=False)
        raw["hyper_parameters"] = AttributeDict(raw["hyper_parameters"])
        torch.save(raw, self.work / "lit_attrdict.ckpt")

        block = {"PYTHONPATH": str(self.work / "no_lightning")}
        for ck in ("lit.ckpt", "lit_attrdict.ckpt"):
            out, _ = self.export("--builder", "nets:net", "--checkpoint", ck, "--input", "x:-1x16:FP32",
                                 "--overwrite", "--version", "1", env=block)
            self.assertIn("a PyTorch Lightning checkpoint (Lightning %s), weights under 'state_dict'"
                          % pl.__version__, out)
            self.assertIn("builder arguments from the checkpoint's 'hyper_parameters' (no --builder-args "
                          'given): {"hidden": 20, "classes": 5}', out)
            self.assertIn("stripped key prefix 'net.' from the checkpoint (the LightningModule attribute", out)
            self.assertIn("ignored 1 checkpoint entries outside 'net.' (the wrapper's own): loss.weight", out)
            self.served_like(lit.net)
        self.assertIn("global_step", self.config()["provenance"]["1"]["ignored"])

    def test_torchscript_and_exported_program_need_no_builder(self):
        for ck, form, exporter in (("traced.pt", "a TorchScript module", "torchscript"),
                                   ("prog.pt2", "an ExportedProgram (torch.export)", "dynamo")):
            out, _ = self.export("--checkpoint", ck, "--input", "x:-1x16:FP32", "--overwrite", "--version", "1")
            self.assertIn(form, out)
            self.assertIn("exporter: " + exporter, out)
            self.assertNotIn("building", out)
            self.served_like(self.model)
            self.assertEqual(self.config()["provenance"]["1"]["form"], {"torchscript": "TorchScript"}.get(
                exporter, "ExportedProgram"))
        self.assertIn("an ExportedProgram keeps the mode it was exported in", out)

    def test_whole_pickled_module_refused_unless_trusted(self):
        _, err = self.export("--builder", "nets:net", "--checkpoint", "whole.pt", "--input", "x:-1x16:FP32",
                             expect=1)
        self.assertIn("--checkpoint 'whole.pt' holds a whole pickled module (nets.Net)", err)
        self.assertIn("torch.save(model.state_dict(), 'model.pt')", err)
        self.assertIn("--trust-checkpoint", err)
        out, _ = self.export("--checkpoint", "whole.pt", "--trust-checkpoint", "--input", "x:-1x16:FP32")
        self.assertIn("exporting the unpickled nets.Net itself", out)
        self.served_like(self.model)

    # --- refusals ---------------------------------------------------------------

    def test_training_mode_artifacts_are_refused(self):
        _, err = self.export("--checkpoint", "traced_train.pt", "--input", "x:-1x16:FP32", expect=1)
        self.assertIn("two runs of the PyTorch model on the same input gave different 'output'", err)
        self.assertIn("Dropout is active", err)
        self.assertIn("trace or script it after model.eval()", err)
        _, err = self.export("--checkpoint", "norm_train.pt2", "--input", "x:-1x16:FP32", expect=1)
        self.assertIn("depends on the other rows of its batch", err)
        self.assertIn("call model.eval() before torch.export.export", err)

    def test_graph_files_refuse_a_builder_and_a_wrong_input(self):
        _, err = self.export("--builder", "nets:net", "--checkpoint", "prog.pt2", "--input", "x:-1x16:FP32",
                             expect=1)
        self.assertIn("is an ExportedProgram (torch.export), which carries the model's graph: --builder is not "
                      "used with it", err)
        _, err = self.export("--checkpoint", "static.pt2", "--input", "x:-1x16:FP32", expect=1)
        self.assertIn("dimension 0 of input 'x' is fixed at 4 in the program, but --input 'x' declares it "
                      "dynamic (-1)", err)
        self.assertIn("dynamic_shapes={'x': {0: torch.export.Dim('batch')}}", err)
        _, err = self.export("--checkpoint", "prog.pt2", "--input", "x:-1x16:INT64", expect=1)
        self.assertIn("input 0 ('x') is FP32 in the program, but --input 'x' says INT64", err)
        _, err = self.export("--checkpoint", "checkpoint.pt", "--input", "x:-1x16:FP32", expect=1)
        self.assertIn("--checkpoint 'checkpoint.pt' is a checkpoint dict: it holds the weights but not the "
                      "model's code; give --builder", err)

    def test_builder_arguments_checked(self):
        torch.save({"model_state": self.model.state_dict(), "config": {"hidden": 24, "classes": 5, "lr": 0.1}},
                   self.work / "extra.pt")
        _, err = self.export("--builder", "nets:net", "--checkpoint", "extra.pt", "--input", "x:-1x16:FP32",
                             expect=1)
        self.assertIn("builder nets:net does not take lr, given by the checkpoint's 'config' (it takes: hidden, "
                      "classes); give the arguments it takes with --builder-args, e.g. --builder-args "
                      '\'{"hidden": 24, "classes": 5}\'', err)
        _, err = self.export("--builder", "nets:net_needs", "--input", "x:-1x16:FP32", expect=1)
        self.assertIn("builder nets:net_needs needs hidden (no default); pass it with --builder-args", err)
        torch.save({"model_state": self.model.state_dict(), "config": "hidden=24"}, self.work / "strcfg.pt")
        _, err = self.export("--builder", "nets:net", "--checkpoint", "strcfg.pt", "--input", "x:-1x16:FP32",
                             expect=1)
        self.assertIn("--checkpoint 'strcfg.pt': entry 'config' is a string of 9 characters, expected a dict of "
                      "the builder's keyword arguments", err)

    def test_unsafe_types_are_named(self):
        _, err = self.export("--builder", "nets:net", "--checkpoint", "cfgobj.pt", "--input", "x:-1x16:FP32",
                             expect=1)
        self.assertIn("--checkpoint 'cfgobj.pt' holds objects of type nets.Cfg, which weights-only loading "
                      "refuses", err)
        self.assertIn("--trust-checkpoint", err)

    def test_bad_files(self):
        (self.work / "notes.txt").write_text("not a checkpoint\n")
        torch.save([torch.zeros(2)], self.work / "list.pt")
        torch.save({"weights": {"fc1.weight": torch.zeros(2)}, "epoch": 1}, self.work / "nokey.pt")
        torch.save({"model_state": [1, 2], "epoch": 1}, self.work / "notmap.pt")
        cases = (("notes.txt", "cannot load --checkpoint 'notes.txt'"),
                 ("list.pt", "--checkpoint 'list.pt' holds a list; expected a state_dict"),
                 ("nokey.pt", "--checkpoint 'nokey.pt' is a dict with entries weights, epoch: none of "
                              "'model_state', 'model_state_dict', 'state_dict', 'model' holds the weights"),
                 ("notmap.pt", "--checkpoint 'notmap.pt': entry 'model_state' is a list of 2 items, expected the "
                               "model's state_dict"),
                 ("absent.pt", "--checkpoint file 'absent.pt' does not exist"))
        for f, what in cases:
            _, err = self.export("--builder", "nets:net", "--checkpoint", f, "--input", "x:-1x16:FP32", expect=1)
            self.assertIn(what, err, f)

    def test_loading_is_strict(self):
        sd = {"net." + k: v for k, v in self.model.state_dict().items()}
        sd.pop("net.bn.running_var")
        sd["net.extra.weight"] = torch.zeros(3)
        sd["loss.weight"] = torch.ones(5)
        torch.save({"state_dict": sd}, self.work / "loose.pt")
        _, err = self.export("--builder", "nets:net", "--checkpoint", "loose.pt", "--input", "x:-1x16:FP32",
                             expect=1)
        self.assertIn("--checkpoint 'loose.pt' does not match the model built by nets:net (after stripping "
                      "'net.'): 1 missing from the file (bn.running_var); 1 not in the model (extra.weight)", err)

    # --- batching ---------------------------------------------------------------

    def test_batching_default_and_flags(self):
        torch.save(self.model.state_dict(), self.work / "sd.pt")
        args = ("--builder", "nets:net", "--checkpoint", "sd.pt", "--input", "x:-1x16:FP32")
        out, _ = self.export(*args)
        self.assertEqual(self.config()["batching"], {"max_batch_size": 16, "max_queue_delay_us": 0})
        self.assertIn("batching: max_batch_size 16, max_queue_delay_us 0 (batch what is already waiting, add no "
                      "delay), buckets 1, 2, 4, 8, 16; --no-batching turns it off", out)
        # Flags change the section; without flags the section in place is kept.
        self.export(*args, "--max-batch-size", "32", "--queue-delay-us", "500")
        self.assertEqual(self.config()["batching"], {"max_batch_size": 32, "max_queue_delay_us": 500})
        self.export(*args, "--buckets", "1,4,8")
        self.assertEqual(self.config()["batching"],
                         {"max_batch_size": 8, "batch_buckets": [1, 4, 8], "max_queue_delay_us": 500})
        out, _ = self.export(*args)
        self.assertIn("batching: kept the existing config.json's section", out)
        self.assertEqual(self.config()["batching"]["batch_buckets"], [1, 4, 8])
        out, _ = self.export(*args, "--no-batching")
        self.assertNotIn("batching", self.config())
        self.assertIn("off (--no-batching): each request runs alone; the existing config.json's section was "
                      "removed", out)

    def test_batching_needs_a_batch_axis(self):
        torch.save(self.model.state_dict(), self.work / "sd.pt")
        out, _ = self.export("--builder", "nets:net", "--checkpoint", "sd.pt", "--input", "x:2x16:FP32")
        self.assertNotIn("batching", self.config())
        self.assertIn("batching: off: input 'x' has a fixed first dimension (2x16)", out)
        self.repo = Path(tempfile.mkdtemp(prefix="repo-", dir=str(self.work)))
        for flags, what in ((["--input", "x:2x16:FP32", "--max-batch-size", "8"],
                             "--max-batch-size need a dynamic batch axis (-1 first) on every input; input 'x' "
                             "has DIMS 2x16"),
                            (["--input", "x:-1x16:FP32", "--no-batching", "--buckets", "1,2"],
                             "--no-batching cannot be combined with --buckets"),
                            (["--input", "x:-1x16:FP32", "--buckets", "4,2"],
                             "--buckets '4,2' must be increasing positive batch sizes"),
                            (["--input", "x:-1x16:FP32", "--buckets", "1,4", "--max-batch-size", "8"],
                             "--buckets '1,4' must end at --max-batch-size (8)"),
                            (["--input", "x:-1x16:FP32", "--max-batch-size", "0"],
                             "--max-batch-size must be from 1 to 1048576, got 0")):
            _, err = self.export("--builder", "nets:net", *flags, expect=2)
            self.assertIn(what, err, flags)


def main():
    prog = unittest.main(exit=False, verbosity=2)
    return testrun.verdict(prog.result)


if __name__ == "__main__":
    sys.exit(main())
