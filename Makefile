# Developer shortcuts. `make help` lists them.
PYTHON ?= python
DEMO_WORK ?= build/demo

.PHONY: help demo-model

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Data (espeak-ng), tokenizer, Whisper tiny.en encoder + random decoder, `qwen-audio finetune
# --full`, fp16 export, held-out evals; then the weights and samples go into qwen_audio/assets/
# and the loss curve into docs/. Seeded; about 55 minutes on 2 CPU cores (see the README and
# WORK/report.json).
demo-model:  ## rebuild the bundled demo model from scratch (under an hour on 2 CPU cores)
	nice -n 10 $(PYTHON) -m qwen_audio.cli train-demo --work $(DEMO_WORK) --install
	cp $(DEMO_WORK)/loss.png docs/demo-loss.png
