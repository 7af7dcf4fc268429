#!/usr/bin/env bash
# Set up .venv and run the main job: the bundled demo model answers about a bundled recording.
# With a checkpoint of your own:  scripts/quickstart.sh --model DIR --audio FILE --prompt TEXT
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-all}" scripts/install.sh >&2
SAMPLES=qwen_audio/assets/samples
if [ $# -eq 0 ]; then
  set -- --audio "$SAMPLES/speech.wav" --prompt "What does the person say?"
fi
exec .venv/bin/qwen-audio chat --temperature 0 "$@"
