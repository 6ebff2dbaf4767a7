"""The model repository: which versions exist, and publishing a verified version.

Everything is exported into a temporary directory inside the repository (the same
file system, so that a rename is atomic) and moved into place only after it was
verified; a failure at any step, the move included, leaves the repository as it was.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from corral_export_common import ExportError

def existing_versions(model_dir: Path):
    vs = []
    if model_dir.is_dir():
        for e in model_dir.iterdir():
            if e.is_dir() and re.fullmatch(r"[1-9][0-9]*", e.name):
                vs.append(int(e.name))
    return sorted(vs)


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
