"""config.json: what the export writes there and why.

config.json is shared by all versions of a model, so the export starts from the one
already in the repository and changes only what it knows: inputs, outputs, parity
tolerance, labels, image pre- and postprocessing, the batching section (kept as it is
unless a batching flag is given) and the provenance of this version (entries of
versions still present are kept). The batching default, batch what is waiting and add
no delay, is chosen here (docs/batching.md explains it).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from corral_export_common import DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, MAX_BUCKETS, ExportError, log

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


def config_text(config: dict) -> str:
    """JSON with two-space indents, but a list of plain numbers (a shape) kept on one line."""
    text = json.dumps(config, indent=2)
    text = re.sub(r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def write_config(args, old_config, out_info, vectors, model_dir: Path, tmp_model: Path, versions, version,
                 prep, exporter, opset):
    """Writes the new config.json (and labels.txt) into the temporary model directory."""
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
