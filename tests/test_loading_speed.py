"""The tensor-by-tensor safetensors reader: same tensors, cast while reading, bounded memory.

The full-size comparison with diffusers (cold time to first step, peak RSS) is
``bench/bench_loading.py``; it builds a 2 GB model, too big for CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.diffusion.loading import read_checkpoint_file
from nodes.diffusion.safetensors_io import read_in_background, read_safetensors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mixed_file(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(33, 7, generator=gen).half(),
        "b.bias": torch.randn(5, generator=gen).to(torch.bfloat16),
        "c.scalar": torch.tensor(3.5),
        "d.empty": torch.zeros(0, 4, dtype=torch.float16),
        "e.ids": torch.arange(11, dtype=torch.int64),
        "f.mask": torch.tensor([True, False, True]),
        "g.odd": torch.randn(3, generator=gen).half(),  # leaves the next tensor unaligned
        "h.after": torch.randn(4, 4, generator=gen).half(),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "x"})
    return path


def test_reads_what_load_file_reads(mixed_file: Path) -> None:
    ref = load_file(str(mixed_file))
    got, metadata = read_safetensors(mixed_file)
    assert metadata == {"format": "pt", "note": "x"}
    assert set(got) == set(ref)
    for key, tensor in ref.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
        # owned, aligned memory: no view of the file
        assert got[key].numel() == 0 or got[key].data_ptr() % 64 == 0, key


def test_casts_floating_tensors_only(mixed_file: Path) -> None:
    ref = load_file(str(mixed_file))
    got, _ = read_safetensors(mixed_file, dtype=torch.float32)
    for key, tensor in ref.items():
        if tensor.is_floating_point():
            assert got[key].dtype == torch.float32 and torch.equal(got[key], tensor.float()), key
        else:
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


def test_per_key_dtypes_and_the_shared_entry_point(mixed_file: Path) -> None:
    got, _ = read_checkpoint_file(
        mixed_file, dtype=lambda key: torch.float32 if key.startswith("a.") else None)
    assert got["a.weight"].dtype == torch.float32 and got["h.after"].dtype == torch.float16


def test_unmappable_files_are_read_the_plain_way(mixed_file: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Some network and FUSE mounts cannot be memory-mapped: the reader falls back."""
    import mmap

    expected, _ = read_safetensors(mixed_file, dtype=torch.float32)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    got, _ = read_safetensors(mixed_file, dtype=torch.float32)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key])


def test_background_read(mixed_file: Path, tmp_path: Path) -> None:
    future = read_in_background(mixed_file, dtype=torch.float32)
    assert future is not None
    got, _ = future.result(timeout=30)
    assert got["a.weight"].dtype == torch.float32
    assert read_in_background(tmp_path / "model.ckpt") is None
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    future = read_in_background(bad)
    assert future is not None
    with pytest.raises(Exception):  # noqa: B017  (safetensors' own header error)
        future.result(timeout=30)


def test_truncated_file_is_a_clear_error(mixed_file: Path, tmp_path: Path) -> None:
    data = mixed_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-8])
    with pytest.raises(Exception):  # noqa: B017  (refused by the header check or by us)
        read_safetensors(cut)


_PEAK = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from nodes.diffusion.safetensors_io import read_safetensors
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state, _ = read_safetensors({path!r}, dtype=torch.float32)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_peak_memory_is_the_cast_weights_plus_a_buffer(tmp_path: Path) -> None:
    """A 96 MiB fp16 file read as fp32: ~192 MiB more, not 288 (file pages + copies)."""
    path = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.ones(4 << 20, dtype=torch.float16) for i in range(12)},
              str(path))
    out = subprocess.run([sys.executable, "-c", _PEAK.format(root=str(ROOT), path=str(path))],
                         capture_output=True, text=True, check=True)
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < 230 << 20, f"peak grew by {grown / 2**20:.0f} MiB"
