"""The model to export: built by the user's builder or loaded from what training saved,
its weights loaded strictly, put in eval mode, and run in PyTorch.

corral_checkpoint tells the file forms apart without running code from the file; this
module decides what to do with each form (a builder for plain weights, the file's own
graph for TorchScript and torch.export), and refuses a model that still behaves as in
training, since batching runs rows of different clients together. Running the model
(run_torch) lives here too: the example input, the training-mode check and the parity
vectors all go through it.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

import corral_checkpoint as ckpt
from corral_export_common import REPO_ROOT, ExportError, log


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
