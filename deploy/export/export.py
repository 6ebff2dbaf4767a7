#!/usr/bin/env python3
"""Export a PyTorch model to a corral model repository, and publish it only once verified.

The tool takes the model from what training produced (a state_dict or checkpoint
for a builder function, a Lightning .ckpt, a TorchScript or torch.export file;
corral_checkpoint.py tells them apart without running code from the file), puts
it in eval mode, exports it to ONNX with dynamic axes, writes config.json (with a
batching section when the batch axis is dynamic, and the export's provenance)
and a set of parity vectors (random inputs with PyTorch's own outputs), then
checks that onnxruntime and corral-replica both reproduce those outputs within
tolerance. Only then does the new version appear in the repository: everything
is written to a temporary directory inside the repository first and renamed
into place at the end, so a failed export leaves the repository as it was.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import corral_checkpoint as ckpt
from corral_checkpoint import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[2]

# Wire datatype name -> numpy dtype name. Kept to the types PyTorch, onnxruntime
# and the corral wire format all carry.
DTYPES = {
    "FP32": "float32",
    "FP64": "float64",
    "FP16": "float16",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}
# ONNX TensorProto.DataType number -> wire datatype name.
ONNX_ELEM = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64",
             9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 4: "UINT16"}

DEFAULT_INT_RANGE = (0, 10)
LEGACY_OPSET = 17
# Batch sizes of the parity vectors, in order; more vectors than this draw at random.
VECTOR_BATCHES = [1, 3, 8, 2, 16, 5, 32, 7]
# Range of sizes drawn for a dynamic axis that is not the batch axis.
OTHER_DYN_RANGE = (1, 16)
# The batching section a model with a dynamic batch axis gets unless told otherwise:
# batch what is already waiting, add no delay (docs/benchmarks.md, "Batching by default").
DEFAULT_MAX_BATCH = 16
DEFAULT_QUEUE_DELAY_US = 0
# The replica's limits on these keys (replica/model_repo.c).
MAX_BATCH_LIMIT = 1 << 20
QUEUE_DELAY_LIMIT_US = 60000000
MAX_BUCKETS = 32
# --preprocess presets: torchvision's ImageNet evaluation transform
# (Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)).
PREPROCESS_PRESETS = {
    "imagenet": {"resize": 256, "crop": [224, 224], "divisor": 255,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "channels": "RGB", "layout": "NCHW"},
}

USAGE_EXAMPLES = """\
examples:
  # the bundled digits MLP: one FP32 input of 64 features, dynamic batch
  export.py --builder models.digits.model:build --checkpoint digits.pt \\
      --input input:-1x64:FP32:0:16 --output logits \\
      --repo models --name digits --labels labels.txt

  # an image classifier: POST /v2/models/resnet/classify takes JPEG/PNG/WebP images
  export.py --builder torchvision.models:resnet18 --checkpoint resnet18.pt \\
      --input input:-1x3x224x224:FP32 --output logits \\
      --repo models --name resnet --labels imagenet_classes.txt \\
      --preprocess imagenet --postprocess softmax

  # a checkpoint dict or Lightning .ckpt: the builder gets the file's 'config',
  # 'hparams' or 'hyper_parameters' as keyword arguments
  export.py --builder mypkg.nets:make_tagger --checkpoint last.ckpt \\
      --input ids:-1x-1:INT64:0:30000 --repo /srv/models --name tagger

  # TorchScript or torch.export files carry their graph: no builder
  export.py --checkpoint model.pt2 --input x:-1x16:FP32 --repo models --name m

--checkpoint FILE (alias --state-dict) may hold:
  a state_dict                      torch.save(model.state_dict(), FILE)
  a checkpoint dict                 the weights under 'model_state', 'model_state_dict',
                                    'state_dict' or 'model'; 'config', 'hparams' or
                                    'hyper_parameters' become the builder's arguments
                                    when --builder-args is not given; the other entries
                                    (optimizer state, epoch, ...) are only recorded
  a Lightning .ckpt                 Trainer.save_checkpoint; the LightningModule's
                                    attribute prefix ('model.') is stripped
  TorchScript                       torch.jit.save(torch.jit.script(model), FILE)
  an ExportedProgram                torch.export.save(torch.export.export(...), FILE.pt2)
  Files from torch.save are loaded weights-only: no code from the file runs, and a
  whole pickled module (torch.save(model)) is refused unless --trust-checkpoint.
  Loading is strict (every key of the model and no other under its prefix) and the
  model is exported in eval mode.

batching:
  With a dynamic batch axis (-1 first) on every input and output, config.json gets
  "batching": {"max_batch_size": 16, "max_queue_delay_us": 0}: the replica batches
  the requests already waiting and never waits for more. --max-batch-size,
  --queue-delay-us and --buckets change it; --no-batching leaves it out (each request
  runs alone). A batching section already in config.json is kept when none of these
  flags is given.

input specification NAME:DIMS:DTYPE[:MIN:MAX]:
  DIMS is the shape with 'x' between dimensions; -1 marks a dynamic axis, and a
  dynamic first axis is the batch axis (parity vectors use batch sizes 1, 3, 8,
  2, 16, ...; other dynamic axes get random sizes from 1 to 16).
  DTYPE is one of %s.
  MIN:MAX bounds the random values of the parity vectors: integers are drawn
  from [MIN, MAX), floats uniformly from [MIN, MAX). Without it floats are drawn
  from N(0, 1) and integers from [0, 10).

the builder:
  pkg.module:function (or a class) is imported with the current directory and the
  corral source tree on sys.path (path/to/file.py:function also works) and called
  with the --builder-args object (or the checkpoint's config) as keyword arguments;
  it must return a torch.nn.Module whose forward takes the inputs in the order given.

exit status: 0 when published, 1 when the export or its verification failed
(nothing is published then), 2 for bad arguments.
""" % ", ".join(DTYPES)


class ExportError(Exception):
    """A failure with a message fit to show the user as is."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------
# Arguments


class InputSpec:
    def __init__(self, name, dims, dtype, lo=None, hi=None):
        self.name = name
        self.dims = dims
        self.dtype = dtype
        self.lo = lo
        self.hi = hi

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.dims) and self.dims[0] == -1


def parse_input_spec(text: str) -> InputSpec:
    parts = text.split(":")
    if len(parts) not in (3, 5):
        raise argparse.ArgumentTypeError(
            "input '%s' must be NAME:DIMS:DTYPE or NAME:DIMS:DTYPE:MIN:MAX, e.g. input:-1x64:FP32" % text)
    name, dims_s, dtype = parts[0], parts[1], parts[2].upper()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,126}", name):
        raise argparse.ArgumentTypeError(
            "input name '%s' must start with a letter or '_' and hold only letters, digits, '_', '.', '-'" % name)
    dims = []
    for d in dims_s.split("x"):
        try:
            v = int(d)
        except ValueError:
            v = 0
        if v != -1 and v < 1:
            raise argparse.ArgumentTypeError(
                "input '%s': DIMS '%s' must be sizes separated by 'x', each a positive integer or -1 "
                "for a dynamic axis, e.g. -1x64" % (name, dims_s))
        dims.append(v)
    if len(dims) > 8:
        raise argparse.ArgumentTypeError("input '%s': at most 8 dimensions are supported, got %d" % (name, len(dims)))
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(
            "input '%s': unknown datatype '%s', expected one of %s" % (name, parts[2], ", ".join(DTYPES)))
    spec = InputSpec(name, dims, dtype)
    if len(parts) == 5:
        is_int = dtype.startswith(("INT", "UINT")) or dtype == "BOOL"
        try:
            lo, hi = (int(parts[3]), int(parts[4])) if is_int else (float(parts[3]), float(parts[4]))
        except ValueError:
            raise argparse.ArgumentTypeError(
                "input '%s': MIN:MAX '%s:%s' must be two %s" % (name, parts[3], parts[4],
                                                               "integers" if is_int else "numbers"))
        if not lo < hi:
            raise argparse.ArgumentTypeError("input '%s': MIN (%s) must be less than MAX (%s)" % (name, lo, hi))
        spec.lo, spec.hi = lo, hi
    return spec


def parse_preprocess(text):
    """--preprocess SPEC -> the config.json preprocess section (a dict)."""
    out = {}
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" not in tok:
            if tok not in PREPROCESS_PRESETS:
                raise argparse.ArgumentTypeError("unknown preset '%s' (presets: %s; or KEY=VALUE steps)"
                                                 % (tok, ", ".join(sorted(PREPROCESS_PRESETS))))
            out.update(json.loads(json.dumps(PREPROCESS_PRESETS[tok])))
            continue
        key, val = tok.split("=", 1)
        try:
            if key in ("resize", "crop"):
                hw = [int(v) for v in val.lower().split("x")]
                if len(hw) not in (1, 2) or min(hw) < 1 or max(hw) > 16384:
                    raise ValueError
                out[key] = hw[0] if len(hw) == 1 and key == "resize" else (hw * 2 if len(hw) == 1 else hw)
            elif key == "divisor":
                out[key] = float(val)
                if not out[key] > 0:
                    raise ValueError
            elif key in ("mean", "std"):
                vals = [float(v) for v in val.split("/")]
                if len(vals) != 3 or (key == "std" and min(vals) <= 0):
                    raise ValueError
                out[key] = vals
            elif key == "channels" and val.upper() in ("RGB", "BGR"):
                out[key] = val.upper()
            elif key == "layout" and val.upper() in ("NCHW", "NHWC"):
                out[key] = val.upper()
            elif key == "input" and val:
                out[key] = val
            else:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                "--preprocess step '%s' is not valid (expected resize=N|HxW, crop=N|HxW, divisor=X>0, "
                "mean=A/B/C, std=A/B/C (> 0), channels=RGB|BGR, layout=NCHW|NHWC or input=NAME)" % tok)
    if "crop" not in out and not isinstance(out.get("resize"), list):
        raise argparse.ArgumentTypeError("--preprocess needs crop=N|HxW or resize=HxW so that every image "
                                         "becomes the input's size")
    return out


def check_image_input(args):
    """The image input must be FP32 [batch, 3, H, W] (NHWC: [batch, H, W, 3]) of the crop's size."""
    pre = args.preprocess
    name = pre.get("input") or (args.inputs[0].name if len(args.inputs) == 1 else None)
    if len(args.inputs) != 1:
        raise ExportError("--preprocess needs a model with one input (the image); %d were given" % len(args.inputs))
    spec = args.inputs[0]
    if spec.name != name:
        raise ExportError("--preprocess input=%s names no input (the model's input is '%s')" % (name, spec.name))
    h, w = pre["crop"] if "crop" in pre else pre["resize"]
    nhwc = pre.get("layout") == "NHWC"
    want = [h, w, 3] if nhwc else [3, h, w]
    dims = list(spec.dims)
    if spec.dtype != "FP32" or len(dims) != 4 or any(d not in (-1, x) for d, x in zip(dims[1:], want)):
        raise ExportError("--preprocess makes FP32 images shaped [batch, %s]; input '%s' is %s %s"
                          % (", ".join(map(str, want)), spec.name, spec.dtype, dims))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="export.py",
        description="Export a PyTorch model to ONNX in a corral model repository\n"
                    "(REPO/NAME/config.json, NAME/VERSION/model.onnx, NAME/VERSION/vectors/),\n"
                    "verify it with onnxruntime and corral-replica, and publish it only when\n"
                    "both reproduce PyTorch's outputs within tolerance. Everything is written\n"
                    "to a temporary directory inside REPO first, so a failed export publishes\n"
                    "nothing. (Without onnxruntime installed, corral-replica verifies alone.)",
        epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--builder", metavar="MODULE:FUNCTION",
                   help="function (or class) that returns the torch.nn.Module (see 'the builder' "
                        "below); not used with a TorchScript or torch.export checkpoint")
    m.add_argument("--builder-args", metavar="JSON",
                   help="JSON object passed to the builder as keyword arguments (default: the "
                        "checkpoint's 'config', 'hparams' or 'hyper_parameters', else none)")
    m.add_argument("--checkpoint", "--state-dict", dest="checkpoint", metavar="FILE",
                   help="what training saved: a state_dict, a checkpoint dict, a Lightning .ckpt, "
                        "a TorchScript file or a torch.export .pt2 file (see '--checkpoint' below). "
                        "Without it the builder's initial weights are exported")
    m.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --checkpoint without torch's weights_only restriction, which "
                        "runs code named by the file (only for files from a trusted source)")
    m.add_argument("--seed", type=int, metavar="N",
                   help="seed torch before building (reproducible random weights) and the "
                        "parity vectors (default seed 0 for the vectors)")
    m.add_argument("--input", dest="inputs", action="append", required=True, type=parse_input_spec,
                   metavar="NAME:DIMS:DTYPE[:MIN:MAX]",
                   help="a model input, in forward() argument order; repeat for each input")
    m.add_argument("--output", dest="outputs", nargs="+", action="extend", metavar="NAME",
                   help="output names in the order forward() returns them (default: the keys of "
                        "a returned dict, else 'output' or output_0, output_1, ...)")
    b = p.add_argument_group("batching (config.json's batching section; see docs/batching.md)")
    b.add_argument("--max-batch-size", type=int, metavar="N",
                   help="rows per engine run (default %d when the batch axis is dynamic)" % DEFAULT_MAX_BATCH)
    b.add_argument("--queue-delay-us", type=int, metavar="N",
                   help="how long a partial batch may wait for more requests, in microseconds "
                        "(default %d: batch what is waiting, add no delay)" % DEFAULT_QUEUE_DELAY_US)
    b.add_argument("--buckets", metavar="N,N,...",
                   help="the batch sizes the engine runs, increasing, ending at --max-batch-size "
                        "(default: powers of two below it, then it)")
    b.add_argument("--no-batching", action="store_true",
                   help="no batching section: each request runs alone, as it came")
    r = p.add_argument_group("repository")
    r.add_argument("--repo", required=True, metavar="DIR", help="model repository directory (created if missing)")
    r.add_argument("--name", required=True, help="model name (directory under --repo)")
    r.add_argument("--version", type=int, metavar="N",
                   help="version to publish (default: highest existing version + 1, or 1)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the version if it exists already (default: refuse)")
    r.add_argument("--labels", metavar="FILE", help="class names, one per line, copied to NAME/labels.txt")
    im = p.add_argument_group("images (config.json's preprocess and postprocess sections; see docs/images.md)")
    im.add_argument("--preprocess", metavar="SPEC", type=parse_preprocess,
                    help="the model takes images: 'imagenet' (resize the shorter side to 256, "
                         "centre crop 224, scale to [0, 1], ImageNet mean and std, RGB, NCHW), "
                         "or steps as KEY=VALUE,...: resize=N or HxW, crop=N or HxW, divisor=X, "
                         "mean=A/B/C, std=A/B/C, channels=RGB|BGR, layout=NCHW|NHWC, input=NAME; "
                         "a preset followed by KEY=VALUE changes those steps (imagenet,crop=192)")
    im.add_argument("--postprocess", choices=("softmax", "none"),
                    help="what turns the output into probabilities for /classify: softmax "
                         "(default with --preprocess), or none when the model ends in one")
    im.add_argument("--classify-output", metavar="NAME",
                    help="the output /classify ranks (default: the first output)")
    v = p.add_argument_group("verification")
    v.add_argument("--vectors", type=int, default=4, metavar="K", help="parity vectors to write (default 4)")
    v.add_argument("--atol", type=float, default=1e-4,
                   help="largest absolute difference accepted against PyTorch (default 1e-4)")
    v.add_argument("--rtol", type=float, default=0.0,
                   help="relative tolerance added to atol, times |expected| (default 0)")
    v.add_argument("--replica", metavar="PATH",
                   help="corral-replica binary (default: $CORRAL_REPLICA, then corral-replica on "
                        "PATH, then build/replica/corral-replica in the source tree)")
    v.add_argument("--no-verify-replica", action="store_true",
                   help="verify with onnxruntime only (for models the engine cannot run yet)")
    v = p.add_argument_group("exporter")
    v.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                   help="torch.onnx exporter: 'torchscript' (dynamic_axes; torch 1.x and 2.x), "
                        "'dynamo' (torch.export, dynamic_shapes; torch >= 2.5), or 'auto': "
                        "torchscript where this torch has it, dynamo when that fails (default)")
    v.add_argument("--opset", type=int, default=LEGACY_OPSET,
                   help="ONNX opset for the TorchScript-based exporter (default %d; the dynamo "
                        "exporter picks its own)" % LEGACY_OPSET)
    a = p.parse_args(argv)

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,126}", a.name):
        p.error("--name '%s' must be 1 to 127 letters, digits, '_', '.' or '-' and not start with '.'" % a.name)
    if a.version is not None and a.version < 1:
        p.error("--version must be a positive integer, got %d" % a.version)
    if a.vectors < 1 or a.vectors > 1000:
        p.error("--vectors must be between 1 and 1000, got %d" % a.vectors)
    if not (a.atol >= 0) or not (a.rtol >= 0):
        p.error("--atol and --rtol must be numbers >= 0")
    if a.builder is None and a.checkpoint is None:
        p.error("--builder is required unless --checkpoint is a TorchScript (torch.jit.save) or "
                "torch.export (torch.export.save) file, which carries the model's code")
    if a.builder is not None and ":" not in a.builder:
        p.error("--builder '%s' must be MODULE:FUNCTION, e.g. models.digits.model:build" % a.builder)
    if a.builder_args is not None and a.builder is None:
        p.error("--builder-args needs --builder")
    a.builder_kwargs = None
    if a.builder_args is not None:
        try:
            a.builder_kwargs = json.loads(a.builder_args)
        except ValueError as ex:
            p.error("--builder-args is not valid JSON: %s" % ex)
        if not isinstance(a.builder_kwargs, dict):
            p.error("--builder-args must be a JSON object, got %s" % type(a.builder_kwargs).__name__)
    check_batching_args(p, a)
    names = [s.name for s in a.inputs]
    if len(set(names)) != len(names):
        p.error("input names must be distinct, got %s" % ", ".join(names))
    if a.outputs and len(set(a.outputs)) != len(a.outputs):
        p.error("output names must be distinct, got %s" % ", ".join(a.outputs))
    if a.outputs and set(a.outputs) & set(names):
        p.error("output names must differ from input names")
    return a


def check_batching_args(p, a):
    """Checks the batching flags against each other and the inputs; a.buckets becomes a list."""
    explicit = [f for f, v in (("--max-batch-size", a.max_batch_size), ("--queue-delay-us", a.queue_delay_us),
                               ("--buckets", a.buckets)) if v is not None]
    a.batching_flags = explicit
    if a.no_batching and explicit:
        p.error("--no-batching cannot be combined with %s" % ", ".join(explicit))
    if a.max_batch_size is not None and not 1 <= a.max_batch_size <= MAX_BATCH_LIMIT:
        p.error("--max-batch-size must be from 1 to %d, got %d" % (MAX_BATCH_LIMIT, a.max_batch_size))
    if a.queue_delay_us is not None and not 0 <= a.queue_delay_us <= QUEUE_DELAY_LIMIT_US:
        p.error("--queue-delay-us must be from 0 to %d microseconds, got %d" % (QUEUE_DELAY_LIMIT_US, a.queue_delay_us))
    if a.buckets is not None:
        try:
            buckets = [int(x) for x in a.buckets.split(",")]
        except ValueError:
            buckets = []
        if not buckets or any(x < 1 for x in buckets) or any(x >= y for x, y in zip(buckets, buckets[1:])):
            p.error("--buckets '%s' must be increasing positive batch sizes separated by commas, e.g. 1,4,16"
                    % a.buckets)
        if len(buckets) > MAX_BUCKETS:
            p.error("--buckets '%s' names %d sizes; the replica takes at most %d"
                    % (a.buckets, len(buckets), MAX_BUCKETS))
        if a.max_batch_size is None:
            a.max_batch_size = buckets[-1]
        elif buckets[-1] != a.max_batch_size:
            p.error("--buckets '%s' must end at --max-batch-size (%d)" % (a.buckets, a.max_batch_size))
        if a.max_batch_size > MAX_BATCH_LIMIT:
            p.error("--buckets may not go beyond %d rows" % MAX_BATCH_LIMIT)
        a.buckets = buckets
    fixed = [s for s in a.inputs if not s.batch_dynamic]
    if explicit and fixed:
        p.error("%s need a dynamic batch axis (-1 first) on every input; input '%s' has DIMS %s"
                % (" and ".join(explicit), fixed[0].name, "x".join(map(str, fixed[0].dims)) or "(a scalar)"))


# ---------------------------------------------------------------------------
# Building the model


def import_builder(ref: str):
    mod_name, _, fn_name = ref.rpartition(":")
    for p in (str(REPO_ROOT), os.getcwd()):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise ExportError("builder file '%s' does not exist" % mod_name)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ExportError:
        raise
    except ImportError as ex:
        raise ExportError("cannot import builder module '%s': %s (the current directory and the "
                          "corral source tree are on the import path)" % (mod_name, ex))
    except Exception as ex:
        raise ExportError("importing builder module '%s' failed: %s: %s" % (mod_name, type(ex).__name__, ex))
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise ExportError("builder module '%s' has no function '%s'" % (mod_name, fn_name))
    return fn


class Prepared:
    """The model to export and what the export should say about where it came from."""

    def __init__(self, model, form, provenance, program=None):
        self.model = model
        self.form = form              # a corral_checkpoint FORM_* name, or "builder"
        self.provenance = provenance  # JSON-safe, for config.json
        self.program = program        # the torch.export.ExportedProgram, for that form


def builder_params(fn):
    """(names it takes as keywords, names it needs, takes **kwargs), or None if unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names, needed, var_kw = [], [], False
    for prm in sig.parameters.values():
        if prm.kind == prm.VAR_KEYWORD:
            var_kw = True
        elif prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY):
            names.append(prm.name)
            if prm.default is prm.empty:
                needed.append(prm.name)
    return names, needed, var_kw


def check_builder_kwargs(fn, ref, kwargs, source):
    """Refuses keyword arguments the builder does not take (or lacks ones it needs), naming them."""
    params = builder_params(fn)
    if params is None:
        return
    names, needed, var_kw = params
    unknown = [] if var_kw else [k for k in kwargs if k not in names]
    if unknown:
        fit = {k: v for k, v in kwargs.items() if k in names}
        raise ExportError("builder %s does not take %s, given by %s (it takes: %s); give the arguments it "
                          "takes with --builder-args, e.g. --builder-args '%s'"
                          % (ref, ", ".join(unknown), source, ", ".join(names) or "no arguments",
                             json.dumps(fit, default=str)))
    missing = [k for k in needed if k not in kwargs]
    if missing:
        raise ExportError("builder %s needs %s (no default)%s; pass %s with --builder-args"
                          % (ref, ", ".join(missing), ", which %s does not give" % source if source else "",
                             "it" if len(missing) == 1 else "them"))


def match_keys(sd: dict, model_keys: list):
    """Returns (state_dict with the model's key names, prefix stripped or None, keys outside it).

    A checkpoint of a wrapper (a LightningModule holding the network as self.model)
    names the weights 'model.fc1.weight'; the prefix is whatever precedes the
    model's own key names, and the other entries belong to the wrapper.
    """
    want = set(model_keys)
    if want & set(sd):
        return sd, None, []
    counts = collections.Counter()
    for k in sd:
        for mk in want:
            if k.endswith("." + mk):
                counts[k[:len(k) - len(mk)]] += 1
    best = None
    for prefix, _ in counts.most_common():
        stripped = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if want <= set(stripped):
            return stripped, prefix, [k for k in sd if not k.startswith(prefix)]
        if best is None:
            best = (stripped, prefix, [k for k in sd if not k.startswith(prefix)])
    # No prefix covers every key: keep the best candidate, so that the error lists what is missing.
    return best if best is not None else (sd, None, [])


def few(xs, n=5):
    return ", ".join(xs[:n]) + (" and %d more" % (len(xs) - n) if len(xs) > n else "")


def load_weights(model, sd, path, builder, lightning):
    """Loads `sd` into `model` strictly: every key the model has, no other (under its prefix)."""
    import torch
    own = model.state_dict()
    sd, prefix, outside = match_keys(sd, list(own))
    if prefix:
        log("  stripped key prefix '%s' from the checkpoint%s" % (
            prefix, " (the LightningModule attribute holding the model)" if lightning else ""))
        if outside:
            log("  ignored %d checkpoint entries outside '%s' (the wrapper's own): %s"
                % (len(outside), prefix, few(outside)))
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = ["%s: file %s, model %s" % (k, tuple(sd[k].shape), tuple(own[k].shape))
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append("%d missing from the file (%s)" % (len(missing), few(missing)))
        if unexpected:
            parts.append("%d not in the model (%s)" % (len(unexpected), few(unexpected)))
        if shapes:
            parts.append("%d with other shapes (%s)" % (len(shapes), few(shapes)))
        raise ExportError("--checkpoint '%s' does not match the model built by %s%s: %s"
                          % (path, builder, " (after stripping '%s')" % prefix if prefix else "", "; ".join(parts)))
    with torch.no_grad():
        model.load_state_dict({k: sd[k] for k in own}, strict=True)
    log("  loaded %d tensors strictly (every key of the model, no other)" % len(own))


def call_builder(args, hparams, hparams_key):
    """Builds the model; returns (module, the keyword arguments, where they came from)."""
    import torch
    fn = import_builder(args.builder)
    if args.builder_kwargs is not None:
        kwargs, source = args.builder_kwargs, "--builder-args"
        if hparams is not None:
            log("  builder arguments from --builder-args; the checkpoint's '%s' is not used" % hparams_key)
    elif hparams is not None:
        kwargs, source = hparams, "the checkpoint's '%s'" % hparams_key
        log("  builder arguments from the checkpoint's '%s' (no --builder-args given): %s"
            % (hparams_key, json.dumps(hparams, default=str)))
    else:
        kwargs, source = {}, None
    check_builder_kwargs(fn, args.builder, kwargs, source)
    try:
        model = fn(**kwargs)
    except Exception as ex:
        raise ExportError("builder %s(**%s) raised %s: %s" % (args.builder, json.dumps(kwargs, default=str),
                                                                type(ex).__name__, ex))
    if not isinstance(model, torch.nn.Module):
        raise ExportError("builder %s returned a %s, expected a torch.nn.Module" % (args.builder, type(model).__name__))
    return model, kwargs, source


def prepare_model(args) -> Prepared:
    """Builds or loads the model, loads its weights and puts it in eval mode."""
    import torch
    if args.seed is not None:
        torch.manual_seed(args.seed)
    ck = None
    prov = {}
    if args.checkpoint:
        log("reading %s..." % args.checkpoint)
        ck = ckpt.read(args.checkpoint, args.trust_checkpoint, import_dirs=(str(REPO_ROOT), os.getcwd()))
        log("  %s" % ck.describe())
        prov = {"checkpoint": args.checkpoint, "sha256": ck.sha256, "form": ck.form}
        if ck.detail:
            prov["detail"] = ck.detail
        if ck.weights_key:
            prov["weights_key"] = ck.weights_key
        if ck.ignored:
            prov["ignored"] = ck.ignored
            log("  not used (recorded in config.json's provenance): %s" % ", ".join(ck.ignored))
    carries_graph = ck is not None and ck.form in (ckpt.FORM_TORCHSCRIPT, ckpt.FORM_EXPORTED)
    if carries_graph and args.builder:
        raise ExportError("--checkpoint '%s' is %s, which carries the model's graph: --builder is not used "
                          "with it; drop --builder%s" % (args.checkpoint, ckpt.with_article(ck.form),
                                                        " and --builder-args" if args.builder_args else ""))
    if carries_graph or (ck is not None and ck.form == ckpt.FORM_MODULE and not args.builder):
        model, form = ck.module, ck.form
        if ck.form == ckpt.FORM_MODULE:
            log("  exporting the unpickled %s itself (--trust-checkpoint, no --builder)" % ck.detail)
    else:
        if not args.builder:
            raise ExportError("--checkpoint '%s' is %s: it holds the weights but not the model's code; give "
                              "--builder MODULE:FUNCTION, a function that builds the model for them"
                              % (args.checkpoint, ckpt.with_article(ck.form)))
        log("building %s (torch %s)..." % (args.builder, torch.__version__))
        model, kwargs, source = call_builder(args, ck.hparams if ck else None, ck.hparams_key if ck else None)
        prov.update(builder=args.builder, builder_args=kwargs, builder_args_from=source or "none")
        form = ck.form if ck else "builder"
        if ck is not None:
            sd = ck.module.state_dict() if ck.module is not None else ck.state_dict
            load_weights(model, sd, args.checkpoint, args.builder, ck.form == ckpt.FORM_LIGHTNING)
    if form == ckpt.FORM_EXPORTED:
        # An ExportedProgram's module refuses train()/eval(): the mode is the one it was
        # exported in, which check_inference_mode() tests from the outputs.
        log("  mode: an ExportedProgram keeps the mode it was exported in (checked below)")
        prov["mode"] = "as exported"
    else:
        model.eval()
        log("  eval mode: model.eval() called (Dropout off, BatchNorm uses its running statistics)")
        prov["mode"] = "eval"
    return Prepared(model, form, prov, ck.program if ck is not None else None)


def check_inference_mode(prep, specs, example, example_outs, out_names, example_batch, batching):
    """Refuses a model that still behaves as in training.

    Dropout in training mode makes two runs on the same input differ; BatchNorm in
    training mode normalises with the batch's own statistics, so a row's output depends
    on the rows beside it. model.eval() turns both off for a module, but a TorchScript
    module traced in training mode, or an ExportedProgram exported in it, keeps them.
    The row check also guards batching, which runs different clients' rows together.
    """
    import numpy as np
    if prep.form == ckpt.FORM_TORCHSCRIPT:
        random_hint = rows_hint = "a module traced in training mode keeps it: trace or script it after model.eval()"
    elif prep.form == ckpt.FORM_EXPORTED:
        random_hint = rows_hint = "a program exported in training mode keeps it: call model.eval() before " \
                                  "torch.export.export"
    else:
        random_hint = "model.eval() was called, so forward() itself draws random numbers"
        rows_hint = "model.eval() was called, so forward() itself mixes the rows (batch statistics, a max " \
                    "over the batch, ...)"

    # The tolerance is far above the float noise between batch sizes (GEMM kernels differ)
    # and far below what Dropout or batch statistics change.
    def differs(a, b):
        if a.shape != b.shape:
            return float("inf")
        if a.size == 0 or not np.issubdtype(a.dtype, np.number):
            return 0.0 if np.array_equal(a, b) else float("inf")
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        tol = 1e-3 + 1e-3 * np.abs(b.astype(np.float64))
        return float(d.max()) if (d > tol).any() else 0.0

    again, _ = run_torch(prep.model, specs, example, "example input (second run)")
    for n, a, b in zip(out_names, again, example_outs):
        d = differs(a, b)
        if d:
            raise ExportError("two runs of the PyTorch model on the same input gave different '%s' (max abs diff "
                              "%.3g): a random layer such as Dropout is active, as in training mode; %s"
                              % (n, d, random_hint))
    if example_batch < 2 or not all(s.batch_dynamic for s in specs):
        return
    problem = None
    for r in range(example_batch):
        try:
            alone, _ = run_torch(prep.model, specs, [a[r:r + 1] for a in example], "row %d alone" % r)
        except ExportError as ex:
            problem = "row %d alone fails: %s" % (r, str(ex).split(": ", 1)[-1])
            break
        for n, a, b in zip(out_names, alone, example_outs):
            if b.ndim >= 1 and b.shape[0] == example_batch:
                d = differs(a, b[r:r + 1])
                if d:
                    problem = "output '%s' of row %d alone differs from the same row in a batch of %d by %.3g" \
                              % (n, r, example_batch, d)
                    break
        if problem:
            break
    if not problem:
        log("  checked: the same output on a second run, and for each row alone as in a batch")
        return
    what = ("the model's output for a row depends on the other rows of its batch (%s), as BatchNorm's batch "
            "statistics in training mode do; %s" % (problem, rows_hint))
    if batching:
        raise ExportError(what + ". corral batches rows of different requests together, so each row must be "
                          "computed on its own (if the model mixes rows by design, pass --no-batching)")
    log("  warning: " + what)


# ---------------------------------------------------------------------------
# Inputs, outputs and the export itself


def make_input(spec: InputSpec, sizes: dict, rng):
    import numpy as np
    shape = []
    for axis, d in enumerate(spec.dims):
        if d != -1:
            shape.append(d)
        elif axis == 0:
            shape.append(sizes["batch"])
        else:
            shape.append(sizes[(spec.name, axis)])
    dt = DTYPES[spec.dtype]
    if spec.dtype == "BOOL":
        lo, hi = (spec.lo, spec.hi) if spec.lo is not None else (0, 2)
        return (rng.randint(lo, hi, size=shape) != 0)
    if dt.startswith(("int", "uint")):
        lo, hi = (spec.lo, spec.hi) if spec.lo is not None else DEFAULT_INT_RANGE
        return rng.randint(lo, hi, size=shape).astype(dt)
    if spec.lo is not None:
        return rng.uniform(spec.lo, spec.hi, size=shape).astype(dt)
    return rng.standard_normal(size=shape).astype(dt)


def flatten_outputs(out, context: str):
    import torch
    if isinstance(out, torch.Tensor):
        return [out], None
    if isinstance(out, dict):
        items = list(out.items())
        if all(isinstance(v, torch.Tensor) for _, v in items):
            return [v for _, v in items], [str(k) for k, _ in items]
    if isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in out):
        return list(out), None
    raise ExportError("%s: forward() returned a %s; expected a tensor, a tuple or list of tensors, "
                      "or a dict of tensors" % (context, type(out).__name__))


def run_torch(model, specs, arrays, context):
    import torch
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    try:
        with torch.no_grad():
            out = model(*tensors)
    except Exception as ex:
        shapes = ", ".join("%s%s" % (s.name, list(a.shape)) for s, a in zip(specs, arrays))
        raise ExportError("%s: the PyTorch model failed on inputs %s: %s: %s"
                          % (context, shapes, type(ex).__name__, str(ex).strip().splitlines()[0] if str(ex).strip() else ""))
    outs, keys = flatten_outputs(out, context)
    return [o.detach().cpu().contiguous().numpy() for o in outs], keys


def dynamic_axes_of(specs, out_names, example_outs, example_batch):
    axes = {}
    for s in specs:
        d = {}
        for i, v in enumerate(s.dims):
            if v == -1:
                d[i] = "batch" if i == 0 else "%s_dim%d" % (s.name, i)
        if d:
            axes[s.name] = d
    if any(s.batch_dynamic for s in specs):
        for n, o in zip(out_names, example_outs):
            if o.ndim >= 1 and o.shape[0] == example_batch:
                axes[n] = {0: "batch"}
    return axes


def export_legacy(torch, model, args_t, specs, out_names, dyn_axes, path, opset):
    kwargs = dict(input_names=[s.name for s in specs], output_names=out_names,
                  opset_version=opset, dynamic_axes=dyn_axes, do_constant_folding=True)
    params = inspect.signature(torch.onnx.export).parameters
    if "dynamo" in params:
        kwargs["dynamo"] = False
    torch.onnx.export(model, args_t, str(path), **kwargs)


def export_dynamo(torch, model, args_t, specs, out_names, path):
    """torch.export-based export; an ExportedProgram goes as it is, with its own dynamic shapes."""
    kwargs = dict(input_names=[s.name for s in specs], output_names=out_names, dynamo=True)
    if not isinstance(model, torch.export.ExportedProgram):
        Dim = torch.export.Dim
        shapes = []
        for s in specs:
            d = {}
            for i, v in enumerate(s.dims):
                if v == -1:
                    if hasattr(Dim, "DYNAMIC"):
                        d[i] = Dim.DYNAMIC
                    else:
                        d[i] = Dim("batch" if i == 0 else re.sub(r"\W", "_", "%s_dim%d" % (s.name, i)))
            shapes.append(d or None)
        kwargs["dynamic_shapes"] = tuple(shapes)
    params = inspect.signature(torch.onnx.export).parameters
    if "external_data" in params:
        kwargs["external_data"] = False
    if "verbose" in params:
        kwargs["verbose"] = False
    prog = torch.onnx.export(model, args_t, str(path), **kwargs)
    if prog is not None and not Path(path).is_file() and hasattr(prog, "save"):
        prog.save(str(path))


def export_onnx(model, specs, out_names, example, example_outs, example_batch, path, opset, which, form=None,
                program=None):
    """Exports with the TorchScript-based exporter where this torch has it, else torch.export.

    A TorchScript module can only go through the TorchScript-based exporter, and an
    ExportedProgram only through the dynamo one."""
    import torch
    args_t = tuple(torch.from_numpy(a.copy()) for a in example)
    dyn_axes = dynamic_axes_of(specs, out_names, example_outs, example_batch)
    errors = []
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters and hasattr(torch, "export")
    attempts = []
    if form == ckpt.FORM_EXPORTED:
        if which == "torchscript":
            raise ExportError("--exporter torchscript cannot export an ExportedProgram; leave --exporter at "
                              "auto or dynamo")
        which = "program"
        attempts.append(("dynamo", lambda: export_dynamo(torch, program, args_t, specs, out_names, path)))
    elif form == ckpt.FORM_TORCHSCRIPT:
        if which == "dynamo":
            raise ExportError("--exporter dynamo cannot export a TorchScript module; leave --exporter at "
                              "auto or torchscript")
        which = "torchscript"
    if which in ("auto", "torchscript"):
        attempts.append(("torchscript", lambda: export_legacy(torch, model, args_t, specs, out_names, dyn_axes,
                                                               path, opset)))
    if which in ("auto", "dynamo"):
        if not has_dynamo:
            if which == "dynamo":
                raise ExportError("--exporter dynamo needs torch >= 2.5 (torch.onnx.export(dynamo=True)); "
                                  "this is torch %s" % torch.__version__)
        else:
            attempts.append(("dynamo", lambda: export_dynamo(torch, model, args_t, specs, out_names, path)))
    for label, fn in attempts:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fn()
            except Exception as ex:
                msg = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
                errors.append("%s exporter: %s: %s" % (label, type(ex).__name__, msg))
                if len(attempts) > 1 and label == attempts[0][0]:
                    log("  the %s exporter failed (%s); trying the %s exporter"
                        % (label, msg[:200], attempts[1][0]))
                continue
        seen = set()
        for w in caught:
            text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
            # "no signature found for <torch.ScriptMethod ...>": a TorchScript module's forward
            # has no Python signature, which is expected and harmless here.
            if isinstance(w.message, DeprecationWarning) or "legacy TorchScript-based" in text or text in seen \
                    or text.startswith("no signature found for <torch.ScriptMethod"):
                continue
            seen.add(text)
            log("  exporter warning (%s): %s" % (w.category.__name__, text[:300]))
        return label
    raise ExportError("torch.onnx.export failed:\n  " + "\n  ".join(errors))


def onnx_summary(path, specs, out_names):
    import onnx
    try:
        m = onnx.load(str(path))
        onnx.checker.check_model(m)
    except Exception as ex:
        raise ExportError("the exported ONNX file does not pass onnx.checker: %s" % ex)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    inits = {i.name for i in m.graph.initializer}
    graph_inputs = [i.name for i in m.graph.input if i.name not in inits]
    want = [s.name for s in specs]
    if graph_inputs != want:
        missing = [n for n in want if n not in graph_inputs]
        hint = (": input %s does not affect any output, so the exporter dropped it; remove it from "
                "--input or from forward()" % ", ".join(missing)) if missing else ""
        raise ExportError("the exported graph takes inputs [%s], expected [%s]%s"
                          % (", ".join(graph_inputs), ", ".join(want), hint))
    graph_outputs = [o.name for o in m.graph.output]
    if graph_outputs != list(out_names):
        raise ExportError("the exported graph returns outputs [%s], expected [%s]"
                          % (", ".join(graph_outputs), ", ".join(out_names)))
    out_info = []
    for o in m.graph.output:
        tt = o.type.tensor_type
        dtype = ONNX_ELEM.get(tt.elem_type)
        if dtype is None:
            raise ExportError("output '%s' has ONNX element type %d, which corral does not carry" % (o.name, tt.elem_type))
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        out_info.append((o.name, dtype, dims))
    return ops, opset, out_info, m


def check_program_inputs(program, specs, path):
    """Compares an ExportedProgram's inputs with --input: count, datatypes, ranks, fixed sizes."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    names = list(program.graph_signature.user_inputs)
    if len(names) != len(specs):
        raise ExportError("--checkpoint '%s' takes %d inputs (%s) but --input gives %d (%s)"
                          % (path, len(names), ", ".join(names), len(specs), ", ".join(s.name for s in specs)))
    for s, n in zip(specs, names):
        val = placeholders[n].meta.get("val") if n in placeholders else None
        if val is None or not hasattr(val, "shape"):
            continue
        dtype = next((w for w, np_name in DTYPES.items() if "torch." + np_name == str(val.dtype)), str(val.dtype))
        if dtype != s.dtype:
            raise ExportError("--checkpoint '%s': input %d ('%s') is %s in the program, but --input '%s' says %s"
                              % (path, names.index(n), n, dtype, s.name, s.dtype))
        shape = list(val.shape)
        if len(shape) != len(s.dims):
            raise ExportError("--checkpoint '%s': input '%s' has %d dimensions in the program, but --input '%s' "
                              "gives %d (%s)" % (path, n, len(shape), s.name, len(s.dims),
                                                 "x".join(map(str, s.dims))))
        for axis, (d, want) in enumerate(zip(shape, s.dims)):
            if not isinstance(d, int):
                continue   # symbolic: dynamic in the program
            if want == -1:
                raise ExportError(
                    "--checkpoint '%s': dimension %d of input '%s' is fixed at %d in the program, but --input '%s' "
                    "declares it dynamic (-1); export the program with that dimension dynamic, e.g. "
                    "torch.export.export(model, args, dynamic_shapes={'%s': {%d: torch.export.Dim('%s')}}), or "
                    "give --input with %d there" % (path, axis, n, d, s.name, n, axis,
                                                     "batch" if axis == 0 else "d%d" % axis, d))
            if want != d:
                raise ExportError("--checkpoint '%s': dimension %d of input '%s' is %d in the program, but --input "
                                  "'%s' says %d" % (path, axis, n, d, s.name, want))


def default_buckets(max_batch):
    out, b = [], 1
    while b < max_batch and len(out) < MAX_BUCKETS - 1:
        out.append(b)
        b *= 2
    return out + [max_batch]


def batching_section(args, outputs_cfg, old_config):
    """(config.json's batching section or None, a line saying what was chosen and why)."""
    old = old_config.get("batching")
    old = old if isinstance(old, dict) else None
    if args.no_batching:
        return None, "off (--no-batching): each request runs alone%s" % (
            "; the existing config.json's section was removed" if old is not None else "")
    why = None
    for s in args.inputs:
        if not s.batch_dynamic:
            why = "input '%s' has a fixed first dimension (%s)" % (s.name, "x".join(map(str, s.dims)) or "a scalar")
            break
    for o in outputs_cfg:
        if why is None and (not o["shape"] or o["shape"][0] != -1):
            why = "output '%s' does not follow the batch axis (shape %s)" % (o["name"], o["shape"])
    if why:
        if args.batching_flags:
            raise ExportError("%s need every input and output to have the batch axis first, but %s"
                              % (" and ".join(args.batching_flags), why))
        return None, "off: %s; batching needs a dynamic batch axis (-1) first on every input and output" % why
    if old is not None and not args.batching_flags:
        return old, "kept the existing config.json's section %s (no batching flag given)" % json.dumps(old)
    sec = dict(old) if old is not None else {}
    if args.max_batch_size is not None:
        sec["max_batch_size"] = args.max_batch_size
        if args.buckets is None:
            sec.pop("batch_buckets", None)
    if args.buckets is not None:
        sec["batch_buckets"] = list(args.buckets)
    if args.queue_delay_us is not None:
        sec["max_queue_delay_us"] = args.queue_delay_us
    sec.setdefault("max_batch_size", DEFAULT_MAX_BATCH)
    sec.setdefault("max_queue_delay_us", DEFAULT_QUEUE_DELAY_US)
    first = ("max_batch_size", "batch_buckets", "max_queue_delay_us")
    sec = {k: sec[k] for k in first + tuple(k for k in sec if k not in first) if k in sec}
    buckets = sec.get("batch_buckets") or default_buckets(sec["max_batch_size"])
    delay = sec["max_queue_delay_us"]
    return sec, "max_batch_size %d, max_queue_delay_us %d (%s), buckets %s; --no-batching turns it off" % (
        sec["max_batch_size"], delay,
        "batch what is already waiting, add no delay" if delay == 0 else "a partial batch waits up to %d us" % delay,
        ", ".join(map(str, buckets)))


def provenance(old_config, versions, version, prep, exporter, opset, args):
    """config.json's provenance: per version, what it was exported from and how.

    Entries of versions still in the repository are kept, since config.json is
    shared by all of a model's versions."""
    import datetime
    import torch
    old = old_config.get("provenance")
    kept = {k: v for k, v in old.items() if k.isdigit() and int(k) in versions and int(k) != version} \
        if isinstance(old, dict) else {}
    entry = dict(prep.provenance)
    entry.update(torch=torch.__version__, exporter=exporter, opset=opset,
                 exported_at=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if args.seed is not None:
        entry["seed"] = args.seed
    kept[str(version)] = json.loads(json.dumps(entry, default=str))
    return dict(sorted(kept.items(), key=lambda kv: int(kv[0])))


# ---------------------------------------------------------------------------
# Verification


def max_abs_diff(got, want):
    import numpy as np
    if got.shape != want.shape:
        return float("inf"), "shape %s, expected %s" % (list(got.shape), list(want.shape))
    if got.size == 0:
        return 0.0, None
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    both_nan = np.isnan(g) & np.isnan(w)
    d = np.where(both_nan, 0.0, np.abs(g - w))
    d = np.where(np.isnan(d), np.inf, d)
    return float(d.max()), None


def within(got, want, atol, rtol):
    import numpy as np
    if got.shape != want.shape:
        return False
    g = got.astype(np.float64)
    w = want.astype(np.float64)
    ok = (np.abs(g - w) <= atol + rtol * np.abs(w)) | (np.isnan(g) & np.isnan(w)) | (g == w)
    return bool(ok.all())


def have_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        return False


def verify_onnxruntime(model_path, specs, out_names, vectors, atol, rtol):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    except Exception as ex:
        raise ExportError("onnxruntime cannot load the exported model: %s" % ex)
    worst = {n: 0.0 for n in out_names}
    failures = []
    for k, (ins, outs) in enumerate(vectors):
        try:
            got = sess.run(out_names, {s.name: a for s, a in zip(specs, ins)})
        except Exception as ex:
            raise ExportError("onnxruntime failed on parity vector %d (%s): %s"
                              % (k, ", ".join("%s%s" % (s.name, list(a.shape)) for s, a in zip(specs, ins)),
                                 str(ex).strip().splitlines()[0]))
        for n, g, w in zip(out_names, got, outs):
            d, why = max_abs_diff(g, w)
            worst[n] = max(worst[n], d)
            if why:
                failures.append("vector %d, output '%s': %s" % (k, n, why))
            elif not within(g, w, atol, rtol):
                failures.append("vector %d, output '%s': max abs diff %.3g" % (k, n, d))
    return worst, failures


def find_replica(args):
    if args.replica:
        if not os.path.isfile(args.replica) or not os.access(args.replica, os.X_OK):
            raise ExportError("--replica '%s' is not an executable file" % args.replica)
        return args.replica
    env = os.environ.get("CORRAL_REPLICA")
    if env:
        if not os.path.isfile(env) or not os.access(env, os.X_OK):
            raise ExportError("$CORRAL_REPLICA '%s' is not an executable file" % env)
        return env
    on_path = shutil.which("corral-replica")
    if on_path:
        return on_path
    local = REPO_ROOT / "build" / "replica" / "corral-replica"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    raise ExportError("cannot find corral-replica to verify the export (looked at --replica, $CORRAL_REPLICA, "
                      "PATH and %s); build it (cmake --build build --target corral-replica), point --replica "
                      "at it, or pass --no-verify-replica to verify with onnxruntime only" % local)


def verify_replica(binary, repo, name, version):
    cmd = [binary, "--verify", "--model-repo", str(repo), "--model", name, "--version", str(version),
           "--device", "cpu"]
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    except subprocess.TimeoutExpired:
        raise ExportError("corral-replica --verify did not finish within 600 s")
    except OSError as ex:
        raise ExportError("cannot run %s: %s" % (binary, ex))
    text = res.stdout.decode("utf-8", "replace").rstrip()
    for line in text.splitlines()[-40:]:
        log("  replica: " + line)
    return res.returncode, text


# ---------------------------------------------------------------------------
# Repository


def existing_versions(model_dir: Path):
    vs = []
    if model_dir.is_dir():
        for e in model_dir.iterdir():
            if e.is_dir() and re.fullmatch(r"[1-9][0-9]*", e.name):
                vs.append(int(e.name))
    return sorted(vs)


def config_text(config: dict) -> str:
    """JSON with two-space indents, but a list of plain numbers (a shape) kept on one line."""
    text = json.dumps(config, indent=2)
    text = re.sub(r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def write_tensor_pb(path: Path, arr, name: str):
    from onnx import numpy_helper
    path.write_bytes(numpy_helper.from_array(arr, name).SerializeToString())


def publish(tmp_model: Path, model_dir: Path, version: int, overwrite: bool, tmp_root: Path):
    """Moves the verified version (and config) from the temporary tree into the repository.

    A new model directory appears in one rename. Into an existing one the version
    directory is renamed first and config.json (then labels.txt) replaced after it,
    each in one rename; if a replacement fails, the new version is moved out again
    and a version it replaced put back, so the repository is left as it was.
    """
    src_version = tmp_model / str(version)
    if not model_dir.exists():
        os.rename(tmp_model, model_dir)
        return
    dst_version = model_dir / str(version)
    replaced = None
    if dst_version.exists():
        if not overwrite:
            raise ExportError("%s appeared while exporting (another export?)" % dst_version)
        replaced = tmp_root / "replaced"
        os.rename(dst_version, replaced)
    try:
        os.rename(src_version, dst_version)
    except OSError as ex:
        if replaced is not None:
            os.rename(replaced, dst_version)  # put the old version back as it was
        raise ExportError("cannot move the new version into %s: %s" % (dst_version, ex))
    saved = tmp_root / "saved"
    saved.mkdir()
    moved = []
    f = "config.json"
    try:
        for f in ("config.json", "labels.txt"):
            if (tmp_model / f).exists():
                if (model_dir / f).exists():
                    shutil.copyfile(model_dir / f, saved / f)
                os.replace(tmp_model / f, model_dir / f)
                moved.append(f)
    except OSError as ex:
        for m in moved:
            if (saved / m).exists():
                os.replace(saved / m, model_dir / m)
            else:
                os.unlink(model_dir / m)
        os.rename(dst_version, tmp_root / "withdrawn")
        if replaced is not None:
            os.rename(replaced, dst_version)
        raise ExportError("cannot replace %s: %s" % (model_dir / f, ex))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (ExportError, CheckpointError) as ex:
        print("export: error: %s" % ex, file=sys.stderr, flush=True)
        print("export: nothing was published", file=sys.stderr, flush=True)
        return 1


def run(args) -> int:
    import numpy as np
    try:
        import torch
        import onnx  # noqa: F401
    except ImportError as ex:
        raise ExportError("the export tool needs torch and onnx: %s" % ex)

    repo = Path(args.repo)
    model_dir = repo / args.name
    if args.labels and not os.path.isfile(args.labels):
        raise ExportError("--labels file '%s' does not exist" % args.labels)
    if (args.postprocess or args.classify_output) and not args.preprocess:
        raise ExportError("--postprocess and --classify-output apply to image models: give --preprocess too")
    if args.preprocess:
        check_image_input(args)
    replica = None if args.no_verify_replica else find_replica(args)
    use_ort = have_onnxruntime()
    if not use_ort and not replica:
        raise ExportError("nothing could verify the export: onnxruntime is not installed and "
                          "--no-verify-replica was given; install onnxruntime or let corral-replica verify")
    if model_dir.exists() and not model_dir.is_dir():
        raise ExportError("%s exists and is not a directory" % model_dir)
    versions = existing_versions(model_dir)
    version = args.version if args.version is not None else (versions[-1] + 1 if versions else 1)
    if (model_dir / str(version)).exists() and not args.overwrite:
        raise ExportError("%s exists already; pick another --version or pass --overwrite" % (model_dir / str(version)))
    old_config = {}
    if (model_dir / "config.json").is_file():
        try:
            old_config = json.loads((model_dir / "config.json").read_text())
        except ValueError as ex:
            raise ExportError("existing %s is not valid JSON (%s); fix or remove it" % (model_dir / "config.json", ex))
        if not isinstance(old_config, dict):
            raise ExportError("existing %s is not a JSON object; fix or remove it" % (model_dir / "config.json"))

    prep = prepare_model(args)
    model = prep.model
    if prep.form == ckpt.FORM_EXPORTED:
        check_program_inputs(prep.program, args.inputs, args.checkpoint)
    n_params = sum(p.numel() for p in model.parameters())
    log("  %d parameters" % n_params)

    rng = np.random.RandomState(args.seed if args.seed is not None else 0)
    other_dyn = [(s.name, i) for s in args.inputs for i, d in enumerate(s.dims) if d == -1 and i > 0]
    example_batch = 2
    sizes = {"batch": example_batch}
    for j, key in enumerate(other_dyn):
        sizes[key] = 5 + j
    example = [make_input(s, sizes, rng) for s in args.inputs]
    example_outs, keys = run_torch(model, args.inputs, example, "example input")
    if args.outputs:
        out_names = list(args.outputs)
        if len(out_names) != len(example_outs):
            raise ExportError("--output names %d outputs (%s) but forward() returns %d"
                              % (len(out_names), ", ".join(out_names), len(example_outs)))
    elif keys:
        out_names = keys
    else:
        out_names = ["output"] if len(example_outs) == 1 else ["output_%d" % j for j in range(len(example_outs))]
    for n, o in zip(out_names, example_outs):
        if o.dtype.name not in DTYPES.values():
            raise ExportError("output '%s' has dtype %s, which corral does not carry" % (n, o.dtype.name))
    if set(out_names) & {s.name for s in args.inputs}:
        raise ExportError("output names (%s) must differ from input names" % ", ".join(out_names))
    may_batch = (not args.no_batching and all(s.batch_dynamic for s in args.inputs)
                 and all(o.ndim >= 1 and o.shape[0] == example_batch for o in example_outs))
    check_inference_mode(prep, args.inputs, example, example_outs, out_names, example_batch, may_batch)

    repo.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".export-%s-" % args.name, dir=str(repo)))
    try:
        tmp_model = tmp_root / args.name
        vdir = tmp_model / str(version)
        vdir.mkdir(parents=True)
        onnx_path = vdir / "model.onnx"

        log("exporting to ONNX...")
        exporter = export_onnx(model, args.inputs, out_names, example, example_outs, example_batch,
                               onnx_path, args.opset, args.exporter, prep.form, prep.program)
        ops, opset, out_info, _ = onnx_summary(onnx_path, args.inputs, out_names)
        log("  exporter: %s, opset %d, %d bytes" % (exporter, opset, onnx_path.stat().st_size))
        log("  ops: %s" % ", ".join("%s x%d" % (op, c) for op, c in sorted(ops.items())))

        log("writing %d parity vectors..." % args.vectors)
        vectors = []
        for k in range(args.vectors):
            b = VECTOR_BATCHES[k] if k < len(VECTOR_BATCHES) else int(rng.randint(1, 33))
            sz = {"batch": b}
            for key in other_dyn:
                sz[key] = int(rng.randint(OTHER_DYN_RANGE[0], OTHER_DYN_RANGE[1] + 1))
            ins = [make_input(s, sz, rng) for s in args.inputs]
            outs, _ = run_torch(model, args.inputs, ins, "parity vector %d" % k)
            if len(outs) != len(out_names):
                raise ExportError("parity vector %d: forward() returned %d outputs, expected %d"
                                  % (k, len(outs), len(out_names)))
            d = vdir / "vectors" / str(k)
            d.mkdir(parents=True)
            for i, (s, a) in enumerate(zip(args.inputs, ins)):
                write_tensor_pb(d / ("input_%d.pb" % i), a, s.name)
            for j, (n, a) in enumerate(zip(out_names, outs)):
                write_tensor_pb(d / ("output_%d.pb" % j), a, n)
            vectors.append((ins, outs))
            log("  vector %d: %s -> %s" % (k, ", ".join("%s%s" % (s.name, list(a.shape)) for s, a in zip(args.inputs, ins)),
                                          ", ".join("%s%s" % (n, list(a.shape)) for n, a in zip(out_names, outs))))

        # Output shapes: fixed where ONNX declares a size and every vector agrees.
        outputs_cfg = []
        for j, (n, dtype, dims) in enumerate(out_info):
            shapes = [v[1][j].shape for v in vectors]
            rank = len(shapes[0])
            if dims is None or len(dims) != rank:
                dims = [-1] * rank
            dims = [d if d > 0 and all(s[a] == d for s in shapes) else -1 for a, d in enumerate(dims)]
            outputs_cfg.append({"name": n, "datatype": dtype, "shape": dims})

        config = dict(old_config)
        config["name"] = args.name
        config["platform"] = "onnx"
        config["inputs"] = [{"name": s.name, "datatype": s.dtype, "shape": list(s.dims)} for s in args.inputs]
        config["outputs"] = outputs_cfg
        if args.labels:
            shutil.copyfile(args.labels, tmp_model / "labels.txt")
            config["labels"] = "labels.txt"
        elif isinstance(config.get("labels"), str) and (model_dir / config["labels"]).is_file():
            shutil.copyfile(model_dir / config["labels"], tmp_model / config["labels"])
        config["parity"] = {"atol": args.atol, "rtol": args.rtol}
        if args.preprocess:
            if args.classify_output and args.classify_output not in [o["name"] for o in outputs_cfg]:
                raise ExportError("--classify-output %s names no output (outputs: %s)"
                                  % (args.classify_output, ", ".join(o["name"] for o in outputs_cfg)))
            config["preprocess"] = args.preprocess
            config["postprocess"] = {"output": args.classify_output or outputs_cfg[0]["name"],
                                     "kind": args.postprocess or "softmax"}
            log("images: preprocess %s, postprocess %s" % (json.dumps(config["preprocess"]),
                                                          json.dumps(config["postprocess"])))
        batching, why = batching_section(args, outputs_cfg, old_config)
        config.pop("batching", None)
        if batching is not None:
            config["batching"] = batching
        log("batching: " + why)
        config["provenance"] = provenance(old_config, versions, version, prep, exporter, opset, args)
        (tmp_model / "config.json").write_text(config_text(config))

        if use_ort:
            log("verifying with onnxruntime...")
            worst, failures = verify_onnxruntime(onnx_path, args.inputs, out_names, vectors, args.atol, args.rtol)
            log("  onnxruntime: max |onnx - pytorch| %s (atol %g, rtol %g)"
                % (", ".join("%s=%.3g" % kv for kv in worst.items()), args.atol, args.rtol))
            if failures:
                raise ExportError("onnxruntime does not reproduce PyTorch's outputs within atol %g, rtol %g: %s%s"
                                  % (args.atol, args.rtol, "; ".join(failures[:5]),
                                     " and %d more" % (len(failures) - 5) if len(failures) > 5 else ""))
        else:
            log("skipping onnxruntime verification (onnxruntime is not installed)")

        if replica:
            log("verifying with corral-replica (%s)..." % replica)
            rc, text = verify_replica(replica, tmp_root, args.name, version)
            if rc != 0:
                last = text.splitlines()[-1] if text else "(no output)"
                raise ExportError("corral-replica --verify failed (exit status %d): %s" % (rc, last))
            log("  corral-replica reproduced all %d parity vectors" % len(vectors))
        else:
            log("skipping corral-replica verification (--no-verify-replica)")

        publish(tmp_model, model_dir, version, args.overwrite, tmp_root)
        log("published %s/%d" % (model_dir, version))
        return 0
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
