"""Write models in the hub layout: merged LoRA exports and fully finetuned weights.

The output folder is what users download from the hub: `config.json`, the weights under the hub's
key names (`model.safetensors`, or shards plus `model.safetensors.index.json` over the shard
size), and the tokenizer, chat template, preprocessor and generation files copied from the base
checkpoint. Both transformers and our `LLM` load it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import ModelConfig
from ..model.loader import load_model
from ..precision import DTYPES
from .adapters import merge_adapter, read_adapter, to_hf_name, write_adapter
from .lora import has_lora

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 5 * 1024**3  # the hub's usual shard size
# Files of a checkpoint folder that are weights (never copied from the base checkpoint).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_SKIPPED = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "adapter_config.json"}


def copy_side_files(base_dir: Path, out_dir: Path) -> None:
    """Copy every top-level file of the base checkpoint that is not a weight file: config,
    tokenizer files, chat template, preprocessor and generation config, README, license."""
    for path in sorted(Path(base_dir).iterdir()):
        if not path.is_file() or path.suffix in _WEIGHT_SUFFIXES or path.name in _SKIPPED:
            continue
        shutil.copy2(path, out_dir / path.name)


def save_hub_checkpoint(
    model: nn.Module,
    base_dir: Path,
    out_dir: Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model` (module names = hub key names) as a hub-layout checkpoint folder; `state`
    replaces its state dict (weights gathered from FSDP / DeepSpeed shards)."""
    if has_lora(model):
        raise ValueError("the model still holds LoRA layers: merge them first")
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.resolve() == base_dir.resolve():
        raise ValueError(f"refusing to overwrite the base checkpoint {base_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_side_files(base_dir, out_dir)

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in (model.state_dict() if state is None else state).items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if t.data_ptr() in seen:  # tied weights: safetensors stores each tensor once
            t = t.clone()
        seen.add(t.data_ptr())
        tensors[name] = t.contiguous()
    _write_weights(out_dir, tensors, max_shard_bytes)

    config = json.loads((base_dir / "config.json").read_text())
    saved_dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    config["torch_dtype"] = str(saved_dtype).removeprefix("torch.")
    _atomic_write(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    return out_dir


def _write_weights(out_dir: Path, state: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    for stale in list(out_dir.glob("model*.safetensors")) + [
        out_dir / "model.safetensors.index.json"
    ]:
        stale.unlink(missing_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _atomic_save(out_dir / "model.safetensors", shards[0], metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _atomic_save(out_dir / name, shard, metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    _atomic_write(out_dir / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")


def _atomic_save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_merged(base_dir: Path, adapter_dir: Path, out_dir: Path, *, dtype: str = "auto") -> Path:
    """Base checkpoint + LoRA adapter -> one merged hub-layout checkpoint.

    The merge is done in float32; the output dtype is `dtype`, or with "auto" the dtype the
    base checkpoint declares (float32 when it declares none).
    """
    base_dir = Path(base_dir)
    config = ModelConfig.from_dir(base_dir)
    model = load_model(base_dir, config, dtype=torch.float32, device=torch.device("cpu"))
    merge_adapter(model, Path(adapter_dir))
    if dtype == "auto":
        target = DTYPES.get(config.torch_dtype or "float32", torch.float32)
    elif dtype in DTYPES:
        target = DTYPES[dtype]
    else:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16; got {dtype!r}")
    return save_hub_checkpoint(model, base_dir, Path(out_dir), dtype=target)


def convert_adapter(adapter_dir: Path, out_dir: Path, base_model: str | None = None) -> Path:
    """Rewrite an adapter (e.g. one saved with transformers 4.x names by ms-swift or
    LLaMA-Factory) with the names `peft` uses on the transformers 5 model."""
    adapter = read_adapter(Path(adapter_dir))
    state = {}
    for module, (a, b) in adapter.lora.items():
        to_hf_name(module)  # fails early on a name transformers does not have
        state[f"{module}.lora_A.weight"] = a
        state[f"{module}.lora_B.weight"] = b
    state.update(adapter.full)
    config = dict(adapter.config)
    hf_modules = sorted({to_hf_name(m) for m in adapter.lora})
    config["target_modules"] = hf_modules  # exact names: PEFT matches a list by suffix
    if base_model is not None:
        config["base_model_name_or_path"] = base_model
    write_adapter(Path(out_dir), state, config)
    return Path(out_dir)
