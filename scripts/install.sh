#!/usr/bin/env bash
# Create .venv and install qwen-audio into it.
#   EXTRAS       package extras to install (default: all)
#   TORCH_SPEC   the torch requirement (default: torch==2.13.0, the CPU build on this platform)
#   TORCH_INDEX_URL  an index for torch, e.g. https://download.pytorch.org/whl/cpu or .../cu124
#   VENV, PYTHON where to put the environment and which interpreter makes it
#   FORCE_INSTALL=1  install even when the stamp says this environment is up to date
# A stamp in the environment records what was installed (pyproject.toml, the torch spec and
# index, the extras); a rerun with nothing new skips pip entirely.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-all}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.qwen-audio-installed"

key="$( (cat pyproject.toml; echo "$TORCH_SPEC ${TORCH_INDEX_URL:-}") | sha256sum | cut -c1-16)"

up_to_date() {  # the same key, and every extra asked for already installed
  [ -z "${FORCE_INSTALL:-}" ] && [ -f "$STAMP" ] && [ -x "$VENV/bin/qwen-audio" ] || return 1
  [ "$(sed -n 's/^key=//p' "$STAMP")" = "$key" ] || return 1
  local have extra
  have=",$(sed -n 's/^extras=//p' "$STAMP"),"
  for extra in ${EXTRAS//,/ }; do
    [[ "$have" == *",$extra,"* ]] || return 1
  done
}

if up_to_date; then
  echo "qwen-audio is already installed in $VENV (extras: $(sed -n 's/^extras=//p' "$STAMP");" \
    "$TORCH_SPEC); FORCE_INSTALL=1 reinstalls"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip_install() { python -m pip install --disable-pip-version-check "$@"; }
echo "== upgrading pip in $VENV"
pip_install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
echo "== installing $TORCH_SPEC${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} (a few hundred MB the first time)"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip_install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
else
  pip_install "$TORCH_SPEC"
fi
echo "== installing qwen-audio[$EXTRAS] and its dependencies"
pip_install -e ".[$EXTRAS]"

# Keep the extras of earlier installs: installing [all] after [all,dev] removes nothing.
old=""
if [ -f "$STAMP" ] && [ "$(sed -n 's/^key=//p' "$STAMP")" = "$key" ]; then
  old="$(sed -n 's/^extras=//p' "$STAMP")"
fi
extras="$(echo "$old,$EXTRAS" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
printf 'key=%s\nextras=%s\n' "$key" "$extras" > "$STAMP"
echo "installed qwen-audio into $VENV (extras: $EXTRAS; $(python -c 'import torch; print("torch", torch.__version__)'))"
