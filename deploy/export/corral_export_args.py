"""The export tool's command line: the usage text, the parsing of every flag, and the
checks that flags make sense together before anything is built.

Everything a user can get wrong by typing is refused here with argparse's usage error
(exit status 2), naming the flag and the value, so that the later steps only meet
arguments that are well formed. What can only be checked against the model (an image
input's shape, for one) is checked later, by the step that knows the model.
"""

from __future__ import annotations

import argparse
import json
import re

from corral_export_common import (DEFAULT_MAX_BATCH, DEFAULT_QUEUE_DELAY_US, DTYPES, LEGACY_OPSET,
                                  MAX_BATCH_LIMIT, MAX_BUCKETS, QUEUE_DELAY_LIMIT_US, ExportError,
                                  InputSpec)

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
