"""What a --checkpoint file holds, found out without running code from it.

    ck = corral_checkpoint.read(path, trust=False)
    ck.form          # one of the FORM_* names below, for messages and provenance
    ck.module        # TorchScript, ExportedProgram, pickled module: the model itself
    ck.state_dict    # the other forms: the weights, for the builder's model
    ck.weights_key   # which entry of a checkpoint dict held them (None: the file is them)
    ck.hparams       # builder keyword arguments found in the file, or None
    ck.hparams_key   # the entry they came from ('config', 'hparams', 'hyper_parameters')
    ck.ignored       # the other entries of a checkpoint dict, summarised for provenance
    ck.program       # the torch.export.ExportedProgram, for an ExportedProgram

Files written by torch.save are read with torch.load(weights_only=True): only
tensors, containers, numbers and strings come back, plus the types allowed
explicitly here (Lightning's AttributeDict, through a stand-in that builds a plain
dict, so Lightning is never imported; argparse.Namespace). Any other type is
refused, naming it, unless `trust` (--trust-checkpoint) allows full unpickling.
TorchScript archives (torch.jit.save) and ExportedPrograms (torch.export.save)
are recognised by their zip layout before anything is loaded; both carry their
graph as data rather than as pickled Python code.
"""

from __future__ import annotations

import argparse
import collections.abc
import hashlib
import math
import os
import re
import sys
import warnings
import zipfile

FORM_STATE_DICT = "state_dict"
FORM_CHECKPOINT = "checkpoint dict"
FORM_LIGHTNING = "PyTorch Lightning checkpoint"
FORM_TORCHSCRIPT = "TorchScript"
FORM_EXPORTED = "ExportedProgram"
FORM_MODULE = "pickled module"

# Where checkpoint dicts keep the weights and the model's configuration, in the order
# they are looked for.
WEIGHT_KEYS = ("model_state", "model_state_dict", "state_dict", "model")
HPARAM_KEYS = ("config", "hparams", "hyper_parameters")

# The names Lightning's AttributeDict has been pickled under (Lightning 1.x and 2.x,
# the pytorch_lightning and the unified lightning packages).
ATTRIBUTE_DICT_NAMES = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
)

SAVE_STATE_DICT_HINT = ("save the weights instead, torch.save(model.state_dict(), 'model.pt'), and give "
                        "the function that builds the model as --builder")


class CheckpointError(Exception):
    """A file that cannot be used, with a message fit to show the user as is."""


class _AttributeDict:
    """Stands in for Lightning's AttributeDict while unpickling.

    The weights-only unpickler creates an allowed class with cls.__new__(cls) and
    then fills it with SETITEMS, which it permits on plain dicts only, so the
    stand-in's __new__ returns a plain dict: the hyper-parameters come back as one,
    and no Lightning code is imported or run.
    """

    def __new__(cls, *args):
        return dict(*args)


class Checkpoint:
    def __init__(self, path, form):
        self.path = path
        self.form = form
        self.module = None
        self.program = None
        self.state_dict = None
        self.weights_key = None
        self.hparams = None
        self.hparams_key = None
        self.ignored = {}
        self.detail = ""   # e.g. the Lightning version, for messages
        self.sha256 = file_sha256(path)

    def describe(self) -> str:
        what = with_article(self.form)
        what += " (%s)" % self.detail if self.detail else ""
        if self.weights_key:
            what += ", weights under '%s'" % self.weights_key
        return what


def with_article(form) -> str:
    return {FORM_EXPORTED: "an ExportedProgram (torch.export)",
            FORM_TORCHSCRIPT: "a TorchScript module"}.get(form, "a " + form)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _first_line(ex) -> str:
    text = str(ex).strip()
    return text.splitlines()[0] if text else type(ex).__name__


def zip_kind(path):
    """FORM_TORCHSCRIPT, FORM_EXPORTED, 'aoti' or None (a torch.save archive or no zip)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    # Every archive keeps its files under one top-level folder named after the file.
    rel = {n.split("/", 1)[1] for n in names if "/" in n}
    if any(n.startswith("data/aotinductor/") for n in rel):
        return "aoti"
    if "models/model.json" in rel or any(re.fullmatch(r"models/[^/]+\.json", n) for n in rel):
        return FORM_EXPORTED
    if "constants.pkl" in rel or any(n.startswith("code/") for n in rel):
        return FORM_TORCHSCRIPT
    return None


def read(path: str, trust: bool = False, import_dirs=()) -> Checkpoint:
    """Loads `path` as described at the top of this file; raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError("--checkpoint file '%s' does not exist" % path)
    kind = zip_kind(path)
    if kind == "aoti":
        raise CheckpointError("--checkpoint '%s' is an AOTInductor package (compiled machine code for one "
                              "device), which cannot be exported; save the torch.export program itself "
                              "with torch.export.save(ep, 'model.pt2')" % path)
    if kind == FORM_TORCHSCRIPT:
        return _read_torchscript(path)
    if kind == FORM_EXPORTED:
        return _read_exported(path)
    obj = _torch_load(path, trust, import_dirs)
    return _interpret(path, obj)


def _read_torchscript(path):
    import torch
    ck = Checkpoint(path, FORM_TORCHSCRIPT)
    try:
        with warnings.catch_warnings():
            # torch.jit.load warns that TorchScript is deprecated: not news to the user here.
            warnings.simplefilter("ignore", FutureWarning)
            ck.module = torch.jit.load(path, map_location="cpu")
    except Exception as ex:
        raise CheckpointError("cannot load --checkpoint '%s' as TorchScript: %s" % (path, _first_line(ex)))
    return ck


def _read_exported(path):
    import torch
    ck = Checkpoint(path, FORM_EXPORTED)
    try:
        ck.program = torch.export.load(path)
        ck.module = ck.program.module()
    except Exception as ex:
        raise CheckpointError("cannot load --checkpoint '%s' as a torch.export ExportedProgram: %s"
                              % (path, _first_line(ex)))
    return ck


def _safe_globals():
    return [(_AttributeDict, n) for n in ATTRIBUTE_DICT_NAMES] + [argparse.Namespace]


def _torch_load(path, trust, import_dirs):
    import torch
    if trust:
        # Full unpickling imports the classes named in the file, from the same places a
        # builder is imported from.
        for d in import_dirs:
            if d not in sys.path:
                sys.path.insert(0, d)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as ex:
            raise CheckpointError("cannot unpickle --checkpoint '%s' (--trust-checkpoint): %s: %s%s"
                                  % (path, type(ex).__name__, _first_line(ex),
                                     " (the class it names must be importable from the current "
                                     "directory or the corral source tree; a class defined in the "
                                     "script that saved it is not)" if isinstance(ex, (AttributeError,
                                                                                       ImportError)) else ""))
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as ex:
        unsafe = _unsafe_globals(path, ex)
        if unsafe is None:
            raise CheckpointError("cannot load --checkpoint '%s': %s (expected a file written by torch.save, "
                                  "torch.jit.save or torch.export.save)" % (path, _first_line(ex)))
        modules = [n for n in unsafe if n.startswith("torch.nn.modules.")]
        own = [n for n in unsafe if not n.startswith("torch.")]
        if modules:
            raise CheckpointError(
                "--checkpoint '%s' holds a whole pickled module (%s), saved with torch.save(model): "
                "loading it means running code named by the file, and it only loads where the same "
                "classes are importable under the same names; %s (or pass --trust-checkpoint if the "
                "file comes from a source you trust)"
                % (path, ", ".join((own or modules)[:4]), SAVE_STATE_DICT_HINT))
        raise CheckpointError(
            "--checkpoint '%s' holds objects of type %s, which weights-only loading refuses: only "
            "tensors, containers, numbers, strings and Lightning's AttributeDict are loaded without "
            "running code from the file; store plain values instead (e.g. a dict for the config), or "
            "pass --trust-checkpoint if the file comes from a source you trust"
            % (path, ", ".join(unsafe[:6]) + (" and %d more" % (len(unsafe) - 6) if len(unsafe) > 6 else "")))


def _unsafe_globals(path, ex):
    """The names of the types weights-only loading refused, or None when that was not the problem."""
    import torch
    allowed = set(ATTRIBUTE_DICT_NAMES) | {"argparse.Namespace"}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        names = []
    names = [n for n in names if n not in allowed]
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+) was not an allowed global", str(ex))
    if not names:
        m = re.search(r"(?:Can only \w+[^\n]*but got |Unsupported class )<class '([\w.]+)'>", str(ex))
        if m:
            names = [m.group(1)]
    return names or None


def _is_tensor_map(v):
    import torch
    return isinstance(v, collections.abc.Mapping) and len(v) > 0 and \
        all(isinstance(x, torch.Tensor) for x in v.values())


def _interpret(path, obj):
    import torch
    if isinstance(obj, torch.nn.Module):
        ck = Checkpoint(path, FORM_MODULE)
        ck.module = obj
        ck.detail = "%s.%s" % (type(obj).__module__, type(obj).__qualname__)
        return ck
    if not isinstance(obj, collections.abc.Mapping):
        raise CheckpointError("--checkpoint '%s' holds a %s; expected a state_dict (a dict of tensors), a "
                              "checkpoint dict with the weights under one of %s, a Lightning .ckpt, a "
                              "TorchScript file or a torch.export .pt2 file"
                              % (path, type(obj).__name__, ", ".join("'%s'" % k for k in WEIGHT_KEYS)))
    key = next((k for k in WEIGHT_KEYS if k in obj), None)
    if key is None:
        if _is_tensor_map(obj):
            ck = Checkpoint(path, FORM_STATE_DICT)
            ck.state_dict = dict(obj)
            return ck
        others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        raise CheckpointError("--checkpoint '%s' is a dict with entries %s: none of %s holds the weights, and "
                              "it is not a plain state_dict (%s not a tensor)"
                              % (path, _few(list(map(str, obj))), ", ".join("'%s'" % k for k in WEIGHT_KEYS),
                                 _few(others) + (" is" if len(others) == 1 else " are")))
    lightning = "pytorch-lightning_version" in obj or "lightning_version" in obj
    ck = Checkpoint(path, FORM_LIGHTNING if lightning else FORM_CHECKPOINT)
    if lightning:
        ck.detail = "Lightning %s" % obj.get("pytorch-lightning_version", obj.get("lightning_version"))
    ck.weights_key = key
    weights = obj[key]
    if isinstance(weights, torch.nn.Module):   # only reachable with --trust-checkpoint
        weights = weights.state_dict()
    if not _is_tensor_map(weights):
        raise CheckpointError("--checkpoint '%s': entry '%s' is %s, expected the model's state_dict (a dict "
                              "of tensors)" % (path, key, _summary(weights)))
    ck.state_dict = dict(weights)
    hkey = next((k for k in HPARAM_KEYS if k in obj), None)
    if hkey is not None:
        h = obj[hkey]
        if isinstance(h, argparse.Namespace):
            h = vars(h)
        if not isinstance(h, collections.abc.Mapping) or not all(isinstance(k, str) for k in h):
            raise CheckpointError("--checkpoint '%s': entry '%s' is %s, expected a dict of the builder's keyword "
                                  "arguments (or give them with --builder-args)" % (path, hkey, _summary(h)))
        ck.hparams = dict(h)
        ck.hparams_key = hkey
    ck.ignored = {str(k): _summary(v, plain=True) for k, v in obj.items() if k not in (key, hkey)}
    return ck


def _few(xs, n=8):
    return ", ".join(xs[:n]) + (" and %d more" % (len(xs) - n) if len(xs) > n else "")


def _summary(v, plain=False):
    """A JSON-safe account of a value: numbers and short strings as they are (with
    plain), anything else by its type and size."""
    import torch
    if plain:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else str(v)
        if isinstance(v, str) and len(v) <= 200:
            return v
        if isinstance(v, torch.Tensor) and v.numel() == 1 and v.dtype.is_floating_point:
            return _summary(float(v), plain=True)
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.dtype.is_complex:
            return int(v)
    if isinstance(v, torch.Tensor):
        return "a tensor of shape %s" % list(v.shape)
    if isinstance(v, collections.abc.Mapping):
        return "a dict of %d entries" % len(v)
    if isinstance(v, (list, tuple)):
        return "a %s of %d items" % (type(v).__name__, len(v))
    if isinstance(v, str):
        return "a string of %d characters" % len(v)
    return "a value of type %s" % type(v).__name__
