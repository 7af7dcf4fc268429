"""How much bf16 and int8 change the answers, measured against float32 on the same checkpoint.

For a few prompts (different clips and questions): the cosine similarity of the next-token logits
to float32's, and how many greedy tokens stay identical to float32's (the share of the first
`tokens` positions before the first difference), averaged over the prompts.
"""

from __future__ import annotations

import gc

import torch

from ..llm import LLM
from ..model.attention import AttentionBatch
from ..sampling import SamplingParams
from . import workloads as W

PROMPTS = 6
TOKENS = 32


def _conversations(prompts: int = PROMPTS) -> list[list[dict]]:
    lengths = [2.0, 4.0, 7.0, 11.0, 17.0, 29.0][:prompts]
    return [[W.question_turn(W.clip(s, 700 + i))] for i, s in enumerate(lengths)]


def _run(llm: LLM, convs, tokens_wanted: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    logits = []
    with torch.inference_mode():
        for conv in convs:
            p = llm.renderer.render_chat(conv)
            ids = torch.tensor(p.token_ids)
            clips = p.audio_clips
            emb = torch.cat(
                llm.model.encode_audio([c.features for c in clips], [c.num_frames for c in clips])
            )
            hidden = llm.model(ids, torch.arange(len(ids)), AttentionBatch.single(len(ids)), emb)
            logits.append(llm.model.logits(hidden[-1:])[0].float())
    params = SamplingParams(temperature=0.0, max_tokens=tokens_wanted, ignore_eos=True)
    tokens = [o.token_ids for o in llm.chat(convs, params)]
    return logits, tokens


def _leading_agreement(a: list[int], b: list[int]) -> float:
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / max(len(a), 1)


def measure_quality(
    model: str,
    variants: list[tuple[str, str, str | None]],
    *,
    prompts: int = PROMPTS,
    tokens: int = TOKENS,
) -> dict:
    """variants: (label, dtype, quantize); float32 math is the reference (on a 16-bit checkpoint
    its weights stay 16-bit: widening them is exact)."""
    convs = _conversations(prompts)
    ref = LLM(model, dtype="float32")
    ref_logits, ref_tokens = _run(ref, convs, tokens)
    del ref
    gc.collect()
    report = {}
    for label, dtype, quantize in variants:
        llm = LLM(model, dtype=dtype, quantize=quantize)
        logits, got = _run(llm, convs, tokens)
        cos = [
            torch.nn.functional.cosine_similarity(a, b, dim=0).item()
            for a, b in zip(logits, ref_logits)
        ]
        agree = [_leading_agreement(t, r) for t, r in zip(got, ref_tokens)]
        top1 = [int(a.argmax() == b.argmax()) for a, b in zip(logits, ref_logits)]
        report[label] = {
            "logits_cosine_mean": sum(cos) / len(cos),
            "logits_cosine_min": min(cos),
            "first_token_agreement": sum(top1) / len(top1),
            "greedy_leading_agreement": sum(agree) / len(agree),
        }
        del llm
        gc.collect()
    return report
