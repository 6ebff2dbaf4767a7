#!/usr/bin/env python3
"""Trains the bundled digits model and publishes it as models/digits version 1.

Deterministic: seeded, single-threaded, deterministic kernels, a fixed
stratified 80/20 split of sklearn's digits (random_state 0). Running it twice
gives identical weights and logits on the same machine and library versions.

It writes, relative to the source tree:
  models/digits/digits.pt             the state_dict (raw 0..16 pixels in, logits out)
  models/digits/{config.json,labels.txt,1/}   via deploy/export/export.py
  models/digits/sample.json           an infer request body for one held-out image
  models/digits/sample.label          that image's true label
  models/digits/README.md             what the model is, and that sample's label
  tests/data/digits_heldout.json      held-out inputs, labels, PyTorch logits,
                                      predictions and accuracy

Options are passed on to the export tool: --replica PATH, --no-verify-replica.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from models.digits.model import build  # noqa: E402

SEED = 0
EPOCHS = 60
BATCH = 64
LR = 1e-2
HIDDEN = 64
PIXEL_MAX = 16.0


def set_deterministic():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed by an earlier parallel call; one compute thread is what matters
    torch.use_deterministic_algorithms(True)


def load_split():
    d = load_digits()
    x = d.data.astype(np.float32)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


def train(x_train, y_train):
    model = build(hidden=HIDDEN)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    xs = torch.from_numpy(x_train / PIXEL_MAX)
    ys = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xs), generator=gen)
        total = 0.0
        for i in range(0, len(xs), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 20 == 19 or epoch == EPOCHS - 1:
            print("epoch %d: train loss %.4f" % (epoch + 1, total / len(xs)), flush=True)
    model.eval()
    # The served model takes raw pixels, so the /16 of training moves into fc1.
    model.fold_input_scale(1.0 / PIXEL_MAX)
    return model


def f32(v):
    """The shortest decimal that reads back as the same float32."""
    return float(np.format_float_positional(np.float32(v), unique=True, trim="0"))


def write_heldout(path, x, y, logits, pred, acc):
    rows = lambda name, vals: '  "%s": [\n%s\n  ]' % (name, ",\n".join("    " + json.dumps(v) for v in vals))
    body = ",\n".join([
        '  "accuracy": %s' % json.dumps(acc),
        '  "n": %d' % len(y),
        rows("inputs", [[float(p) for p in r] for r in x]),
        '  "labels": %s' % json.dumps([int(v) for v in y]),
        rows("logits", [[f32(v) for v in r] for r in logits]),
        '  "predictions": %s' % json.dumps([int(v) for v in pred]),
    ])
    path.write_text("{\n" + body + "\n}\n")


README = """# digits

A small MLP (64 -> {hidden} -> ReLU -> 10) over scikit-learn's 8x8 handwritten digits.
Input `input`: FP32 `[-1, 64]`, the raw pixel values 0..16 row by row (the model scales
them itself). Output `logits`: FP32 `[-1, 10]`; the predicted digit is the argmax, and
`labels.txt` names the classes "0" to "9".

Held-out accuracy (stratified 20% split, {n} images): {acc:.4f}.

`sample.json` is an Open Inference Protocol infer request for held-out image 0, whose
true label is **{label}** (the model predicts {pred}):

    curl -s -X POST -H 'Content-Type: application/json' \\
        --data @models/digits/sample.json http://127.0.0.1:8000/v2/models/digits/infer

Files: `model.py` (the network, `build()`), `train.py` (deterministic training; it
writes `digits.pt`, publishes version 1 with the export tool, and writes this file,
`sample.json` and the reference data `tests/data/digits_heldout.json`).
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replica", help="corral-replica binary for the export tool's verification")
    ap.add_argument("--no-verify-replica", action="store_true", help="verify the export with onnxruntime only")
    args = ap.parse_args()

    set_deterministic()
    x_train, x_test, y_train, y_test = load_split()
    print("training on %d images, holding out %d" % (len(x_train), len(x_test)), flush=True)
    model = train(x_train, y_train)
    with torch.no_grad():
        logits = model(torch.from_numpy(x_test)).numpy()
    pred = logits.argmax(axis=1)
    acc = float((pred == y_test).mean())
    print("held-out accuracy: %.4f (%d/%d)" % (acc, int((pred == y_test).sum()), len(y_test)), flush=True)

    state_path = HERE / "digits.pt"
    torch.save(model.state_dict(), state_path)

    with tempfile.TemporaryDirectory() as td:
        labels = Path(td) / "labels.txt"
        labels.write_text("".join("%d\n" % i for i in range(10)))
        cmd = [sys.executable, str(ROOT / "deploy" / "export" / "export.py"),
               "--builder", "models.digits.model:build",
               "--builder-args", json.dumps({"hidden": HIDDEN}),
               "--state-dict", os.path.relpath(state_path, ROOT),
               "--seed", str(SEED),
               "--input", "input:-1x64:FP32:0:16", "--output", "logits",
               "--repo", "models", "--name", "digits", "--version", "1", "--overwrite",
               "--labels", str(labels)]
        if args.replica:
            cmd += ["--replica", args.replica]
        if args.no_verify_replica:
            cmd.append("--no-verify-replica")
        rc = subprocess.call(cmd, cwd=str(ROOT))
        if rc != 0:
            print("train.py: the export failed (exit status %d)" % rc, file=sys.stderr)
            return 1

    write_heldout(ROOT / "tests" / "data" / "digits_heldout.json", x_test, y_test, logits, pred, acc)
    sample = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                          "data": [float(v) for v in x_test[0]]}]}
    (HERE / "sample.json").write_text(json.dumps(sample) + "\n")
    (HERE / "sample.label").write_text("%d\n" % int(y_test[0]))
    (HERE / "README.md").write_text(README.format(hidden=HIDDEN, n=len(y_test), acc=acc,
                                                  label=int(y_test[0]), pred=int(pred[0])))
    print("wrote tests/data/digits_heldout.json, models/digits/sample.json (true label %d)" % int(y_test[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
