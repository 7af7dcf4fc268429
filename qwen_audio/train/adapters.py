"""LoRA adapters in PEFT's format: write them from a training run, merge them into our model.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors`. PEFT names each
tensor after the module it belongs to in the transformers model, behind `base_model.model.`:
transformers 5 (what `peft` 0.21 writes and reads) calls the hub's `language_model.model.layers.0`
`model.language_model.layers.0`, `audio_tower` `model.audio_tower` and `language_model.lm_head`
`lm_head`, so our `language_model.model.layers.0.self_attn.q_proj` is

    base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight

Adapters made with transformers 4.x (ms-swift, LLaMA-Factory) carry the hub names instead
(`base_model.model.language_model.model.layers.0...`); `read_adapter` accepts both. Weights of
modules trained fully ("modules_to_save") are stored under their plain names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .lora import LoRALinear, LoRAOptions, TrainableParts, lora_modules

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
            if isinstance(module, LoRALinear):
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


def _get(model: nn.Module, name: str, adapter_dir: Path, kind: str):
    try:
        return model.get_parameter(name) if kind == "parameter" else model.get_submodule(name)
    except AttributeError:
        raise AdapterError(
            f"{adapter_dir}: the adapter names {kind} {name!r}, which this model does not have"
        ) from None
