"""Build a bento that carries its model: copy an export into ``serve/model/``, then ``bentoml build``.

How the model gets into the bento: ``bentofile.yaml`` (repo top level) ``include``s
``serve/model/*``; :class:`serve.service.NewsClassifier` loads ``serve/model`` when
``DISTILL_EXPORT_DIR`` is unset, which is the case inside a served bento. ``serve/model/`` is a
build staging folder (its own ``.gitignore`` keeps it out of git); this module fills it::

    python -m serve.bento runs/bbc                 # int8 model only (smallest bento)
    python -m serve.bento runs/bbc --models int8,fp32
    python -m serve.bento runs/bbc --models fp16,fp32 --gpu   # requires onnxruntime-gpu instead
    bentoml serve news_classifier:latest           # 127.0.0.1:3000 (service config)
    bentoml serve news_classifier:latest --port 3001

The build is offline (``python.lock_packages: false``: no pip resolution at build time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def stage_export(export_dir: str | Path, dest: str | Path | None = None, models: tuple[str, ...] = ("int8",)) -> Path:
    """Copy an export's manifest, labels, tokenizer and the ``models`` kinds' files into ``dest``
    (default ``serve/model``), replacing what was there. The manifest is copied unchanged.

    Raises:
        FileNotFoundError: no manifest, or a requested model kind/file is missing.
    """
    from .runtime import resolve_export_dir

    src = resolve_export_dir(export_dir)
    dest = Path(dest) if dest else ROOT / "serve" / "model"
    manifest = json.loads((src / "manifest.json").read_text())
    files = ["manifest.json", "labels.json", manifest.get("tokenizer", {}).get("file", "tokenizer.json"),
             *TOKENIZER_FILES]
    for kind in models:
        info = manifest.get("models", {}).get(kind)
        if not info:
            raise FileNotFoundError(f"{src}: the export has no {kind} model")
        files.append(info["file"])
    if dest.exists():
        for p in dest.iterdir():
            if p.name != ".gitignore":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    for f in dict.fromkeys(files):
        if (src / f).is_file():
            shutil.copy2(src / f, dest / f)
        elif f in ("manifest.json",) or f in [manifest["models"][k]["file"] for k in models]:
            raise FileNotFoundError(f"{src / f}: missing")
    (dest / ".gitignore").write_text("# build staging for the bento (python -m serve.bento); not in git\n*\n")
    return dest


def gpu_bentofile(bentofile: str | Path, dest: str | Path) -> Path:
    """Write to ``dest`` a copy of ``bentofile`` whose python packages require ``onnxruntime-gpu``
    in place of ``onnxruntime`` (same version bound). The service picks the CUDA execution provider
    when it is available (:class:`serve.runtime.TextClassifierRuntime`), so this is the only change.

    Raises:
        ValueError: the bentofile lists no ``onnxruntime`` requirement to swap.
    """
    import yaml

    spec = yaml.safe_load(Path(bentofile).read_text())
    pkgs = spec.get("python", {}).get("packages", [])
    swapped = [re.sub(r"^onnxruntime(?![-\w])", "onnxruntime-gpu", p) for p in pkgs]
    if swapped == pkgs:
        raise ValueError(f"{bentofile}: python.packages has no 'onnxruntime' requirement to swap for onnxruntime-gpu")
    spec["python"]["packages"] = swapped
    spec["labels"] = {**spec.get("labels", {}), "runtime": "onnxruntime-gpu"}
    Path(dest).write_text(yaml.safe_dump(spec, sort_keys=False))
    return Path(dest)


def build_bento(build_ctx: str | Path = ROOT, env: dict[str, str] | None = None, timeout_s: float = 300,
                gpu: bool = False) -> str:
    """``bentoml build`` in ``build_ctx`` (which holds ``bentofile.yaml``); returns the bento tag.
    With ``gpu`` the bento requires ``onnxruntime-gpu`` instead of ``onnxruntime`` (see :func:`gpu_bentofile`).

    Raises:
        RuntimeError: the build failed (its output is in the message).
    """
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    with tempfile.TemporaryDirectory(prefix="bentofile-") as tmp:
        cmd = [sys.executable, "-m", "bentoml", "build", str(build_ctx), "--output", "tag"]
        if gpu:
            cmd += ["--bentofile", str(gpu_bentofile(Path(build_ctx) / "bentofile.yaml", Path(tmp) / "bentofile.yaml"))]
        res = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout_s, cwd=str(build_ctx))
    out = res.stdout + res.stderr
    m = re.search(r"__tag__:(\S+)", out) or re.search(r"(news_classifier:[a-z0-9]+)", out)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"bentoml build failed ({res.returncode}):\n{out[-4000:]}")
    return m.group(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Copy an export into serve/model and build the bento.")
    ap.add_argument("export", help="export folder or run folder (with export/)")
    ap.add_argument("--models", default="int8", help="comma-separated model kinds to pack (int8,fp32,fp16)")
    ap.add_argument("--no-build", action="store_true", help="only stage serve/model")
    ap.add_argument("--gpu", action="store_true", help="the bento requires onnxruntime-gpu instead of onnxruntime "
                    "(the service then uses the CUDA execution provider when a GPU is present)")
    a = ap.parse_args(argv)
    dest = stage_export(a.export, models=tuple(k.strip() for k in a.models.split(",") if k.strip()))
    print(f"staged {dest}")
    if not a.no_build:
        tag = build_bento(ROOT, gpu=a.gpu)
        print(f"built {tag}\nserve it: bentoml serve {tag}   (127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
