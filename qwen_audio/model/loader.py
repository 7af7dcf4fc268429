"""Find a checkpoint folder and load its weights without holding them twice.

The model is built on the `meta` device and the tensors come straight from memory-mapped
safetensors files (`assign=True`), so a checkpoint already in the target dtype costs no copy; a
dtype conversion holds one tensor at a time twice, never the whole model. The weights a decoded
token streams (the decoder's 16-bit linear layers on a CPU) are read into huge pages instead
(`huge_pages`), one at a time, and int8/int4 ones into ordinary memory: their file pages never
count in the process beside the copy.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..config import CheckpointError, ModelConfig, read_json
from .heap import HugePageArena, return_freed_memory
from .packed import empty_packed, quantize_in_chunks, replace_linears
from .qwen2 import RotaryEmbedding
from .qwen2_audio import Qwen2AudioForConditionalGeneration

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SHOW_PROGRESS_BYTES = 1 << 30  # a progress bar for checkpoints over 1 GiB
QUANTIZE_READ_BYTES = 64 << 20  # a weight quantized while reading is read 64 MiB at a time


def resolve_model_path(model: str | os.PathLike, *, allow_download: bool = False) -> Path:
    """A local folder, or a hub id (`Qwen/Qwen2-Audio-7B-Instruct`) found in a local cache.

    Hub ids resolve through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE), then ModelScope's
    (MODELSCOPE_CACHE, ~/.cache/modelscope/hub). Downloading happens only with `allow_download`
    and a reachable hub (and never when HF_HUB_OFFLINE=1).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(
                f"{path} is not a model folder: it has no config.json (a checkpoint folder holds "
                "config.json, the tokenizer files and the weights)"
            )
        return path
    if path.exists():
        raise CheckpointError(
            f"{path} is a file, not a model folder: pass the folder that holds config.json "
            "and the weights"
        )
    name = str(model)
    if not HUB_ID.match(name):
        raise CheckpointError(f"model folder not found: {path}")
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        from huggingface_hub import snapshot_download

        # Read the cache location now (huggingface_hub reads it once, at import).
        cache_dir = os.environ.get("HF_HUB_CACHE")
        if cache_dir is None and os.environ.get("HF_HOME"):
            cache_dir = os.path.join(os.environ["HF_HOME"], "hub")
        return Path(snapshot_download(name, cache_dir=cache_dir, local_files_only=offline))
    except Exception as err:  # huggingface_hub raises several types for "not cached"
        hf_error = err
    for cached in _modelscope_candidates(name):
        if (cached / "config.json").exists():
            return cached
    if not offline:
        raise CheckpointError(
            f"downloading {name!r} from the Hugging Face hub failed "
            f"({type(hf_error).__name__}: {_first_line(hf_error)}); check the network and the "
            "name, or pass a local checkpoint folder"
        )
    if allow_download:  # HF_HUB_OFFLINE=1 forbade the download
        raise CheckpointError(
            f"{name!r} is not in the Hugging Face / ModelScope cache and HF_HUB_OFFLINE=1 "
            "forbids downloading it; unset HF_HUB_OFFLINE or pass a local checkpoint folder"
        )
    raise CheckpointError(
        f"{name!r} is neither a local folder nor in the Hugging Face / ModelScope cache; "
        "pass --allow-download to download it (allow_download=True in Python), or pass a "
        "local checkpoint folder"
    )


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _modelscope_candidates(name: str) -> list[Path]:
    root = Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub"))
    org, repo = name.split("/", 1)
    return [
        root / "models" / org / repo,
        root / org / repo,
        root / "models" / org / repo.replace(".", "___"),
    ]


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, or the shards named by the index."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = read_json(index)
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"malformed {index}: no weight_map")
        files = sorted({path / f for f in weight_map.values()})
        for f in files:
            if not f.exists():
                raise CheckpointError(f"missing shard {f} (listed in {index})")
        return files
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    shards = sorted(path.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    raise CheckpointError(f"no weights in {path}: expected model.safetensors or an index + shards")


def load_model(
    path: Path,
    config: ModelConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    compute_dtype: torch.dtype | None = None,
    packed: dict[str, str] | None = None,
    quantize: dict[str, str] | None = None,
    huge_pages: frozenset[str] = frozenset(),
    show_progress: bool | None = None,
) -> Qwen2AudioForConditionalGeneration:
    """The model with its weights from `path`.

    `dtype`: the linear layers' weights and the embedding table; `compute_dtype` (default: the
    same): everything else (norms, biases, convolutions, positions), which sets the activations'
    dtype. `packed`: {linear layer: format} of a checkpoint written by `qwen-audio quantize`,
    whose packed tensors load as stored (memory-mapped). `quantize`: {linear layer: int8|int4}
    to quantize while reading: those weights are read into memory one at a time (not mapped, so
    their file pages never count in the process's memory) and only the packed copy is kept.
    `huge_pages`: weights (the decoder's 16-bit linear layers, which decoding streams once per
    token) read into a `HugePageArena` instead of mapped: the mapped file's 4 KiB pages cost a
    TLB miss every 4 KiB (bf16, 7B shapes, one row on a Sapphire Rapids VM: 18 GB/s mapped, 30
    in huge pages). Their RSS is the same either way.
    """
    compute = compute_dtype or dtype
    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    packed = packed or {}
    quantize = quantize or {}
    layouts = {**packed, **quantize}
    if layouts:
        replace_linears(
            model,
            lambda name, m: empty_packed(m, layouts[name], compute) if name in layouts else None,
        )
    as_stored = {f"{n}.{t}" for n in packed for t in ("weight", "scales")}
    # int8/int4 weights may be repacked for the kernels (PackedLinear.use_kernels): read them
    # into memory, so the file pages of the stored layout never count beside the repacked copy
    # (mapped, the 7B int4 peaked at 10.1 GiB instead of ~5.5)
    read_in = {
        f"{n}.{t}"
        for n, fmt in packed.items()
        if fmt in ("int8", "int4")
        for t in ("weight", "scales")
    }
    to_quantize = {f"{n}.weight": fmt for n, fmt in quantize.items()}
    wide = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wide.add(EMBEDDING)
    expected = model.state_dict()
    files = weight_files(path)
    total = sum(f.stat().st_size for f in files)
    if show_progress is None:
        show_progress = total >= SHOW_PROGRESS_BYTES
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights")

    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    arena = HugePageArena()
    for f in files:
        try:
            with safe_open(str(f), framework="pt", device="cpu") as st:
                for key in st.keys():
                    if key in to_quantize:
                        name = key.removesuffix(".weight")
                        q, scales, shape, nbytes = quantize_unmapped(f, key, to_quantize[key])
                        want = expected[key].shape
                        if q.shape != want:
                            raise CheckpointError(
                                f"{f.name}: {key} has shape {shape}, which does not "
                                f"fit config.json's {tuple(want)} once packed"
                            )
                        state[key], state[f"{name}.scales"] = q, scales
                        return_freed_memory()
                        if bar is not None:
                            bar.update(nbytes)
                        continue
                    if key not in expected:
                        unexpected.append(key)
                        continue
                    if key in read_in:
                        entry, data_start = _entry(f, key)
                        tensor = _read_rows(f, entry, data_start, (0, entry["shape"][0]))
                    elif key in huge_pages and device.type == "cpu":
                        tensor = _read_into(f, key, dtype, arena)
                    else:
                        tensor = st.get_tensor(key)  # memory-mapped, not read yet
                    want = expected[key].shape
                    if tensor.shape != want:
                        raise CheckpointError(
                            f"{f.name}: {key} has shape {tuple(tensor.shape)}, "
                            f"config.json implies {tuple(want)}"
                        )
                    file_bytes = tensor.numel() * tensor.element_size()
                    if key in as_stored:
                        target = expected[key].dtype
                    else:
                        target = dtype if key in wide else compute
                    if key == EMBEDDING and tensor.dtype == target and device.type == "cpu":
                        _read_ahead(f, key)
                    if tensor.dtype != target:
                        tensor = tensor.to(target)
                    if device.type != "cpu":
                        tensor = tensor.to(device)
                    state[key] = tensor
                    if bar is not None:
                        bar.update(file_bytes)
        except SafetensorError as err:
            raise CheckpointError(f"cannot read {f}: {err}") from None
    if bar is not None:
        bar.close()

    _fill_optional_weights(state, expected, config, compute)
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{len(missing)} weight(s) missing from {path}: {shown}")
    if unexpected:
        log.warning("ignoring %d unknown weight(s), e.g. %s", len(unexpected), unexpected[0])

    model.load_state_dict(state, assign=True, strict=True)
    # Non-persistent buffers are not in the file: rebuild them on the real device.
    text = config.text
    model.language_model.model.rotary_emb = RotaryEmbedding(text.head_dim, text.rope_theta).to(
        device
    )
    return model.eval()


_NUMPY_DTYPES = {
    "F32": (np.float32, None),
    "F16": (np.float16, None),
    "BF16": (np.uint16, "bf16"),
    "U8": (np.uint8, None),
    "I8": (np.int8, None),
}


EMBEDDING = "language_model.model.embed_tokens.weight"
# safetensors' names of the floating dtypes
FLOAT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _read_ahead(path: Path, key: str) -> None:
    """Read a mapped tensor's file bytes once, so that its pages are in the OS's cache.

    Decoding reads one embedding row per token, a different one each time: a row that is not in
    the page cache is a disk read on that token's path (7 ms a token on the test VM once other
    files had pushed the table out). Plain reads (not through the mapping) leave the pages to
    the OS: they count in the process only once a token touches them. `posix_fadvise` was
    tried first; Linux reads only a few MB ahead for it.
    """
    chunk = bytearray(16 << 20)
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        begin, end = json.loads(fh.read(header_len))[key]["data_offsets"]
        fh.seek(8 + header_len + begin)
        left = end - begin
        while left > 0:
            got = fh.readinto(memoryview(chunk)[: min(left, len(chunk))])
            if not got:
                break
            left -= got


def _entry(path: Path, key: str) -> tuple[dict, int]:
    """A tensor's safetensors header entry and where the file's data starts."""
    stat = path.stat()
    header, data_start = _header(str(path), stat.st_mtime_ns, stat.st_size)
    entry = header[key]
    if entry["dtype"] not in _NUMPY_DTYPES:
        raise CheckpointError(f"{path.name}: {key} is {entry['dtype']}, not a weight we read")
    return entry, data_start


@functools.lru_cache(maxsize=4)
def _header(path: str, mtime_ns: int, size: int) -> tuple[dict, int]:
    """A safetensors file's parsed header (read once per file version, not once per tensor:
    a 7B int4 file's 450 packed tensors parsed it for 1.2 s) and where its data starts."""
    with open(path, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(header_len)), 8 + header_len


def _read_rows(path: Path, entry: dict, data_start: int, rows: tuple[int, int]) -> torch.Tensor:
    """Rows [r0, r1) of a tensor of a safetensors file, read into ordinary memory instead of
    mapped (their file pages never count in the process's memory)."""
    np_dtype, kind = _NUMPY_DTYPES[entry["dtype"]]
    shape = list(entry["shape"])
    row_items = math.prod(shape[1:])
    r0, r1 = rows
    itemsize = np.dtype(np_dtype).itemsize
    with open(path, "rb") as fh:
        fh.seek(data_start + entry["data_offsets"][0] + r0 * row_items * itemsize)
        data = np.fromfile(fh, dtype=np_dtype, count=(r1 - r0) * row_items)
    tensor = torch.from_numpy(data)
    if kind == "bf16":
        tensor = tensor.view(torch.bfloat16)
    return tensor.reshape([r1 - r0, *shape[1:]])


def _read_into(path: Path, key: str, dtype: torch.dtype, arena: HugePageArena) -> torch.Tensor:
    """A tensor of a safetensors file read into `arena` (in `dtype`), never mapped. A tensor
    stored in another dtype is read, then converted into the arena."""
    entry, data_start = _entry(path, key)
    shape = tuple(entry["shape"])
    out = arena.empty(shape, dtype=dtype)
    if FLOAT_DTYPES.get(entry["dtype"]) != dtype:
        out.copy_(_read_rows(path, entry, data_start, (0, shape[0])))
        return out
    view = memoryview(out.view(-1).view(torch.uint8).numpy())
    with open(path, "rb", buffering=0) as fh:
        fh.seek(data_start + entry["data_offsets"][0])
        done = 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise CheckpointError(f"{path.name}: {key} is cut short (the file ends early)")
            done += got
    return out


def quantize_unmapped(
    path: Path, key: str, method: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], int]:
    """A 2-D weight quantized while it is read, `QUANTIZE_READ_BYTES` of rows at a time (the
    7B head is 1.2 GiB of bf16: read whole, it would be the peak of an int4 load).
    Returns the packed weight, its scales, the stored shape and the bytes read."""
    entry, data_start = _entry(path, key)  # the header is parsed once, not once per block
    shape = tuple(entry["shape"])
    if len(shape) != 2:
        raise CheckpointError(f"{path.name}: {key} has shape {shape}, not a matrix")
    itemsize = np.dtype(_NUMPY_DTYPES[entry["dtype"]][0]).itemsize
    rows = max(1, QUANTIZE_READ_BYTES // (shape[1] * itemsize))
    q = scales = None
    for r0 in range(0, shape[0], rows):
        r1 = min(shape[0], r0 + rows)
        block = _read_rows(path, entry, data_start, (r0, r1))
        q_part, s_part = quantize_in_chunks(method, block)
        if q is None:  # filled in place: no second copy of the packed weight while joining
            q = q_part.new_empty((shape[0], *q_part.shape[1:]))
            scales = s_part.new_empty((shape[0], *s_part.shape[1:]))
        q[r0:r1], scales[r0:r1] = q_part, s_part
    return q, scales, shape, math.prod(shape) * itemsize


def _fill_optional_weights(
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    config: ModelConfig,
    compute: torch.dtype,
) -> None:
    """Weights a file may leave out: a tied head, and Whisper's sinusoidal positions."""
    head = "language_model.lm_head.weight"
    embed = EMBEDDING
    if head not in state and config.text.tie_word_embeddings and embed in state:
        state[head] = state[embed]
    pos = "audio_tower.embed_positions.weight"
    if pos not in state:
        length, dim = expected[pos].shape
        ref = next(iter(state.values()))
        state[pos] = whisper_sinusoids(length, dim).to(dtype=compute, device=ref.device)


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table: sin on the first half of the channels, cos on the rest."""
    log_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)
