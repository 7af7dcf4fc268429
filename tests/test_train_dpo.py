"""DPO on (chosen, rejected) pairs raises the chosen-over-rejected log-probability margin."""

from __future__ import annotations

import csv

import pytest
import torch

from qwen_audio.llm import load_checkpoint
from qwen_audio.train.batching import pack
from qwen_audio.train.data import load_data, render
from qwen_audio.train.dpo import DPOOptions, sequence_logps
from qwen_audio.train.forward import token_logprobs
from qwen_audio.train.lora import LoRAOptions
from qwen_audio.train.trainer import TrainOptions, finetune
from tests.test_train_utils import (  # noqa: F401
    ASR_PROMPT,
    TRANSCRIPTS,
    one_thread,
    speak,
    write_jsonl,
)

pytestmark = pytest.mark.usefixtures("one_thread")
WRONG = ["no idea", "bad answer", "a door opens", "something else"]  # never a chosen answer


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpo")
    clips = speak(folder)
    rows = [
        {
            "audio": clip.name,
            "prompt": ASR_PROMPT,
            "chosen": text,
            "rejected": wrong,
        }
        for clip, text, wrong in zip(clips, TRANSCRIPTS, WRONG)
    ]
    rows.append(  # a chat-format pair too
        {
            "messages": [{"role": "user", "content": [{"audio": clips[0].name}]}],
            "chosen": "hello world",
            "rejected": {"role": "assistant", "content": "a dog barks"},
        }
    )
    return write_jsonl(folder / "pairs.jsonl", rows)


def margins(base, pairs_file, adapter=None) -> torch.Tensor:
    """log p(chosen) - log p(rejected) of every pair, under the base model (+ adapter)."""
    checkpoint = load_checkpoint(base, dtype="float32", adapter=adapter)
    data = load_data(pairs_file, checkpoint.renderer, max_length=4096, dpo=True)
    out = []
    with torch.no_grad():
        for row in data.rows:
            batch = pack([render(checkpoint.renderer, s) for s in row.sequences])
            logps = sequence_logps(token_logprobs(checkpoint.model, batch), batch)
            out.append(logps[0] - logps[1])
    return torch.stack(out)


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_dpo_raises_the_chosen_over_rejected_margin(checkpoints, pairs, tmp_path, full):
    base = checkpoints("mha")
    out = tmp_path / "dpo"
    result = finetune(
        TrainOptions(
            model=base,
            data=pairs,
            output=out,
            dpo=True,
            full=full,
            dpo_options=DPOOptions(beta=0.1),
            lora=LoRAOptions(r=8, alpha=16.0, dropout=0.0),
            max_steps=12 if full else 20,
            batch_size=2,
            lr=1e-3 if full else 5e-3,
            warmup_steps=2,
            progress=False,
            tensorboard=False,
        )
    )
    with (out / "logs" / "train.csv").open() as f:
        log = list(csv.DictReader(f))
    assert float(log[0]["reward_margin"]) == pytest.approx(0.0, abs=1e-4)  # policy = reference
    assert float(log[0]["loss"]) == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)
    assert result.losses[-1] < 0.3
    assert float(log[-1]["reward_accuracy"]) == 1.0

    before = margins(base, pairs)
    after = margins(out, pairs) if full else margins(base, pairs, adapter=out)
    print(f"DPO ({'full' if full else 'LoRA'}) margins before {before.tolist()}")
    print(f"                       after  {after.tolist()}")
    # every pair moved towards its chosen answer (DPO raises the margin relative to the
    # reference; a pair may stay negative, as the random base model starts far from right)
    assert (after - before).min() > 1.0
