#!/usr/bin/env bash
# Set up everything the tests need (system packages, .venv with all extras) and run them.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/system-deps.sh || echo "warning: could not install system packages; tests that need them will be skipped" >&2
EXTRAS="all,dev" scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest -q "$@"
