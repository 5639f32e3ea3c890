"""Atomic file and folder writes, the run state used by ``--resume``, and checkpoints.

A complete file is never replaced by a partial one: everything is written to a temporary name in
the same folder, flushed, then renamed (``os.replace`` is atomic on POSIX). Folders (model
folders) are written to ``.<name>.tmp-*`` and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary file name beside ``path``; on success it replaces ``path`` (``os.replace``), on any
    error it is removed. The name ``.<name>.<pid>.<random>.tmp`` tells :func:`sweep_partials` whose it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a file of a run is readable like any other
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds (and is removed if not)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.tmp-", dir=path.parent))
    mask = _umask()
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700
    try:
        yield tmp
        for p in tmp.rglob("*"):  # some writers (safetensors) create 0600 files: they follow the umask too
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Mirror ``src`` into ``dst`` (atomically) with hard links where possible, copies otherwise."""
    with atomic_dir(dst) as tmp:
        for f in Path(src).rglob("*"):
            if f.is_dir():
                continue
            out = tmp / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, out)
            except OSError:
                shutil.copy2(f, out)


def check_writable(folder: Path) -> None:
    """Raise :class:`DistillError` if ``folder`` (or its nearest existing parent) is not writable."""
    from .errors import DistillError

    p = Path(folder).resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise DistillError(f"output folder {folder} is not writable (checked {probe}). Choose another --out.")


class RunState:
    """``state.json`` of a run: which phases finished and their results, for ``--resume``."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "state.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.is_file() else {"done": {}}

    def done(self, phase: str) -> bool:
        return phase in self.data["done"]

    def get(self, phase: str) -> Any:
        return self.data["done"].get(phase)

    def mark(self, phase: str, result: Any = True) -> None:
        """Record a finished phase (written by rank 0 only under a launcher)."""
        from .distributed import world

        self.data["done"][phase] = result
        if world().main:
            atomic_write_json(self.path, self.data)


def save_checkpoint(path: Path, state: dict) -> None:
    """Save a training checkpoint (tensors and plain containers only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` (no code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?:[^.]+\.tmp|tmp-.+)$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_partials(folder: Path, only: str | None = None) -> list[str]:
    """Remove what a killed writer left under ``folder`` (recursively) and return what was done, one line each.

    A temporary file or folder of :func:`atomic_path` / :func:`atomic_dir` whose process (the pid in its
    name) is gone is deleted: it never replaced anything, so nothing good is lost. A ``.<name>.old-<pid>``
    folder without ``<name>`` beside it means the writer died between its two renames: the old, complete
    version is put back. Temporary names of processes still running (another run sharing a teacher store)
    are left alone. With ``only``, just the leftovers of ``folder/<only>`` (one level) are considered.
    Safe on a folder that does not exist (returns ``[]``).
    """
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    found = folder.glob(".*") if only else folder.rglob(".*")
    for p in sorted(found, key=lambda q: len(q.parts), reverse=True):
        if not p.exists() and not p.is_symlink():
            continue
        if only and not p.name.startswith(f".{only}."):
            continue
        m = _PARTIAL.match(p.name)
        if m and not _alive(int(m["pid"])):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            done.append(f"removed partial {p}")
            continue
        m = _OLD.match(p.name)
        if m and not _alive(int(m["pid"])) and p.is_dir():
            target = p.with_name(m["name"])
            if target.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed superseded {p}")
            else:
                p.rename(target)
                done.append(f"restored {target} from {p.name}")
    return done
