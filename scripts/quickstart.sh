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
if [[ " ${args[*]} " != *" --model "* && -z "${QWEN_AUDIO_MODEL:-}" && ! -f qwen_audio/assets/demo-model/config.json ]]; then
  echo "No model yet: pass a Qwen2-Audio checkpoint folder, e.g." >&2
  echo "  scripts/quickstart.sh --model ~/models/Qwen2-Audio-7B-Instruct" >&2
  echo "(the bundled demo model is missing from qwen_audio/assets/demo-model; see the README)" >&2
  exit 2
fi
exec .venv/bin/qwen-audio chat --temperature 0 "${args[@]}"
