#!/usr/bin/env python3
"""docs/from-pytorch.md, run: every artifact PyTorch users arrive with, exported and served.

Usage: test_from_pytorch.py BUILD_DIR [unittest options]

The page's Python blocks are written out as files (each starts with '# NAME.py'), the
save_*.py scripts run in the page's order, and each export command of the page runs
as written ('python' and '$CORRAL' replaced by this interpreter and the source tree,
plus --replica for the build's corral-replica). Then one corral-replica per model
behind one corral-router serves the five models, and each answer is compared with
what PyTorch computes in eval mode from the same artifact.
"""

import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import unittest
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOC = ROOT / "docs" / "from-pytorch.md"
sys.path.insert(0, str(HERE))
from cluster import Cluster, infer_binary  # noqa: E402
import testrun  # noqa: E402

BUILD = None
EXPORT = ROOT / "deploy" / "export" / "export.py"
# The page's models, the artifact each is exported from and how PyTorch loads it for
# the reference answers.
MODELS = {
    "mynet_state_dict": "mynet.pt",
    "mynet_checkpoint": "checkpoint.pt",
    "mynet_lightning": "lit.ckpt",
    "mynet_torchscript": "mynet_script.pt",
    "mynet_export": "mynet.pt2",
}


# Runs each script named on the command line as `python SCRIPT` would.
RUN_SCRIPTS = """
import runpy, sys
sys.path.insert(0, "")
for script in sys.argv[1:]:
    print("running", script, flush=True)
    runpy.run_path(script, run_name="__main__")
"""


def doc_blocks():
    """[(language, text)] of the page's fenced code blocks, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", DOC.read_text(), re.M | re.S)]


def export_commands(blocks):
    """The export commands of the page's sh blocks, as argument lists."""
    cmds = []
    for lang, text in blocks:
        if lang != "sh":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            if line.startswith("python $CORRAL/deploy/export/export.py"):
                argv = shlex.split(line)
                cmds.append([sys.executable, str(EXPORT)] + argv[2:])
    return cmds


class FromPyTorch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="corral-from-pytorch-")
        cls.work = Path(cls._tmp.name)
        blocks = doc_blocks()
        scripts = []
        for lang, text in blocks:
            m = re.match(r"# (\w+\.py)\n", text)
            if lang == "python" and m:
                (cls.work / m.group(1)).write_text(text)
                if m.group(1).startswith("save_"):
                    scripts.append(m.group(1))
        cls.scripts = scripts
        cls.commands = export_commands(blocks)
        replica = os.path.join(BUILD, "replica", "corral-replica")
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        # The save scripts run one after the other in one interpreter, as separate
        # `python save_X.py` runs would, but importing torch once.
        res = subprocess.run([sys.executable, "-c", RUN_SCRIPTS] + scripts, cwd=str(cls.work), env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        cls.results = {}
        if res.returncode != 0:
            cls.results["saving"] = (res.returncode, res.stdout)

        def export(cmd):
            res = subprocess.run(cmd + ["--replica", replica], cwd=str(cls.work), env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
            return cmd[cmd.index("--name") + 1], res.returncode, res.stdout

        if not cls.results:
            # Two at a time: each is mostly one single-threaded Python process.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                cls.results = {n: (rc, out) for n, rc, out in pool.map(export, cls.commands)}
        cls.cluster = None

    @classmethod
    def tearDownClass(cls):
        if cls.cluster is not None:
            cls.cluster.close()
        cls._tmp.cleanup()

    def serving(self):
        """One replica per exported model behind one router, started on first use."""
        failed = {k: out for k, (rc, out) in self.results.items() if rc != 0}
        if failed:
            self.fail("the page's steps failed:\n" + "\n".join("%s:\n%s" % kv for kv in failed.items()))
        if type(self).cluster is None:
            c = Cluster(BUILD, str(self.work / "models"))
            type(self).cluster = c
            for name in MODELS:
                c.replica(name)
            # Health every 2 s: a probe answered late on a loaded machine does not take a
            # model's one replica out of rotation in the middle of the comparison.
            c.router("--health-interval-ms", "2000")
            c.wait_ready()
        return type(self).cluster

    def reference(self, name, x, train=False):
        """PyTorch's answer from the artifact itself: eval mode, or training mode with train."""
        sys.path.insert(0, str(self.work))
        try:
            import mynet
            path = str(self.work / MODELS[name])
            if name == "mynet_torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)   # TorchScript's deprecation
                    model = torch.jit.load(path)
            elif name == "mynet_export":
                model = torch.export.load(path).module()
            else:
                raw = torch.load(path, weights_only=False)
                if name == "mynet_state_dict":
                    model, sd = mynet.build(), raw
                elif name == "mynet_checkpoint":
                    model, sd = mynet.build(**raw["config"]), raw["model_state"]
                else:
                    model = mynet.build(**raw["hyper_parameters"])
                    sd = {k[len("model."):]: v for k, v in raw["state_dict"].items()}
                model.load_state_dict(sd)
            if name != "mynet_export":
                model.train(train)
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()
        finally:
            sys.path.remove(str(self.work))
            sys.modules.pop("mynet", None)

    def test_every_artifact_of_the_page_is_covered(self):
        self.assertEqual(self.scripts, ["save_state_dict.py", "save_checkpoint.py", "save_lightning.py",
                                        "save_torchscript.py", "save_export.py"])
        names = [c[c.index("--name") + 1] for c in self.commands]
        self.assertEqual(names, list(MODELS))
        for cmd in self.commands:
            self.assertIn(cmd[cmd.index("--checkpoint") + 1], MODELS.values())

    def test_export_says_what_it_found(self):
        self.serving()
        logs = {name: out for name, (_, out) in self.results.items()}
        self.assertIn("a state_dict", logs["mynet_state_dict"])
        self.assertIn("weights under 'model_state'", logs["mynet_checkpoint"])
        self.assertIn("builder arguments from the checkpoint's 'config'", logs["mynet_checkpoint"])
        self.assertIn("a PyTorch Lightning checkpoint", logs["mynet_lightning"])
        self.assertIn("stripped key prefix 'model.'", logs["mynet_lightning"])
        self.assertIn("a TorchScript module", logs["mynet_torchscript"])
        self.assertIn("an ExportedProgram", logs["mynet_export"])
        for name, out in logs.items():
            self.assertIn("corral-replica reproduced all 4 parity vectors", out, name)
            if name != "mynet_export":
                self.assertIn("eval mode: model.eval() called", out, name)
            self.assertIn("for each row alone as in a batch", out, name)
        for name in MODELS:
            cfg = json.loads((self.work / "models" / name / "config.json").read_text())
            self.assertEqual(cfg["batching"], {"max_batch_size": 16, "max_queue_delay_us": 0}, name)
            self.assertEqual(cfg["provenance"]["1"]["checkpoint"], MODELS[name])
        cfg = json.loads((self.work / "models" / "mynet_checkpoint" / "config.json").read_text())
        self.assertEqual(cfg["provenance"]["1"]["ignored"]["epoch"], 3)
        self.assertEqual(cfg["provenance"]["1"]["builder_args"], {"hidden": 32, "classes": 5})

    def test_served_answers_are_eval_mode_pytorch(self):
        c = self.serving()
        x = (np.random.RandomState(7).standard_normal((6, 16)) * 2 + 1).astype(np.float32)
        for name in MODELS:
            want = self.reference(name, x)
            status, body = infer_binary(c, name, [("x", "FP32", x)])
            self.assertEqual(status, 200, body)
            (out,) = body["outputs"]
            self.assertEqual((out["name"], out["shape"]), ("logits", [6, 5]))
            got = np.asarray(out["data"], dtype=np.float32).reshape(6, 5)
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=name)
            if name != "mynet_export":
                # Training mode (Dropout on, BatchNorm on the batch's statistics) answers
                # differently: the match above is with eval mode, not by accident.
                self.assertGreater(np.abs(self.reference(name, x, train=True) - got).max(), 1e-2, name)
        # Every replica runs the batching section the export wrote.
        for name, proc in c.replicas:
            self.assertIn("batching: max_batch_size 16, max_queue_delay_us 0", proc.output(), name)

    def test_concurrent_requests_each_get_their_own_answer(self):
        c = self.serving()
        rng = np.random.RandomState(11)
        rows = [(rng.standard_normal((1 + k % 3, 16)) * 2 + 1).astype(np.float32) for k in range(24)]
        want = [self.reference("mynet_checkpoint", r) for r in rows]

        def one(k):
            client = Cluster(BUILD, c.repo)   # starts nothing: one HTTP connection of its own
            client.port = c.port
            try:
                return infer_binary(client, "mynet_checkpoint", [("x", "FP32", rows[k])])
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(len(rows))))
        for k, (status, body) in enumerate(answers):
            self.assertEqual(status, 200, body)
            got = np.asarray(body["outputs"][0]["data"], dtype=np.float32).reshape(want[k].shape)
            np.testing.assert_allclose(got, want[k], atol=1e-4, rtol=0)


def main():
    global BUILD
    if len(sys.argv) < 2:
        print("usage: test_from_pytorch.py BUILD_DIR [unittest options]", file=sys.stderr)
        return 2
    BUILD = os.path.abspath(sys.argv[1])
    for b in ("replica/corral-replica", "router/corral-router"):
        if not os.access(os.path.join(BUILD, b), os.X_OK):
            testrun.skip_all("%s is not built in %s" % (b, BUILD))
    prog = unittest.main(argv=[sys.argv[0]] + sys.argv[2:], exit=False, verbosity=2)
    return testrun.verdict(prog.result)


if __name__ == "__main__":
    sys.exit(main())
