"""With the allow-pickle opt-in, every loader reads pickles with torch.load(weights_only=True):
a pickle that would run code is refused with our own message (never torch's, which
suggests weights_only=False), and the code never runs. (A pack's
comfy.utils.load_torch_file raises torch's own error, as ComfyUI's does.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

MARKER = "steerflow-pickle-ran"


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil(path: Path, marker: Path, protocol: int) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"x": _Payload(marker)}}, fh, protocol=protocol)
    return path


def _loaders():
    from nodes.diffusion.embeddings import load_embedding
    from nodes.diffusion.ip_adapter import read_ip_adapter_file
    from nodes.diffusion.loading import torch_load_weights_only
    from nodes.diffusion.lora import read_lora_file
    from nodes.diffusion.upscale_model import read_state_dict

    return {
        "lora": lambda p: read_lora_file(p, allow_pickle=True),
        "ip_adapter": lambda p: read_ip_adapter_file(p, allow_pickle=True),
        "embedding": lambda p: load_embedding(p, allow_pickle=True),
        "upscale": lambda p: read_state_dict(p, allow_pickle=True),
        "checkpoint": torch_load_weights_only,
    }


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("loader", ["lora", "ip_adapter", "embedding", "upscale",
                                    "checkpoint"])
def test_a_code_pickle_is_refused_in_our_words(tmp_path: Path, loader: str, protocol: int):
    marker = tmp_path / MARKER
    path = _evil(tmp_path / "evil.pt", marker, protocol)
    with pytest.raises(ValueError) as caught:
        _loaders()[loader](path)
    message = str(caught.value)
    assert "holds Python objects besides tensors" in message
    assert "weights_only" not in message
    if protocol == 2:  # the object it names (a newer protocol stops torch earlier)
        assert "(it refers to getattr)" in message
    assert not marker.exists()
