"""Load a checkpoint folder: config, tokenizer, prompt renderer, weights, quantization, kernels.

`load_checkpoint` is what `LLM`, `AsyncLLM`, the CLI and training share. It decides the precision
(`precision.plan`: CPU features and memory, checked before any weight is read), loads the weights
memory-mapped, merges a LoRA adapter if asked, then packs the linear layers for inference: 16-bit
weights stay as stored, `quantize` turns them into int8/int4 groups one layer at a time, and the
compiled kernels are attached. `save_quantized` writes a packed checkpoint that later loads
memory-mapped, without quantizing again.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from . import precision as prec
from .config import CheckpointError, GenerationDefaults, ModelConfig, default_model
from .model.loader import FLOAT_DTYPES, load_model, resolve_model_path, weight_files
from .model.packed import PackedLinear, attach_kernels, replace_linears
from .model.qwen2_audio import Qwen2AudioForConditionalGeneration
from .prompt import PromptRenderer, load_chat_template
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

QUANT_METHOD = "qwen_audio"  # config.json quantization_config.quant_method of our packed files
DECODER_PREFIX = "language_model."


@dataclass
class Checkpoint:
    """Everything loaded from one checkpoint folder."""

    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    renderer: PromptRenderer
    generation: GenerationDefaults
    model: Qwen2AudioForConditionalGeneration
    precision: prec.Precision | None = None
    kernels: str | None = None  # the instruction set of the CPU kernels in use, if any

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.generation.eos_token_ids:
            return self.generation.eos_token_ids
        return tuple(self.tokenizer.eos_token_ids)


def default_model_path() -> Path:
    """The model used when none is given ($QWEN_AUDIO_MODEL, else the demo model), as a path."""
    return Path(default_model())


def load_checkpoint(
    model: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    device: str = "cpu",
    quantize: str | None = None,
    adapter: str | os.PathLike | None = None,
    long_audio: str = "split",
    allow_remote_audio: bool = False,
    allow_download: bool = False,
    for_training: bool = False,
) -> Checkpoint:
    """`for_training`: plain `nn.Linear` layers in `dtype` (what PEFT and autograd need)."""
    path = resolve_model_path(default_model(model), allow_download=allow_download)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    dev = torch.device(device)
    config = ModelConfig.from_dir(path)
    tokenizer = Tokenizer.from_dir(path)
    renderer = PromptRenderer(
        tokenizer,
        load_chat_template(path),
        config.audio.num_mel_bins,
        long_audio=long_audio,
        allow_remote_audio=allow_remote_audio,
    )
    generation = GenerationDefaults.from_dir(path)
    packed_layout = read_packed_layout(path)
    if for_training:
        if packed_layout:
            raise CheckpointError(f"{path} is quantized; train from the unquantized checkpoint")
        requested = prec.parse_dtype(dtype) or torch.float32
        net = load_model(path, config, dtype=requested, device=dev)
        if adapter is not None:
            _merge(net, adapter)
        return Checkpoint(path, config, tokenizer, renderer, generation, net)

    plan = prec.plan(
        dtype,
        quantize,
        dev,
        config,
        stored_dtype(path),
        prequantized=_method_of(packed_layout),
        name=path.name,
    )
    if packed_layout and adapter is not None:
        raise CheckpointError(
            f"{path} is quantized: merge the adapter into the unquantized checkpoint first "
            "(qwen-audio export --merge), then quantize"
        )
    # Quantize while reading, one weight at a time, unless an adapter must be merged first.
    quantize_now, huge_pages = {}, frozenset()
    if plan.packed and not packed_layout and adapter is None and dev.type == "cpu":
        with torch.device("meta"):
            layout = linear_formats(Qwen2AudioForConditionalGeneration(config), plan)
        if plan.quantize is not None:
            quantize_now = {n: f for n, f in layout.items() if f in prec.QUANTIZE_METHODS}
        # the decoder's 16-bit weights, which every decoded token reads: in huge pages
        huge_pages = frozenset(
            f"{n}.weight"
            for n, f in layout.items()
            if f in ("bf16", "fp16") and n.startswith(DECODER_PREFIX)
        )
    net = load_model(
        path,
        config,
        dtype=plan.weights,
        device=dev,
        compute_dtype=plan.compute,
        packed=packed_layout,
        quantize=quantize_now,
        huge_pages=huge_pages,
    )
    if adapter is not None:
        _merge(net, adapter)
    if plan.packed and not packed_layout:
        pack_model(net, plan)  # the rest: 16-bit weights wrapped as they are, no copy
    isa = attach_kernels(net) if dev.type == "cpu" else None
    if dev.type == "cpu":
        log.info("loaded %s: %s; CPU kernels: %s", path.name, plan.describe(), isa or "none")
    return Checkpoint(path, config, tokenizer, renderer, generation, net, plan, isa)


def _merge(net: nn.Module, adapter: str | os.PathLike) -> None:
    from .model.peft_adapter import merge_adapter

    merge_adapter(net, Path(adapter))


def linear_formats(model: nn.Module, plan: prec.Precision) -> dict[str, str]:
    """{linear layer name: packed format} for `plan`; empty when nothing is packed."""
    if not plan.packed:
        return {}
    sixteen = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(plan.weights)
    formats = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        method = plan.quantize if name.startswith(DECODER_PREFIX) else plan.encoder_quantize
        fmt = method or sixteen
        if fmt in ("int8", "int4") and module.in_features % 32:
            fmt = sixteen  # groups of 32 inputs: such a layer keeps its 16-bit weights
        if fmt is not None:
            formats[name] = fmt
    return formats


def pack_model(model: nn.Module, plan: prec.Precision) -> None:
    """Replace the linear layers by PackedLinear ones, one layer at a time: a quantized layer's
    wide weight is released before the next one is read."""
    formats = linear_formats(model, plan)
    replace_linears(
        model,
        lambda name, m: (
            PackedLinear.from_linear(m, formats[name], plan.compute)
            if name in formats and type(m) is nn.Linear
            else None
        ),
    )


def stored_dtype(path: Path) -> torch.dtype:
    """The floating dtype most of a checkpoint's bytes are stored in (read from a header)."""
    best: dict[torch.dtype, int] = {}
    first = weight_files(path)[0]
    try:
        with safe_open(str(first), framework="pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                dtype = FLOAT_DTYPES.get(sl.get_dtype())
                if dtype is not None:
                    best[dtype] = best.get(dtype, 0) + math.prod(sl.get_shape())
    except SafetensorError as err:
        raise CheckpointError(f"cannot read {first}: {err}") from None
    return max(best, key=best.get) if best else torch.float32


def read_packed_layout(path: Path) -> dict[str, str]:
    """{linear layer: format} of a checkpoint written by `save_quantized`, else {}."""
    config = json.loads((path / "config.json").read_text())
    q = config.get("quantization_config")
    if not isinstance(q, dict) or q.get("quant_method") != QUANT_METHOD:
        return {}
    layers = q.get("layers")
    if not isinstance(layers, dict):
        raise CheckpointError(f"{path}/config.json: quantization_config has no 'layers' table")
    return {str(k): str(v) for k, v in layers.items()}


def _method_of(layout: dict[str, str]) -> str | None:
    methods = {f for name, f in layout.items() if name.startswith(DECODER_PREFIX)}
    methods &= set(prec.QUANTIZE_METHODS)
    return next(iter(methods)) if methods else None


def save_quantized(checkpoint: Checkpoint, out_dir: Path) -> Path:
    """Write a loaded, quantized checkpoint as a folder that `load_checkpoint` maps directly:
    packed tensors as they are, other floating tensors in the weights' (stored) dtype."""
    from .train.export import save_hub_checkpoint

    plan = checkpoint.precision
    if plan is None or plan.quantize is None:
        raise ValueError("the checkpoint is not quantized")
    model = checkpoint.model
    store = plan.weights
    layers = {n: m.format for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    packed_keys = {f"{n}.{t}" for n in layers for t in ("weight", "scales")}
    state = {}
    for key, t in model.state_dict().items():
        if key not in packed_keys and t.is_floating_point():
            t = t.to(store)
        state[key] = t
    out_dir = save_hub_checkpoint(model, checkpoint.path, Path(out_dir), state=state)
    config = json.loads((out_dir / "config.json").read_text())
    config["torch_dtype"] = str(store).removeprefix("torch.")
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "method": plan.quantize,
        "group_size": 32,
        "layers": layers,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
