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

The steps live in modules beside this file (corral_export_common.py names them all);
this file is the command and the order of the steps.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import corral_checkpoint as ckpt
from corral_checkpoint import CheckpointError
from corral_export_args import check_image_input, parse_args
from corral_export_common import DTYPES, ExportError, log
from corral_export_config import write_config
from corral_export_model import check_inference_mode, prepare_model, run_torch
from corral_export_onnx import check_program_inputs, export_onnx, onnx_summary
from corral_export_repo import existing_versions, publish
from corral_export_vectors import make_input, write_vectors
from corral_export_verify import find_replica, have_onnxruntime, verify_onnxruntime, verify_replica


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

        vectors = write_vectors(model, args, out_names, other_dyn, rng, vdir)
        write_config(args, old_config, out_info, vectors, model_dir, tmp_model, versions, version, prep,
                     exporter, opset)

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
