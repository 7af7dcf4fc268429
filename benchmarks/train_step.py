"""Time one full-finetuning step on the same batch through our trainer and through transformers.

The step is what `qwen-audio finetune --full --train-projector --bf16` does: the audio encoder
frozen, projector and decoder trained, bf16 autocast, AdamW. Ours packs the conversations and
encodes each clip at its own length; transformers pads them, as its processor does (every clip
to 30 s of features). The batch: `--batch` conversations, each a 2-5 s clip (the benchmarks'
seeded noise and tone: only speed matters here), a question and a one-sentence answer. Needs transformers (dev
extra). Prints seconds per step and the ratio; the last line is JSON.

    python benchmarks/train_step.py [MODEL] [--batch 16] [--steps 5]

MODEL defaults to the bundled demo model; `benchmarks/make_checkpoint.py` writes a bigger one.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np
import torch

from qwen_audio.bench.workloads import clip as noise_clip

ANSWERS = [
    "The dog ate my sandwich on the way to school.",
    "Please close the window before you leave.",
    "My sister bought three red apples yesterday.",
    "Will it be cold in the mountains next week?",
]


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    convs = []
    for i in range(n):
        clip = noise_clip(rng.uniform(2.0, 5.0), seed=seed + i)
        user = [
            {"type": "audio", "audio": (clip, 16000)},
            {"type": "text", "text": "What does the person say?"},
        ]
        answer = ANSWERS[i % len(ANSWERS)]
        convs.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return convs


def time_steps(step, steps: int) -> float:
    step()  # warm-up: allocations, optimizer state
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def ours(model_dir: str | None, convs: list[list[dict]], steps: int) -> float:
    from qwen_audio.llm import load_checkpoint
    from qwen_audio.train.batching import pack
    from qwen_audio.train.forward import token_logprobs
    from qwen_audio.train.lora import TrainableParts, set_trainable

    ckpt = load_checkpoint(model_dir, dtype="float32")
    model = ckpt.model.train()
    set_trainable(model, TrainableParts(lm=True, projector=True))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    rendered = [
        ckpt.renderer.render_chat(c, add_generation_prompt=False, with_loss_mask=True)
        for c in convs
    ]

    def step() -> None:
        batch = pack(rendered)  # packing is part of every step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps = token_logprobs(model, batch)
        (-logps.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, steps)


def transformers_step(model_dir: str, convs: list[list[dict]], steps: int) -> float:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from qwen_audio.bench.worker import reference_messages

    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    model.get_submodule("model.audio_tower").requires_grad_(False)  # transformers 5 layout
    processor = AutoProcessor.from_pretrained(model_dir)
    texts, audios = [], []
    for conv in convs:
        messages, conv_audios = reference_messages(conv)
        audios += conv_audios
        texts.append(processor.apply_chat_template(messages, tokenize=False))
    inputs = processor(
        text=texts, audio=audios, sampling_rate=16000, return_tensors="pt", padding=True
    )
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    labels[labels == model.config.audio_token_index] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", default=None, help="checkpoint folder (default: demo)")
    p.add_argument("--batch", type=int, default=16, help="conversations per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    args = p.parse_args(argv)
    from qwen_audio.config import default_model
    from qwen_audio.model.loader import resolve_model_path

    model_dir = str(resolve_model_path(default_model(args.model)))
    convs = conversations(args.batch)
    result = {"model": model_dir, "batch": args.batch, "threads": torch.get_num_threads()}
    result["ours_s"] = round(ours(model_dir, convs, args.steps), 4)
    gc.collect()
    result["transformers_s"] = round(transformers_step(model_dir, convs, args.steps), 4)
    result["ratio"] = round(result["ours_s"] / result["transformers_s"], 3)
    print(f"full-finetuning step, {args.batch} conversations of 2-5 s clips, bf16 autocast:")
    print(f"  ours         {result['ours_s']:.3f} s/step")
    print(f"  transformers {result['transformers_s']:.3f} s/step")
    print(f"  ours / transformers: {result['ratio']:.2f}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
