#!/usr/bin/env bash
# Create .venv and install qwen-audio into it.
#   EXTRAS       package extras to install (default: all)
#   TORCH_SPEC   the torch requirement (default: torch==2.13.0, the CPU build on this platform)
#   TORCH_INDEX_URL  an index for torch, e.g. https://download.pytorch.org/whl/cpu or .../cu124
#   VENV, PYTHON where to put the environment and which interpreter makes it
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-all}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  python -m pip install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
else
  python -m pip install -q "$TORCH_SPEC"
fi
python -m pip install -q -e ".[$EXTRAS]"
echo "installed qwen-audio into $VENV (extras: $EXTRAS; $(python -c 'import torch; print("torch", torch.__version__)'))"
