"""LoRA adapters in PEFT's format, written from a training run (and read back to resume).

Reading and merging an adapter, and PEFT's names for our modules, live beside the model in
`model/peft_adapter.py` (loading a checkpoint with an adapter needs nothing from `train/`); they
are re-exported here for the training code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..model.peft_adapter import (  # noqa: F401  (reading and merging live beside the model)
    CONFIG_FILE,
    PEFT_PREFIX,
    WEIGHTS_FILE,
    Adapter,
    AdapterError,
    from_hf_name,
    merge_adapter,
    read_adapter,
    to_hf_name,
)
from .lora import LoRAOptions, TrainableParts, lora_modules


def _modules_regex(hf_names: list[str], layer_counts: dict[str, int]) -> str:
    """A regex that full-matches exactly these module names (PEFT full-matches a string
    `target_modules`); a layer index becomes `\\d+` when every layer of its stack is listed."""
    groups: dict[tuple[str, str], set[int]] = {}
    for name in hf_names:
        m = re.fullmatch(r"(.*\.layers)\.(\d+)\.(.*)", name)
        key = (m.group(1), m.group(3)) if m else (name, "")
        groups.setdefault(key, set()).add(int(m.group(2)) if m else -1)
    parts = []
    for (stack, rest), indices in groups.items():
        if indices == {-1}:
            parts.append(re.escape(stack))
            continue
        every = indices == set(range(layer_counts.get(stack, -1)))
        index = r"\d+" if every else "(" + "|".join(map(str, sorted(indices))) + ")"
        parts.append(f"{re.escape(stack)}\\.{index}\\.{re.escape(rest)}")
    return "|".join(parts)


def _layer_counts(model: nn.Module) -> dict[str, int]:
    """Layers per stack, under transformers names: {"model.language_model.layers": 32, ...}."""
    counts: dict[str, int] = {}
    for name, _ in model.named_modules():
        m = re.fullmatch(r"(.*\.layers)\.(\d+)", name)
        if m:
            stack = to_hf_name(m.group(1))
            counts[stack] = max(counts.get(stack, 0), int(m.group(2)) + 1)
    return counts


# ---- writing -------------------------------------------------------------------------------


def adapter_state(model: nn.Module, parts: TrainableParts) -> dict[str, torch.Tensor]:
    """The adapter's tensors under our names: lora_A/lora_B of every LoRALinear, plus every
    weight of the modules trained fully."""
    state = {}
    for name, module in lora_modules(model):
        state[f"{name}.lora_A.weight"] = module.lora_A.weight
        state[f"{name}.lora_B.weight"] = module.lora_B.weight
    for top in parts.full_modules(model):
        for pname, p in model.get_submodule(top).named_parameters():
            state[f"{top}.{pname}"] = p
    return state


def adapter_config(
    model: nn.Module, options: LoRAOptions, parts: TrainableParts, base_model: str | None
) -> dict[str, Any]:
    """PEFT's LoraConfig fields for this run (the ones PEFT reads; the rest keep defaults)."""
    targets = [to_hf_name(name) for name, _ in lora_modules(model)]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": options.r,
        "lora_alpha": options.alpha,
        "lora_dropout": options.dropout,
        "use_rslora": options.use_rslora,
        "target_modules": _modules_regex(targets, _layer_counts(model)),
        "modules_to_save": [to_hf_name(m).removeprefix("model.") for m in parts.full_modules(model)]
        or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def write_adapter(out_dir: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Write `state` (our names) as a PEFT adapter folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        PEFT_PREFIX + to_hf_name(k): v.detach().to("cpu").contiguous() for k, v in state.items()
    }
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_adapter_into(model: nn.Module, adapter: Adapter) -> None:
    """Put an adapter's tensors into a model that already holds LoRALinear modules (resume)."""
    wrapped = dict(lora_modules(model))
    if set(wrapped) != set(adapter.lora):
        missing = sorted(set(wrapped) ^ set(adapter.lora))[:3]
        raise AdapterError(f"the adapter and the model's LoRA layers differ, e.g. {missing}")
    with torch.no_grad():
        for name, (a, b) in adapter.lora.items():
            wrapped[name].lora_A.weight.copy_(a)
            wrapped[name].lora_B.weight.copy_(b)
        for name, value in adapter.full.items():
            model.get_parameter(name).copy_(value)
