#!/usr/bin/env bash
# Set up .venv, then run the main job: the model answers a question about a bundled recording
# (qwen_audio/assets/samples/speech.wav, a held-out demo sentence; samples.json has its text).
#   scripts/quickstart.sh                                  the bundled demo model
#   scripts/quickstart.sh --model DIR                      a checkpoint folder or a cached hub id
#   scripts/quickstart.sh --model DIR --audio F --prompt T your own audio and question
#   scripts/quickstart.sh --prompt T                       a text-only question
# Without --model it uses $QWEN_AUDIO_MODEL, else the bundled demo model. Other options go to
# `qwen-audio chat` (see .venv/bin/qwen-audio chat --help). A rerun skips the installation
# unless pyproject.toml or the torch spec changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
EXTRAS="${EXTRAS:-all}" VENV="$VENV" scripts/install.sh >&2
args=("$@")
has_audio=0 has_prompt=0
for a in "${args[@]}"; do
  case "$a" in
    --audio | --audio=*) has_audio=1 ;;
    --prompt | --prompt=*) has_prompt=1 ;;
  esac
done
# The bundled recording and its question only when the user gave neither.
if [ "$has_audio" = 0 ] && [ "$has_prompt" = 0 ]; then
  args+=(--audio qwen_audio/assets/samples/speech.wav --prompt "What does the person say?")
fi
exec "$VENV/bin/qwen-audio" chat --temperature 0 "${args[@]}"
