"""benchmarks/quant_kl.py: the token ids of a llama-perplexity --kl-divergence-base file, and the
KL / same-top / cosine scores on a small checkpoint (float32 against itself, then int8)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("quant_kl", REPO / "benchmarks" / "quant_kl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _base_file(path: Path, ids: np.ndarray, n_vocab: int) -> Path:
    """The head of llama-perplexity's file: magic, n_ctx, n_vocab, n_chunk, the ids (then the
    logits, which the benchmark never reads)."""
    n_chunk, n_ctx = ids.shape
    with open(path, "wb") as fh:
        fh.write(b"_logits_")
        fh.write(np.array([n_ctx, n_vocab, n_chunk], dtype=np.int32).tobytes())
        fh.write(ids.astype(np.int32).tobytes())
        fh.write(b"\0" * 64)
    return path


def test_reads_the_chunks_of_token_ids(bench, tmp_path):
    ids = np.arange(48).reshape(3, 16)
    chunks = bench.read_tokens(_base_file(tmp_path / "b.kld", ids, 100))
    assert chunks.dtype == torch.int64 and torch.equal(chunks, torch.from_numpy(ids))
    (tmp_path / "bad").write_bytes(b"_other__" + b"\0" * 12)
    with pytest.raises(ValueError, match="not a llama-perplexity"):
        bench.read_tokens(tmp_path / "bad")


def test_scores_float32_against_itself_as_exact_and_int8_as_close(bench, checkpoints, tmp_path):
    path = checkpoints("mha", init_std=0.02)
    rng = np.random.default_rng(0)
    chunks = bench.read_tokens(_base_file(tmp_path / "b.kld", rng.integers(0, 200, (2, 16)), 256))
    report = bench.measure(str(path), chunks, ["none", "int8"], "float32")
    same = report["none"]
    assert same["positions"] == 2 * (16 - 1 - 8)
    assert abs(same["kl_mean"]) < 1e-6 and same["same_top"] == 1.0
    assert same["logits_cosine_mean"] > 0.99999
    q = report["int8"]
    assert 0 < q["kl_mean"] < 0.01 and q["logits_cosine_mean"] > 0.99
