"""Quantization error as llama.cpp's `llama-perplexity --kl-divergence` measures it, on our model.

llama-perplexity's `--kl-divergence-base FILE` run writes the text's token ids (chunks of n_ctx)
before the reference logits. This reads those ids and, for each precision, runs our decoder over
each chunk teacher-forced (text only) and scores the positions llama-perplexity scores (n_ctx/2
to n_ctx-2): the mean KL divergence from float32's next-token distribution, how often the top
token is float32's, and the logits' cosine. Same weights, same tokens, same positions: the
numbers sit beside llama.cpp's Q4_0 / Q4_K_M / Q8_0 lines against its own float32 GGUF.

    llama-perplexity -m F32.gguf -f text.txt -c 256 --chunks 8 --kl-divergence-base base.kld
    python benchmarks/quant_kl.py --model DIR --kl-base base.kld [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qwen_audio.llm import LLM
from qwen_audio.model.attention import AttentionBatch


def read_tokens(path: Path) -> torch.Tensor:
    """(chunks, n_ctx) token ids of a llama-perplexity --kl-divergence-base file."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"_logits_":
            raise ValueError(f"{path}: not a llama-perplexity logits file")
        n_ctx, _n_vocab, n_chunk = (int(v) for v in np.frombuffer(fh.read(12), dtype=np.int32))
        ids = np.frombuffer(fh.read(4 * n_ctx * n_chunk), dtype=np.int32)
    return torch.from_numpy(ids.astype(np.int64)).reshape(n_chunk, n_ctx)


def scored_logits(llm: LLM, chunks: torch.Tensor) -> list[torch.Tensor]:
    """Per chunk, float32 logits (n_ctx - 1 - n_ctx/2, V) at the positions llama-perplexity scores."""
    n_ctx = chunks.shape[1]
    out = []
    with torch.inference_mode():
        for ids in chunks:
            hidden = llm.model(ids, torch.arange(n_ctx), AttentionBatch.single(n_ctx))
            out.append(llm.model.logits(hidden[n_ctx // 2 : n_ctx - 1]).float())
    return out


def compare(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    kl, same, cos = [], [], []
    for r, g in zip(ref, got):
        lr, lg = F.log_softmax(r, dim=-1), F.log_softmax(g, dim=-1)
        kl.append((lr.exp() * (lr - lg)).sum(-1))
        same.append(r.argmax(-1) == g.argmax(-1))
        cos.append(F.cosine_similarity(r, g, dim=-1))
    kl_all = torch.cat(kl)
    return {
        "positions": kl_all.numel(),
        "kl_mean": kl_all.mean().item(),
        "kl_median": kl_all.median().item(),
        "same_top": torch.cat(same).float().mean().item(),
        "logits_cosine_mean": torch.cat(cos).mean().item(),
    }


def measure(model: str, chunks: torch.Tensor, methods: list[str], dtype: str) -> dict:
    """{method: compare(...)} against float32 for each method ('none': `dtype` unquantized)."""
    ref = scored_logits(LLM(model, dtype="float32"), chunks)
    gc.collect()
    report = {}
    for method in methods:
        llm = LLM(model, dtype=dtype, quantize=None if method == "none" else method)
        report[method] = compare(ref, scored_logits(llm, chunks))
        print(method, json.dumps(report[method]), flush=True)
        del llm
        gc.collect()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--kl-base", required=True, type=Path)
    p.add_argument("--quantize", default="int8,int4", help="comma-separated; 'none' for 16-bit")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype of the compared variants")
    args = p.parse_args(argv)
    report = measure(args.model, read_tokens(args.kl_base), args.quantize.split(","), args.dtype)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
