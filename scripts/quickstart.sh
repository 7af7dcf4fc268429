#!/usr/bin/env bash
# Set up .venv, then run the main job: the model answers a question about a bundled recording
# (qwen_audio/assets/samples/speech.wav, a held-out demo sentence; samples.json has its text).
#   scripts/quickstart.sh                                  the bundled demo model
#   scripts/quickstart.sh --model DIR                      a checkpoint folder or a cached hub id
#   scripts/quickstart.sh --model DIR --audio F --prompt T your own audio and question
# Without --model it uses $QWEN_AUDIO_MODEL, else the bundled demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-all}" scripts/install.sh >&2
args=("$@")
if [[ " ${args[*]} " != *" --audio "* ]]; then
  args+=(--audio qwen_audio/assets/samples/speech.wav --prompt "What does the person say?")
fi
exec .venv/bin/qwen-audio chat --temperature 0 "${args[@]}"
