"""Models bigger than the device's budget: loaded straight into sequential offload.

No GPU here, as in tests/test_memory.py: the cache's side uses fake models on a fake
"cuda"; the torch side computes on the CPU through diffusers' hooks, with a fake
device that fails (like an out-of-memory error) when a whole model is moved to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.cache import OutputCache

MiB = 1 << 20


# --- the cache adopts what a loader placed ------------------------------------------
class FakeModel:
    def __init__(self, nbytes: int, device: str = "cpu", placed_on: str | None = None):
        self.nbytes, self.device, self.placed_on = nbytes, device, placed_on

    def __cache_nbytes__(self) -> dict[str, int]:
        return {self.device: self.nbytes}


class FakeAdoptingMover:
    """Like memory.TorchMover: adopts models a loader put on sequential offload."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def offload(self, value: Any, device_type: str) -> tuple[Any, Any] | None:
        return None

    def restore(self, value: Any, home: Any) -> Any:
        for model, device in home:
            model.device = device
        self.calls.append("restore")
        return value

    def offload_sequential(self, value: Any, device_type: str, budget: int
                           ) -> tuple[Any, Any] | None:
        self.calls.append("sequential")
        return None

    def adopt_sequential(self, value: Any, device_type: str) -> tuple[Any, int] | None:
        placed = [v for v in value if isinstance(v, FakeModel) and v.placed_on == device_type]
        if not placed:
            return None
        for m in placed:
            m.placed_on = None  # adopted once
        self.calls.append("adopt")
        return [(m, device_type) for m in placed], sum(m.nbytes for m in placed)


def test_the_cache_adopts_a_model_loaded_into_sequential_offload() -> None:
    mover = FakeAdoptingMover()
    cache = OutputCache(budgets={"cuda": 50 * MiB}, movers=[mover])
    big = FakeModel(80 * MiB, placed_on="cuda")  # its weights never went to the device
    entry = cache.put("big", (big,), pins=1)
    assert entry.sequential is not None and cache.sequential_offloads == 1
    assert entry.sequential[2] == {"cuda": 80 * MiB}  # what it would take whole
    assert cache.used == {"cpu": 80 * MiB} and mover.calls == ["adopt"]
    cache.get("big")  # still too big: stays sequential, not adopted twice
    assert big.device == "cpu" and mover.calls == ["adopt"]
    cache.budgets["cuda"] = 100 * MiB  # room now: whole on the device at the next read
    cache.get("big")
    assert big.device == "cuda" and entry.sequential is None
    assert mover.calls == ["adopt", "restore"] and cache.used["cuda"] == 80 * MiB


def test_an_entry_with_nothing_placed_is_left_alone() -> None:
    mover = FakeAdoptingMover()
    cache = OutputCache(budgets={"cuda": 50 * MiB}, movers=[mover])
    entry = cache.put("small", (FakeModel(10 * MiB, device="cuda"),))
    assert entry.sequential is None and mover.calls == []


def test_the_device_budget_is_the_caches() -> None:
    from nodes.diffusion.memory import device_budget

    def ctx(device: str, budgets: dict[str, int]) -> Any:
        ex = argparse.Namespace(cache=OutputCache(budgets=budgets))
        return argparse.Namespace(device=device, run=argparse.Namespace(ex=ex))

    assert device_budget(ctx("cuda:0", {"cpu": 9, "cuda": 123})) == 123
    assert device_budget(ctx("cuda", {"cpu": 9})) is None  # unbounded (and no GPU here)
    assert device_budget(ctx("cpu", {"cpu": 9})) is None  # weights live there anyway
    assert device_budget(argparse.Namespace(device="cuda", run=None)) is None


# --- torch: a fake device that cannot take a whole model -----------------------------
class Net(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__(*[torch.nn.Linear(64, 64) for _ in range(4)])


def record_whole_moves(monkeypatch: pytest.MonkeyPatch, roots: tuple[type, ...]) -> list[str]:
    """Records every ``Module.to(device)`` of a whole model of the ``roots`` classes (what
    a device smaller than the model could not take); leaf layers, moved one by one by the
    offload hooks, pass."""
    moves: list[str] = []
    real_to = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self, roots) and torch._C._nn._parse_to(*args, **kwargs)[0] is not None:
            moves.append(type(self).__name__)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    return moves


@pytest.fixture
def whole_moves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    roots = (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, Net)
    return record_whole_moves(monkeypatch, roots)


def test_place_model_over_the_budget_never_moves_it_whole(whole_moves: list[str]) -> None:
    from nodes.diffusion.memory import (
        MOVER,
        estimated_nbytes,
        is_sequentially_offloaded,
        place_model,
    )

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = net(x)
    size = 4 * 64 * 65 * 4
    assert estimated_nbytes(net) == size and estimated_nbytes(net, torch.float16) == size // 2
    place_model(net, "cpu", torch.float32, budget=size // 2)
    assert whole_moves == [] and is_sequentially_offloaded(net) and not net.training
    with torch.no_grad():
        assert torch.equal(net(x), expected)
    # the cache adopts it once, with the bytes it would take whole, and restores it whole
    adopted = MOVER.adopt_sequential((net,), "cpu")
    assert adopted is not None and adopted[1] == size
    assert MOVER.adopt_sequential((net,), "cpu") is None
    assert MOVER.adopt_sequential((Net(),), "cpu") is None
    MOVER.restore((net,), adopted[0])
    assert whole_moves == ["Net"] and not is_sequentially_offloaded(net)
    with torch.no_grad():
        assert torch.equal(net(x), expected)


def test_place_model_within_the_budget_moves_it_whole(whole_moves: list[str]) -> None:
    from nodes.diffusion.memory import MOVER, is_sequentially_offloaded, place_model

    net = place_model(Net(), "cpu", torch.float16, budget=1 << 30)
    assert whole_moves == ["Net"] and not is_sequentially_offloaded(net)
    assert net[0].weight.dtype == torch.float16
    assert MOVER.adopt_sequential((net,), "cpu") is None
    assert not is_sequentially_offloaded(place_model(Net(), "cpu", budget=None))


def _txt2img(key: str, seed: int) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "steerflow-tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                         "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 3, "cfg": 6.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": key}},
    }


def test_a_checkpoint_bigger_than_the_budget_loads_sequentially_with_the_same_image(
        models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        whole_moves: list[str]) -> None:
    """The loader node with a budget smaller than each model: nothing is moved whole to the
    (fake) device, every model runs through the offload hooks, the image is unchanged;
    made whole again (what the cache does once the budget allows) it is unchanged too."""
    from engine.session import Session
    from nodes.diffusion import memory
    from nodes.diffusion.handles import DiffusionModel
    from tests.graph_nodes import CAPTURED, registry_with_capture

    def session(name: str) -> Session:
        return Session(tmp_path / name, models_dir=models_dir, device="cpu",
                       registry=registry_with_capture())

    plain = session("plain")
    assert plain.run(_txt2img("plain7", 7)).ok and plain.run(_txt2img("plain8", 8)).ok
    # the normal load moves each model whole (so does a first run's built-in model install)
    assert {"UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"} <= set(whole_moves)
    whole_moves.clear()

    monkeypatch.setattr(memory, "device_budget", lambda ctx, device=None: 1024)
    hooked = session("hooked")
    assert hooked.run(_txt2img("hooked", 7)).ok
    assert whole_moves == []  # never moved whole to the device
    assert torch.equal(CAPTURED.pop("hooked"), CAPTURED.pop("plain7"))
    [entry] = [e for e in hooked.executor.cache.entries.values()
               if e.outputs and isinstance(e.outputs[0], DiffusionModel)]
    model, clip, vae = entry.outputs
    modules = (model.unet, clip.text_encoder, vae.vae)
    assert all(memory.is_sequentially_offloaded(m) for m in modules)
    assert entry.nbytes.keys() == {"cpu"}

    # On a GPU the cache adopts them (its "cuda" budget); here, do what it does.
    adopted = memory.MOVER.adopt_sequential(entry.outputs, "cpu")
    assert adopted is not None and {id(m) for m, _ in adopted[0].modules} == set(map(id, modules))
    memory.MOVER.restore(entry.outputs, adopted[0])  # the budget allows: whole again
    assert sorted(whole_moves) == ["AutoencoderKL", "CLIPTextModel", "UNet2DConditionModel"]
    assert not any(memory.is_sequentially_offloaded(m) for m in modules)
    assert hooked.run(_txt2img("whole", 8)).ok
    assert torch.equal(CAPTURED.pop("whole"), CAPTURED.pop("plain8"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_checkpoint_over_the_budget_loads_sequentially_and_becomes_whole(
        models_dir: Path, tmp_path: Path) -> None:
    from engine.session import Session
    from nodes.diffusion.handles import DiffusionModel
    from nodes.diffusion.memory import is_sequentially_offloaded
    from tests.graph_nodes import CAPTURED, registry_with_capture

    def session(name: str, budgets: dict[str, int] | None = None) -> Session:
        return Session(tmp_path / name, models_dir=models_dir, device="cuda",
                       registry=registry_with_capture(), cache_budgets=budgets)

    plain = session("plain")
    assert plain.run(_txt2img("plain7", 7)).ok and plain.run(_txt2img("plain8", 8)).ok
    small = session("small", {"cpu": 1 << 34, "cuda": 1024})
    assert small.run(_txt2img("small", 7)).ok
    assert torch.allclose(CAPTURED.pop("small"), CAPTURED.pop("plain7"), atol=1e-6)
    [entry] = [e for e in small.executor.cache.entries.values()
               if e.outputs and isinstance(e.outputs[0], DiffusionModel)]
    assert entry.sequential is not None and is_sequentially_offloaded(entry.outputs[0].unet)
    small.executor.cache.budgets["cuda"] = 1 << 34
    assert small.run(_txt2img("whole", 8)).ok  # read again: whole on the GPU
    assert entry.sequential is None and entry.outputs[0].unet.device.type == "cuda"
    assert torch.allclose(CAPTURED.pop("whole"), CAPTURED.pop("plain8"), atol=1e-6)


def test_the_vae_and_unet_loaders_place_by_the_budget(tiny_model_paths: dict[str, Path],
                                                      whole_moves: list[str]) -> None:
    from nodes.diffusion.component_loading import load_unet, load_vae
    from nodes.diffusion.memory import is_sequentially_offloaded

    path = tiny_model_paths["single_file"]
    vae = load_vae(path, budget=1024)
    unet, _, _ = load_unet(path, budget=1024)
    assert whole_moves == [] and is_sequentially_offloaded(vae) and is_sequentially_offloaded(unet)
    assert not is_sequentially_offloaded(load_vae(path, budget=1 << 30))
    assert whole_moves == ["AutoencoderKL"]
