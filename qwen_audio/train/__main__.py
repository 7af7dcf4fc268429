"""`python -m qwen_audio.train finetune|export|config ...` (also what torchrun and
`accelerate launch -m` start)."""

from .cli import main

raise SystemExit(main())
