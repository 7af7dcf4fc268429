"""Model and generation settings read from a checkpoint folder.

`config.json` comes in two styles: transformers 4.x writes `text_config.rope_theta`, 5.x writes
`text_config.rope_parameters.rope_theta`. The real Qwen2-Audio files leave most sizes out, so every
missing field takes the Qwen2 / Qwen2-Audio-encoder default that transformers would use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_ENV = "QWEN_AUDIO_MODEL"
DEMO_MODEL = Path(__file__).resolve().parent / "assets" / "demo-model"  # ships in the package
MODEL_HELP = (
    f"checkpoint folder or cached hub id (default: ${MODEL_ENV}, else the demo model in "
    f"{DEMO_MODEL})"
)


class CheckpointError(ValueError):
    """A checkpoint folder or one of its files is missing or malformed (the message names it)."""


def default_model(model: str | os.PathLike | None = None) -> str | os.PathLike:
    """The model to load: `model` when given, else $QWEN_AUDIO_MODEL, else the bundled demo model.

    The one place that decides the default: `LLM()`, every command without `--model`, the server,
    eval, finetuning and the benchmarks all go through it. A hub id is returned as is (the
    loader resolves it); the demo model is returned as its folder.
    """
    if model is not None and str(model):
        return model
    env = os.environ.get(MODEL_ENV)
    if env:
        return env
    if (DEMO_MODEL / "config.json").exists():
        return DEMO_MODEL
    raise CheckpointError(
        f"no model given and the demo model is missing from {DEMO_MODEL}: pass a checkpoint "
        f"folder (--model DIR, LLM(path)) or set {MODEL_ENV}"
    )


def read_json(path: Path, *, required: bool = True) -> dict[str, Any] | None:
    """Read a JSON object from `path`, with errors that name the file."""
    if not path.exists():
        if required:
            raise CheckpointError(f"missing file: {path}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"malformed JSON in {path}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"malformed {path}: expected a JSON object, got {type(data).__name__}"
        )
    return data


def _get(d: dict[str, Any], key: str, default: Any, kind: type | tuple[type, ...], where: str):
    value = d.get(key, default)
    if value is None:
        value = default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(f"{where}: field {key!r} should be {kind}, got {value!r}")
    return value


@dataclass(frozen=True)
class AudioEncoderConfig:
    """The Whisper-style encoder (`audio_config`); defaults are the 7B values."""

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    max_source_positions: int = 1500  # conv2 frames: 3000 mel frames / stride 2
    activation_function: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> AudioEncoderConfig:
        kw = {}
        for name, default in cls.__dataclass_fields__.items():
            kind = str if name == "activation_function" else int
            kw[name] = _get(d, name, default.default, kind, where)
        if kw["activation_function"] != "gelu":
            raise CheckpointError(f"{where}: only gelu is supported in the audio encoder")
        if kw["d_model"] % kw["encoder_attention_heads"]:
            raise CheckpointError(f"{where}: d_model is not a multiple of encoder_attention_heads")
        return cls(**kw)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.encoder_attention_heads


@dataclass(frozen=True)
class TextConfig:
    """The Qwen2 decoder (`text_config`); defaults are transformers' Qwen2Config defaults."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> TextConfig:
        kinds = {"rms_norm_eps": float, "rope_theta": float, "tie_word_embeddings": bool}
        kinds["hidden_act"] = str
        kw = {}
        for name, f in cls.__dataclass_fields__.items():
            if name in ("rope_theta", "head_dim"):
                continue
            kw[name] = _get(d, name, f.default, kinds.get(name, int), where)
        if d.get("num_key_value_heads") is None:
            kw["num_key_value_heads"] = kw["num_attention_heads"]
        kw["head_dim"] = _get(d, "head_dim", 0, int, where) or (
            kw["hidden_size"] // kw["num_attention_heads"]
        )
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise CheckpointError(f"{where}: rope_parameters should be an object")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise CheckpointError(f"{where}: rope type {rope_type!r} is not supported")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        kw["rope_theta"] = _get({"rope_theta": theta}, "rope_theta", 10000.0, float, where)
        if kw["hidden_act"] != "silu":
            raise CheckpointError(f"{where}: only silu is supported in the decoder MLP")
        if kw["num_attention_heads"] % kw["num_key_value_heads"]:
            raise CheckpointError(
                f"{where}: num_attention_heads ({kw['num_attention_heads']}) is not a multiple "
                f"of num_key_value_heads ({kw['num_key_value_heads']})"
            )
        if d.get("use_sliding_window"):
            raise CheckpointError(f"{where}: sliding-window attention is not supported")
        return cls(**kw)


@dataclass(frozen=True)
class ModelConfig:
    audio: AudioEncoderConfig
    text: TextConfig
    audio_token_index: int = 151646
    torch_dtype: str | None = None  # the dtype the weights were saved in, if the file says

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> ModelConfig:
        audio = d.get("audio_config") or {}
        text = d.get("text_config") or {}
        if not isinstance(audio, dict) or not isinstance(text, dict):
            raise CheckpointError(f"{where}: audio_config and text_config must be objects")
        # The top-level tie flag wins when the text config does not set it (v4 configs).
        if "tie_word_embeddings" not in text and "tie_word_embeddings" in d:
            text = {**text, "tie_word_embeddings": d["tie_word_embeddings"]}
        dtype = d.get("torch_dtype") or d.get("dtype") or text.get("torch_dtype")
        return cls(
            audio=AudioEncoderConfig.from_dict(audio, f"{where} audio_config"),
            text=TextConfig.from_dict(text, f"{where} text_config"),
            audio_token_index=_get(d, "audio_token_index", 151646, int, where),
            torch_dtype=dtype if isinstance(dtype, str) else None,
        )

    @classmethod
    def from_dir(cls, path: Path) -> ModelConfig:
        return cls.from_dict(read_json(path / "config.json"), str(path / "config.json"))


@dataclass(frozen=True)
class GenerationDefaults:
    """Defaults from `generation_config.json`; fields a request leaves unset fall back to these."""

    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    do_sample: bool | None = None
    max_new_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, path: Path) -> GenerationDefaults:
        where = path / "generation_config.json"
        d = read_json(where, required=False) or {}
        eos = d.get("eos_token_id")
        if isinstance(eos, int):
            eos = [eos]
        if eos is not None and not (isinstance(eos, list) and all(isinstance(e, int) for e in eos)):
            raise CheckpointError(f"{where}: eos_token_id should be an int or a list of ints")

        def num(key: str, kind: type):
            v = d.get(key)
            if v is None:
                return None
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, kind):
                raise CheckpointError(f"{where}: field {key!r} should be {kind.__name__}")
            return v

        return cls(
            eos_token_ids=tuple(eos or ()),
            pad_token_id=num("pad_token_id", int),
            temperature=num("temperature", float),
            top_k=num("top_k", int),
            top_p=num("top_p", float),
            repetition_penalty=num("repetition_penalty", float),
            do_sample=num("do_sample", bool),
            max_new_tokens=num("max_new_tokens", int),
            extra=d,
        )
