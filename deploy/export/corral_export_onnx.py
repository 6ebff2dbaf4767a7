"""The ONNX export itself and the checks of what it produced.

torch.onnx has two exporters with different reach: the TorchScript-based one (dynamic
axes, torch 1.x and 2.x) and the dynamo one (torch.export, torch >= 2.5). A TorchScript
module can only take the first and an ExportedProgram only the second; for a plain
module the tool tries the first and falls back to the second, so that one command
works across torch versions. The file is then loaded back and checked (onnx.checker,
the inputs and outputs it declares) before anything else trusts it.
"""

from __future__ import annotations

import collections
import inspect
import re
import warnings
from pathlib import Path

import corral_checkpoint as ckpt
from corral_export_common import DTYPES, ONNX_ELEM, ExportError, log

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
