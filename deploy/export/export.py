#!/usr/bin/env python3
"""Export a PyTorch model to a corral model repository, and publish it only once verified.

The tool builds the model from a builder function, loads its weights, exports it
to ONNX with dynamic axes, writes config.json and a set of parity vectors (random
inputs with PyTorch's own outputs), then checks that onnxruntime and
corral-replica both reproduce those outputs within tolerance. Only then does the
new version appear in the repository: everything is written to a temporary
directory inside the repository first and renamed into place at the end, so a
failed export leaves the repository as it was.
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

USAGE_EXAMPLES = """\
examples:
  # the bundled digits MLP: one FP32 input of 64 features, dynamic batch
  export.py --builder models.digits.model:build --state-dict digits.pt \\
      --input input:-1x64:FP32:0:16 --output logits \\
      --repo models --name digits --labels labels.txt

  # a token classifier: INT64 ids with a dynamic batch and sequence length,
  # parity vectors drawing ids from [0, 30000)
  export.py --builder mypkg.nets:make_tagger --builder-args '{"vocab": 30000}' \\
      --state-dict lightning.ckpt --input ids:-1x-1:INT64:0:30000 \\
      --repo /srv/models --name tagger

input specification NAME:DIMS:DTYPE[:MIN:MAX]:
  DIMS is the shape with 'x' between dimensions; -1 marks a dynamic axis, and a
  dynamic first axis is the batch axis (parity vectors use batch sizes 1, 3, 8,
  2, 16, ...; other dynamic axes get random sizes from 1 to 16).
  DTYPE is one of %s.
  MIN:MAX bounds the random values of the parity vectors: integers are drawn
  from [MIN, MAX), floats uniformly from [MIN, MAX). Without it floats are drawn
  from N(0, 1) and integers from [0, 10).

the builder:
  pkg.module:function is imported with the current directory and the corral
  source tree on sys.path (path/to/file.py:function also works) and called with
  the --builder-args object as keyword arguments; it must return a torch.nn.Module
  whose forward takes the inputs in the order given.

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
    m.add_argument("--builder", required=True, metavar="MODULE:FUNCTION",
                   help="function that returns the torch.nn.Module (see 'the builder' below)")
    m.add_argument("--builder-args", default="{}", metavar="JSON",
                   help="JSON object passed to the builder as keyword arguments (default {})")
    m.add_argument("--state-dict", metavar="FILE",
                   help="weights to load: a state_dict saved with torch.save, or a checkpoint "
                        "holding one under 'state_dict' (PyTorch Lightning); a key prefix such "
                        "as 'model.' is stripped when the keys need it. Without it the "
                        "builder's initial weights are exported")
    m.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle --state-dict without torch's weights_only restriction "
                        "(only for files from a trusted source)")
    m.add_argument("--seed", type=int, metavar="N",
                   help="seed torch before building (reproducible random weights) and the "
                        "parity vectors (default seed 0 for the vectors)")
    m.add_argument("--input", dest="inputs", action="append", required=True, type=parse_input_spec,
                   metavar="NAME:DIMS:DTYPE[:MIN:MAX]",
                   help="a model input, in forward() argument order; repeat for each input")
    m.add_argument("--output", dest="outputs", nargs="+", action="extend", metavar="NAME",
                   help="output names in the order forward() returns them (default: the keys of "
                        "a returned dict, else 'output' or output_0, output_1, ...)")
    r = p.add_argument_group("repository")
    r.add_argument("--repo", required=True, metavar="DIR", help="model repository directory (created if missing)")
    r.add_argument("--name", required=True, help="model name (directory under --repo)")
    r.add_argument("--version", type=int, metavar="N",
                   help="version to publish (default: highest existing version + 1, or 1)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the version if it exists already (default: refuse)")
    r.add_argument("--labels", metavar="FILE", help="class names, one per line, copied to NAME/labels.txt")
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
    if ":" not in a.builder:
        p.error("--builder '%s' must be MODULE:FUNCTION, e.g. models.digits.model:build" % a.builder)
    try:
        a.builder_kwargs = json.loads(a.builder_args)
    except ValueError as ex:
        p.error("--builder-args is not valid JSON: %s" % ex)
    if not isinstance(a.builder_kwargs, dict):
        p.error("--builder-args must be a JSON object, got %s" % type(a.builder_kwargs).__name__)
    names = [s.name for s in a.inputs]
    if len(set(names)) != len(names):
        p.error("input names must be distinct, got %s" % ", ".join(names))
    if a.outputs and len(set(a.outputs)) != len(a.outputs):
        p.error("output names must be distinct, got %s" % ", ".join(a.outputs))
    if a.outputs and set(a.outputs) & set(names):
        p.error("output names must differ from input names")
    return a


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


def torch_load(path: str, trust: bool):
    import torch
    if not os.path.isfile(path):
        raise ExportError("--state-dict file '%s' does not exist" % path)
    try:
        if trust:
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except TypeError:
                return torch.load(path, map_location="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except TypeError:
            # This torch predates weights_only: it always unpickles fully.
            return torch.load(path, map_location="cpu")
    except ExportError:
        raise
    except Exception as ex:
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        hint = ""
        if "weights_only" in str(ex) or "Unpickl" in type(ex).__name__:
            hint = " (the file holds objects beyond tensors; if it comes from a trusted source, " \
                   "pass --trust-checkpoint)"
        raise ExportError("cannot load --state-dict '%s': %s%s" % (path, first, hint))


def extract_state_dict(obj, path: str):
    import torch
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if not isinstance(obj, dict):
        raise ExportError("--state-dict '%s' holds a %s, expected a dict of tensors or a checkpoint "
                          "with a 'state_dict' entry" % (path, type(obj).__name__))
    for key in ("state_dict", "model_state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ExportError("--state-dict '%s' holds no tensors (keys: %s)" % (path, ", ".join(list(map(str, obj))[:8])))
    return tensors


def match_keys(sd: dict, model_keys: list):
    """Returns (state_dict with the model's key names, note) by stripping a common prefix if needed."""
    want = set(model_keys)
    if want <= set(sd):
        return sd, None
    # Candidate prefixes: whatever precedes a model key at the end of a checkpoint key.
    counts = collections.Counter()
    for k in sd:
        for mk in want:
            if k.endswith("." + mk):
                counts[k[:len(k) - len(mk)]] += 1
    for prefix, _ in counts.most_common():
        stripped = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if want <= set(stripped):
            return stripped, "stripped key prefix '%s' from the checkpoint" % prefix
    return sd, None


def load_weights(model, args):
    import torch
    raw = torch_load(args.state_dict, args.trust_checkpoint)
    sd = extract_state_dict(raw, args.state_dict)
    own = model.state_dict()
    sd, note = match_keys(sd, list(own))
    if note:
        log("  " + note)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = ["%s: file %s, model %s" % (k, tuple(sd[k].shape), tuple(own[k].shape))
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if note and unexpected:
        # After stripping a prefix, the other checkpoint entries belong to the
        # training wrapper (losses, metrics), not to the model.
        log("  ignoring %d checkpoint entries outside the model (e.g. %s)" % (len(unexpected), unexpected[0]))
        unexpected = []
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:5]) + (" and %d more" % (len(xs) - 5) if len(xs) > 5 else "")
        parts = []
        if missing:
            parts.append("%d missing from the file (%s)" % (len(missing), few(missing)))
        if unexpected:
            parts.append("%d not in the model (%s)" % (len(unexpected), few(unexpected)))
        if shapes:
            parts.append("%d with other shapes (%s)" % (len(shapes), few(shapes)))
        raise ExportError("--state-dict '%s' does not match the model built by %s: %s"
                          % (args.state_dict, args.builder, "; ".join(parts)))
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


def build_model(args):
    import torch
    if args.seed is not None:
        torch.manual_seed(args.seed)
    fn = import_builder(args.builder)
    try:
        model = fn(**args.builder_kwargs)
    except Exception as ex:
        raise ExportError("builder %s(**%s) raised %s: %s" % (args.builder, json.dumps(args.builder_kwargs),
                                                                type(ex).__name__, ex))
    if not isinstance(model, torch.nn.Module):
        raise ExportError("builder %s returned a %s, expected a torch.nn.Module" % (args.builder, type(model).__name__))
    if args.state_dict:
        load_weights(model, args)
    model.eval()
    return model


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
    kwargs = dict(input_names=[s.name for s in specs], output_names=out_names,
                  dynamo=True, dynamic_shapes=tuple(shapes))
    params = inspect.signature(torch.onnx.export).parameters
    if "external_data" in params:
        kwargs["external_data"] = False
    if "verbose" in params:
        kwargs["verbose"] = False
    prog = torch.onnx.export(model, args_t, str(path), **kwargs)
    if prog is not None and not Path(path).is_file() and hasattr(prog, "save"):
        prog.save(str(path))


def export_onnx(model, specs, out_names, example, example_outs, example_batch, path, opset, which):
    """Exports with the TorchScript-based exporter where this torch has it, else torch.export."""
    import torch
    args_t = tuple(torch.from_numpy(a.copy()) for a in example)
    dyn_axes = dynamic_axes_of(specs, out_names, example_outs, example_batch)
    errors = []
    has_dynamo = "dynamo" in inspect.signature(torch.onnx.export).parameters and hasattr(torch, "export")
    attempts = []
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
            if isinstance(w.message, DeprecationWarning) or "legacy TorchScript-based" in text or text in seen:
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
    """Moves the verified version (and config) from the temporary tree into the repository."""
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
    for f in ("labels.txt", "config.json"):
        if (tmp_model / f).exists():
            os.replace(tmp_model / f, model_dir / f)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except ExportError as ex:
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

    log("building %s (torch %s)..." % (args.builder, torch.__version__))
    model = build_model(args)
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

    repo.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".export-%s-" % args.name, dir=str(repo)))
    try:
        tmp_model = tmp_root / args.name
        vdir = tmp_model / str(version)
        vdir.mkdir(parents=True)
        onnx_path = vdir / "model.onnx"

        log("exporting to ONNX...")
        exporter = export_onnx(model, args.inputs, out_names, example, example_outs, example_batch,
                               onnx_path, args.opset, args.exporter)
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
