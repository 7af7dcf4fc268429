"""llama.cpp as the CPU peer: the same decoder written as GGUF, quantized, timed by llama-bench.

llama.cpp runs only the decoder (it has no Qwen2-Audio encoder), so the comparison is of what
dominates on a CPU: decoding (bytes per token) and prompt processing (GEMM). `write_gguf` writes
the checkpoint's `language_model.*` as a Qwen2 GGUF in bf16 with the `gguf` package (the
tokenizer's tokens and merges, padded to the embedding's rows as llama.cpp's converter does);
`llama-quantize` makes Q8_0 / Q4_0 from it, and `llama-bench` measures.

The tools: `--llama-cpp DIR` (a build folder holding bin/llama-bench and bin/llama-quantize, or
the binaries themselves), else $LLAMA_CPP_BIN, else the PATH. To build them from PyPI's source:
`pip download --no-binary :all: --no-deps llama-cpp-python`, unpack, then in vendor/llama.cpp
`cmake -B build && cmake --build build -j --target llama-bench llama-quantize`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors import safe_open

from ..config import ModelConfig
from ..model.loader import weight_files

QUANT_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0"}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def find_tool(name: str, hint: str | None) -> str | None:
    for root in filter(None, [hint, os.environ.get("LLAMA_CPP_BIN")]):
        for candidate in (Path(root), Path(root) / name, Path(root) / "bin" / name):
            if candidate.is_file() and candidate.name == name and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which(name)


def gguf_name(key: str) -> str | None:
    """Hub key -> llama.cpp tensor name; None for keys outside the decoder."""
    if key == "language_model.model.embed_tokens.weight":
        return "token_embd.weight"
    if key == "language_model.model.norm.weight":
        return "output_norm.weight"
    if key == "language_model.lm_head.weight":
        return "output.weight"
    prefix = "language_model.model.layers."
    if not key.startswith(prefix):
        return None
    index, rest = key[len(prefix) :].split(".", 1)
    return f"blk.{index}.{_LAYER_NAMES[rest]}"


def write_gguf(checkpoint: Path, out: Path) -> Path:
    """The checkpoint's decoder as a bf16 Qwen2 GGUF file (tensors streamed from the mmap)."""
    import gguf

    config = ModelConfig.from_dir(checkpoint)
    t = config.text
    writer = gguf.GGUFWriter(str(out), "qwen2")
    writer.add_name(checkpoint.name)
    writer.add_context_length(t.max_position_embeddings)
    writer.add_embedding_length(t.hidden_size)
    writer.add_block_count(t.num_hidden_layers)
    writer.add_feed_forward_length(t.intermediate_size)
    writer.add_head_count(t.num_attention_heads)
    writer.add_head_count_kv(t.num_key_value_heads)
    writer.add_rope_freq_base(t.rope_theta)
    writer.add_layer_norm_rms_eps(t.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    _add_tokenizer(writer, checkpoint, t.vocab_size)

    for f in weight_files(checkpoint):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                name = gguf_name(key)
                if name is None:
                    continue
                tensor = st.get_tensor(key)
                if tensor.dim() == 1:  # norms and biases: float32, as llama.cpp keeps them
                    writer.add_tensor(name, tensor.float().numpy())
                else:
                    raw = tensor.to(torch.bfloat16).contiguous().view(torch.uint8).numpy()
                    writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer, checkpoint: Path, vocab_size: int) -> None:
    import gguf

    tok = json.loads((checkpoint / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    by_id = {i: s for s, i in vocab.items()}
    special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
    tokens, types = [], []
    for i in range(vocab_size):  # the LM's rows outnumber the tokenizer's: pad as llama.cpp does
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = tok["model"].get("merges", [])
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
    writer.add_eos_token_id(ids.get("<|im_end|>", 0))
    writer.add_bos_token_id(ids.get("<|endoftext|>", 0))


def quantize(llama_quantize: str, src: Path, dst: Path, qtype: str, threads: int) -> Path:
    subprocess.run(
        [llama_quantize, str(src), str(dst), QUANT_TYPES[qtype], str(threads)],
        check=True,
        capture_output=True,
    )
    return dst


def decode_bytes(model: Path) -> int:
    """Bytes of weights one decoded token reads from a GGUF file: every tensor but the
    embedding table, of which a lookup reads one row. (llama.cpp keeps the output head of a
    Q4_0 file in Q6_K, so this is not what our int4 reads.)"""
    import gguf

    reader = gguf.GGUFReader(str(model))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


def bench(
    llama_bench: str, model: Path, *, threads: int, prompt: int, gen: int, reps: int, depth: int = 0
) -> dict:
    """llama-bench's prompt processing and generation rates (tokens/s) for one file; `depth`:
    tokens already in the context when they start."""
    cmd = [llama_bench, "-m", str(model), "-t", str(threads), "-p", str(prompt), "-n", str(gen)]
    cmd += ["-r", str(reps), "-o", "json"] + (["-d", str(depth)] if depth else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    result = {"file_bytes": model.stat().st_size, "weight_bytes_per_token": decode_bytes(model)}
    for row in rows:
        key = "prefill_tok_s" if row.get("n_prompt", 0) > 0 else "decode_tok_s"
        result[key] = float(row["avg_ts"])
    return result
