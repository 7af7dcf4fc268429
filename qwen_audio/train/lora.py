"""LoRA adapters swapped in for `nn.Linear` modules, and the choice of what a run trains.

`LoRALinear` is an `nn.Linear` that keeps its `weight` and `bias` under the same names and adds
`lora_A` / `lora_B` (PEFT's names), so a wrapped model still loads, saves and merges by the hub
names, and the adapter's keys are PEFT's keys up to a prefix (see `adapters.py`). Nothing else in
the model changes: the forward pass is the inference one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Module names (ours = the hub's) that the default targets and the options select.
LM_LINEAR = (
    r"language_model\.model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
ENCODER_LINEAR = r"audio_tower\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|fc1|fc2)"
PROJECTOR = "multi_modal_projector"
ENCODER = "audio_tower"


@dataclass(frozen=True)
class LoRAOptions:
    r: int = 8  # rank of the update B @ A
    alpha: float = 32.0  # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.05  # dropout on the adapter's input only, as PEFT does
    targets: str = LM_LINEAR  # regex, full match on our module names
    encoder: bool = False  # also put adapters on the audio encoder's linear layers
    use_rslora: bool = False

    def target_pattern(self) -> re.Pattern:
        pattern = self.targets + (f"|{ENCODER_LINEAR}" if self.encoder else "")
        return re.compile(pattern)


@dataclass(frozen=True)
class TrainableParts:
    """Which weights a run updates besides the adapters (or the LM, in full finetuning)."""

    lm: bool = False  # every LM weight (full finetuning)
    projector: bool = False  # multi_modal_projector, trained fully
    encoder: bool = False  # audio_tower, trained fully
    # The top N layers of audio_tower and its final norm, trained fully; the layers below stay
    # frozen, so their output can be computed once per clip (`--cache-encoder`).
    encoder_top_layers: int = 0

    def full_modules(self, model: nn.Module) -> list[str]:
        """Modules trained fully, in our names ("modules_to_save" in PEFT's terms)."""
        names = [name for name, on in ((PROJECTOR, self.projector), (ENCODER, self.encoder)) if on]
        if self.encoder_top_layers:
            depth = len(model.audio_tower.layers)
            if not 0 < self.encoder_top_layers <= depth:
                raise ValueError(
                    f"--train-encoder-layers {self.encoder_top_layers}: the audio encoder has "
                    f"{depth} layers"
                )
            top = range(depth - self.encoder_top_layers, depth)
            names += [f"{ENCODER}.layers.{i}" for i in top] + [f"{ENCODER}.layer_norm"]
        return names


class LoRALinear(nn.Linear):
    """y = x W^T + b + scaling * B(A(dropout(x))), with W and b frozen.

    The adapter is kept in float32 (the base weights may be bf16); B starts at zero, so a fresh
    adapter leaves the model's output unchanged.
    """

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, dropout: float, use_rslora: bool = False
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        device = base.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r = r
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        self.adapter_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapter_enabled:
            return out
        h = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        return out + (self.lora_B(self.lora_A(h)) * self.scaling).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update to W in float32: scaling * B @ A, (out, in)."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, r={self.r}, scaling={self.scaling:g}"


def add_lora(model: nn.Module, options: LoRAOptions) -> list[str]:
    """Swap every targeted nn.Linear for a LoRALinear; returns the wrapped module names."""
    pattern = options.target_pattern()
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and pattern.fullmatch(name)
    ]
    if not names:
        raise ValueError(f"no linear layer matches the LoRA targets {pattern.pattern!r}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(
            parent,
            child,
            LoRALinear(base, options.r, options.alpha, options.dropout, options.use_rslora),
        )
    return names


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def has_lora(model: nn.Module) -> bool:
    return any(True for _ in lora_modules(model))


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model: every adapter off inside the block (the DPO reference for LoRA)."""
    modules = [m for _, m in lora_modules(model)]
    previous = [m.adapter_enabled for m in modules]
    for m in modules:
        m.adapter_enabled = False
    try:
        yield model
    finally:
        for m, was in zip(modules, previous):
            m.adapter_enabled = was


def set_trainable(model: nn.Module, parts: TrainableParts) -> None:
    """Freeze everything, then unfreeze the adapters and the parts trained fully."""
    for p in model.parameters():
        p.requires_grad_(False)
    if parts.lm:
        for p in model.language_model.parameters():
            p.requires_grad_(True)
    for name in parts.full_modules(model):
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    for _, module in lora_modules(model):
        module.lora_A.weight.requires_grad_(True)
        module.lora_B.weight.requires_grad_(True)
        # The base weight stays frozen even when its module is trained fully elsewhere.
        module.weight.requires_grad_(False)
        if module.bias is not None:
            module.bias.requires_grad_(False)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every trainable weight, in a fixed order (the optimizer's order)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight (W += scaling * B @ A) and swap back to nn.Linear."""
    for name, module in list(lora_modules(model)):
        with torch.no_grad():
            merged = (module.weight.float() + module.delta_weight()).to(module.weight.dtype)
        linear = nn.Linear(
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device="meta",
        )
        linear.weight = nn.Parameter(merged, requires_grad=False)
        if module.bias is not None:
            linear.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, linear)
