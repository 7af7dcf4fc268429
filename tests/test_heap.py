"""heap.HugePageArena: the weights the decode kernels stream, in memory that may take 2 MiB pages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qwen_audio.model import heap, quant

needs_thp = pytest.mark.skipif(
    not heap.HugePageArena.available(), reason="no MADV_HUGEPAGE on this system"
)


def _thp_eligible(address: int) -> bool | None:
    """THPeligible of the mapping holding `address` (None where /proc/self/smaps says nothing)."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("THPeligible:"):
            return line.split()[1] == "1"
    return None


@needs_thp
def test_arena_tensors_are_aligned_apart_and_hold_their_values(monkeypatch):
    monkeypatch.setattr(heap, "ARENA_CHUNK", 8 << 20)  # a few tensors fill a chunk
    arena = heap.HugePageArena()
    shapes = [(1024, 2048), (3, 1 << 20), (700, 1024), (5000, 1024)]
    dtypes = [torch.int8, torch.uint8, torch.float32, torch.float16]
    made = [arena.empty(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes)]
    for i, t in enumerate(made):
        t.fill_(i + 1)
        assert t.shape == shapes[i] and t.dtype == dtypes[i] and t.data_ptr() % 64 == 0
    first = made[0].data_ptr()
    assert first % heap.HUGE_PAGE == 0  # a chunk's first tensor starts on a 2 MiB page
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in made)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlap
    assert [t.float().mean().item() for t in made] == [1.0, 2.0, 3.0, 4.0]
    eligible = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if eligible.exists() and "[never]" not in eligible.read_text():
        assert _thp_eligible(first) is not False  # None: no /proc/self/smaps to ask
    small = arena.empty((100,), dtype=torch.float16)  # under a huge page: an ordinary tensor
    assert small.untyped_storage().nbytes() == 200


@needs_thp
def test_row_blocks_in_the_arena_equal_ordinary_ones():
    q = torch.randint(0, 255, (4096, 1024), dtype=torch.uint8)
    s = torch.randn(4096, 64).half()
    want = quant.to_row_blocks(q, s)
    got = quant.to_row_blocks(q, s, heap.HugePageArena().empty)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(quant.from_row_blocks(*got)[0], q)


def test_weights_read_into_the_arena_equal_the_file(tmp_path, monkeypatch):
    """The decoder's 16-bit weights are read into huge pages instead of mapped: the same values,
    converted when stored in another dtype, and a file cut short is named."""
    from safetensors.torch import save_file

    from qwen_audio.config import CheckpointError
    from qwen_audio.model import loader

    monkeypatch.setattr(heap, "HUGE_PAGE", 1 << 12)  # small tensors go to the arena too
    weights = {"a": torch.randn(300, 128).bfloat16(), "b": torch.randn(64, 96)}
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    arena = heap.HugePageArena()
    a = loader._read_into(path, "a", torch.bfloat16, arena)
    assert a.dtype == torch.bfloat16 and torch.equal(a, weights["a"])
    b = loader._read_into(path, "b", torch.bfloat16, arena)  # float32 on disk
    assert torch.equal(b, weights["b"].bfloat16())
    cut = tmp_path / "cut.safetensors"
    _, data_start = loader._entry(path, "a")
    cut.write_bytes(path.read_bytes()[: data_start + 100])  # both tensors cut short
    with pytest.raises(CheckpointError, match="a is cut short"):
        loader._read_into(cut, "a", torch.bfloat16, arena)


@needs_thp
def test_arena_without_a_mapping_gives_ordinary_tensors(monkeypatch):
    """A mapping refused (ulimit -v, strict overcommit) costs the huge pages, not the load."""

    def refused(nbytes):
        raise OSError(12, "Cannot allocate memory")

    arena = heap.HugePageArena()
    monkeypatch.setattr(arena, "_new_chunk", refused)
    t = arena.empty((1024, 4096), dtype=torch.int8)
    assert t.shape == (1024, 4096) and t.untyped_storage().nbytes() == 1024 * 4096
