"""LoRA adapters in PEFT's format: read them and fold them into our model.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors`. PEFT names each
tensor after the module it belongs to in the transformers model, behind `base_model.model.`:
transformers 5 (what `peft` 0.21 writes and reads) calls the hub's `language_model.model.layers.0`
`model.language_model.layers.0`, `audio_tower` `model.audio_tower` and `language_model.lm_head`
`lm_head`, so our `language_model.model.layers.0.self_attn.q_proj` is

    base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight

Adapters made with transformers 4.x (ms-swift, LLaMA-Factory) carry the hub names instead
(`base_model.model.language_model.model.layers.0...`); `read_adapter` accepts both. Weights of
modules trained fully ("modules_to_save") are stored under their plain names.

Inference merges adapters here (next to the model, so loading needs nothing from `train/`);
`train/adapters.py` writes them from a training run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(\.[\w-]+)?\.weight$")
_UNSUPPORTED = ("lora_embedding_", "lora_magnitude_vector", "lora_E")


class AdapterError(ValueError):
    """An adapter folder that cannot be read or applied; the message names the file and key."""


# ---- names ---------------------------------------------------------------------------------


def to_hf_name(name: str) -> str:
    """Our (hub) module/parameter name -> the transformers 5 name PEFT uses."""
    if name.startswith("language_model.model."):
        return "model.language_model." + name.removeprefix("language_model.model.")
    if name == "language_model.lm_head" or name.startswith("language_model.lm_head."):
        return name.removeprefix("language_model.")
    if name.startswith(("audio_tower", "multi_modal_projector")):
        return "model." + name
    raise AdapterError(f"no transformers name for {name!r}")


def from_hf_name(name: str) -> str:
    """A transformers 5 name, or a hub / transformers 4 name, -> ours."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name.removeprefix("model.language_model.")
    if name == "lm_head" or name.startswith("lm_head."):
        return "language_model." + name
    if name.startswith(("model.audio_tower", "model.multi_modal_projector")):
        return name.removeprefix("model.")
    return name  # already a hub name (transformers 4.x adapters)


# ---- reading -------------------------------------------------------------------------------


@dataclass
class Adapter:
    """An adapter read from disk, in our names."""

    config: dict[str, Any]
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A (r, in), B (out, r))
    full: dict[str, torch.Tensor]  # parameter -> value (modules_to_save, trained biases)
    file_names: dict[str, str] = field(default_factory=dict)  # module -> its name in the file

    def scaling(self, module: str) -> float:
        """lora_alpha / r (or / sqrt(r) with rslora), with PEFT's per-module alpha_pattern."""
        r = self.lora[module][0].shape[0]
        alpha = self.config.get("lora_alpha", 8)
        name = self.file_names.get(module, module)
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({pattern})$", name):
                alpha = value
                break
        return alpha / (r**0.5 if self.config.get("use_rslora") else r)


def read_adapter(adapter_dir: Path) -> Adapter:
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / CONFIG_FILE
    if not config_path.exists():
        raise AdapterError(f"not a LoRA adapter folder: {config_path} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"cannot read {config_path}: {e}") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out")):
        if config.get(flag):
            raise AdapterError(f"{config_path}: {what} adapters are not supported")
    tensors = _read_tensors(adapter_dir)

    lora_parts: dict[str, dict[str, torch.Tensor]] = {}
    file_names: dict[str, str] = {}
    full: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        if any(u in name for u in _UNSUPPORTED):
            raise AdapterError(f"{adapter_dir / WEIGHTS_FILE}: {key}: unsupported adapter type")
        m = _LORA_KEY.match(name)
        if m:
            module = from_hf_name(m.group("module"))
            lora_parts.setdefault(module, {})[m.group("which")] = value
            file_names[module] = m.group("module")
            continue
        # modules_to_save; some tools keep PEFT's wrapper names in the file
        name = re.sub(r"\.modules_to_save\.[\w-]+\.", ".", name)
        full[from_hf_name(name)] = value
    lora = {}
    for module, pair in lora_parts.items():
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{adapter_dir}: {module} has lora_A or lora_B but not both")
        if pair["A"].shape[0] != pair["B"].shape[1]:
            raise AdapterError(
                f"{adapter_dir}: {module}: lora_A {tuple(pair['A'].shape)} and lora_B "
                f"{tuple(pair['B'].shape)} disagree on the rank"
            )
        lora[module] = (pair["A"], pair["B"])
    return Adapter(config, lora, full, file_names)


def _read_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    st = adapter_dir / WEIGHTS_FILE
    if st.exists():
        try:
            return load_file(str(st))
        except SafetensorError as e:
            raise AdapterError(f"cannot read {st}: {e}") from None
    legacy = adapter_dir / "adapter_model.bin"
    if legacy.exists():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise AdapterError(f"no adapter weights in {adapter_dir}: expected {WEIGHTS_FILE}")


# ---- applying ------------------------------------------------------------------------------


def merge_adapter(model: nn.Module, adapter_dir: Path) -> Adapter:
    """Fold a PEFT LoRA adapter into `model` in place: W += scaling * B @ A for every adapted
    linear layer (computed in float32), and copy the weights of modules trained fully."""
    adapter = read_adapter(Path(adapter_dir))
    with torch.no_grad():
        for name, value in adapter.full.items():
            param = _get(model, name, adapter_dir, "parameter")
            if param.shape != value.shape:
                raise AdapterError(
                    f"{adapter_dir}: {name} has shape {tuple(value.shape)}, "
                    f"the model's is {tuple(param.shape)}"
                )
            param.copy_(value)
        for name, (a, b) in adapter.lora.items():
            module = _get(model, name, adapter_dir, "module")
            if not isinstance(module, nn.Linear):
                raise AdapterError(f"{adapter_dir}: {name} is not a linear layer")
            if hasattr(module, "lora_A"):  # a training wrapper (train/lora.py's LoRALinear)
                raise AdapterError(f"{adapter_dir}: {name} already holds a training adapter")
            w = module.weight
            if a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0]:
                raise AdapterError(
                    f"{adapter_dir}: {name}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} "
                    f"do not fit the weight {tuple(w.shape)}"
                )
            delta = adapter.scaling(name) * (b.float().to(w.device) @ a.float().to(w.device))
            w.copy_((w.float() + delta).to(w.dtype))
    return adapter


def _get(model: nn.Module, name: str, adapter_dir: Path, kind: str):
    try:
        return model.get_parameter(name) if kind == "parameter" else model.get_submodule(name)
    except AttributeError:
        raise AdapterError(
            f"{adapter_dir}: the adapter names {kind} {name!r}, which this model does not have"
        ) from None
