"""Parity vectors: random inputs and PyTorch's own outputs for them, written beside
the model (<version>/vectors/K/input_I.pb, output_J.pb as ONNX TensorProtos).

They are what "verified" means for a corral model: the export checks onnxruntime and
corral-replica against them, and every replica replays them before it takes traffic.
The batch sizes vary (VECTOR_BATCHES) so that padding and bucketing are exercised too.
"""

from __future__ import annotations

from pathlib import Path

from corral_export_common import (DEFAULT_INT_RANGE, DTYPES, OTHER_DYN_RANGE, VECTOR_BATCHES,
                                  ExportError, InputSpec, log)
from corral_export_model import run_torch

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


def write_tensor_pb(path: Path, arr, name: str):
    from onnx import numpy_helper
    path.write_bytes(numpy_helper.from_array(arr, name).SerializeToString())


def write_vectors(model, args, out_names, other_dyn, rng, vdir: Path):
    """Draws args.vectors parity vectors, runs PyTorch on them and writes them under vdir.

    Returns [(inputs, outputs)], the arrays, for the verification steps."""
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
    return vectors
