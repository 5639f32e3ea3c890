"""Integrity of saved artifacts: sha256 checksums written with every model folder and cache file, and
checked before they are used, so a truncated or altered file is caught with a message that names it
(not a traceback from inside safetensors, or silently wrong weights).

* A model folder (teacher in the teacher store, a run's students) gets ``checksums.json``: the sha256 and
  size of every file in it, written last (see :func:`write_checksums`).
* The teacher-output cache file carries a digest of its tensors in its safetensors metadata
  (:func:`tensor_digest`): it is one file, so it cannot list its own checksum.

What happens on a mismatch is the caller's choice: the teacher store and the teacher-output cache are
rebuilt (safe: they are derived data, and the log says so); a run's student makes ``--resume`` retrain
that seed; an export or a student outside a run is refused with the fix.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import DistillError
from .runio import sha256_file

CHECKSUMS = "checksums.json"


class CorruptArtifact(DistillError):
    """A saved file is missing, cut short or altered after it was written.

    Attributes:
        path: the first bad file.
        problem: what is wrong with it (one phrase).
    """

    def __init__(self, path: Path, problem: str, fix: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}. {fix}")


def write_checksums(folder: Path) -> None:
    """Write ``folder/checksums.json``: ``{"algorithm": "sha256", "files": {relative path: {"sha256", "bytes"}}}``
    for every file under ``folder``. Call it after the last file is written (the folder is still a
    temporary one of :func:`distill.runio.atomic_dir`, so a plain write is enough)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1) + "\n")


def verify_checksums(folder: Path, fix: str) -> bool:
    """Check every file listed in ``folder/checksums.json``; returns False when the folder has none (written
    by an older version: nothing to check), True when all match.

    Raises:
        CorruptArtifact: a listed file is missing, has another size or another sha256 (the message ends
            with ``fix``), or ``checksums.json`` itself does not parse.
    """
    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        return False
    try:
        files = json.loads(listing.read_text())["files"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        raise CorruptArtifact(listing, "does not parse", fix) from None
    for rel, want in files.items():
        p = folder / rel
        if not p.is_file():
            raise CorruptArtifact(p, "is missing", fix)
        size = p.stat().st_size
        if size != want["bytes"]:
            raise CorruptArtifact(p, f"has {size} bytes, {want['bytes']} were written (cut short or altered)", fix)
        if sha256_file(p) != want["sha256"]:
            raise CorruptArtifact(p, "sha256 differs from the one recorded when it was written (altered)", fix)
    return True


def tensor_digest(tensors: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (name -> torch.Tensor), in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
