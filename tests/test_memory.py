"""Memory: cache offload instead of eviction, weight dtypes, the VAE's fp32 guard."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.cache import OutputCache

MiB = 1 << 20


# --- offload instead of evict: a fake device, no CUDA needed ------------------------
class FakeModel:
    """Reports its bytes on whichever device it is (the cache's __cache_nbytes__ hook)."""

    def __init__(self, nbytes: int, device: str = "cuda"):
        self.nbytes, self.device = nbytes, device

    def __cache_nbytes__(self) -> dict[str, int]:
        return {self.device: self.nbytes}


class FakeMover:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def offload(self, value: Any, device_type: str) -> tuple[Any, Any] | None:
        models = [v for v in value if isinstance(v, FakeModel) and v.device == device_type]
        if not models:
            return None
        for m in models:
            m.device = "cpu"
        self.calls.append("offload")
        return value, (models, device_type)

    def restore(self, value: Any, home: Any) -> Any:
        models, device = home
        for m in models:
            m.device = device
        self.calls.append("restore")
        return value


def _cache(**budgets: int) -> tuple[OutputCache, FakeMover]:
    mover = FakeMover()
    return OutputCache(budgets=dict(budgets), movers=[mover]), mover


def test_over_budget_offloads_lru_instead_of_evicting() -> None:
    cache, _ = _cache(cuda=100 * MiB)
    a, b = FakeModel(60 * MiB), FakeModel(60 * MiB)
    cache.put("a", (a,))
    cache.put("b", (b,))
    assert cache.evictions == 0 and cache.offloads == 1
    assert "a" in cache and "b" in cache
    assert (a.device, b.device) == ("cpu", "cuda")
    assert cache.used == {"cuda": 60 * MiB, "cpu": 60 * MiB}


def test_reading_an_offloaded_entry_moves_it_back_and_offloads_the_lru() -> None:
    cache, mover = _cache(cuda=100 * MiB)
    a, b = FakeModel(60 * MiB), FakeModel(60 * MiB)
    cache.put("a", (a,))
    cache.put("b", (b,))
    entry = cache.get("a")
    assert entry is not None and entry.outputs[0] is a
    assert (a.device, b.device) == ("cuda", "cpu")
    assert cache.restores == 1 and mover.calls == ["offload", "restore", "offload"]
    assert cache.used == {"cuda": 60 * MiB, "cpu": 60 * MiB}


def test_pinned_entries_stay_on_the_device() -> None:
    cache, _ = _cache(cuda=100 * MiB)
    a, b = FakeModel(60 * MiB), FakeModel(60 * MiB)
    cache.put("a", (a,), pins=1)  # in use by the running prompt
    cache.put("b", (b,))
    assert (a.device, b.device) == ("cuda", "cpu")
    cache.put("c", (FakeModel(30 * MiB),), pins=1)
    assert a.device == "cuda" and cache.used["cuda"] == 90 * MiB


def test_an_entry_bigger_than_the_budget_alone_is_not_thrashed() -> None:
    cache, mover = _cache(cuda=50 * MiB)
    big = FakeModel(80 * MiB)
    cache.put("big", (big,), pins=1)
    assert big.device == "cuda"  # pinned: over budget, but in use
    cache.unpin("big")
    assert big.device == "cpu"  # released: offloaded, not dropped
    cache.get("big")
    assert big.device == "cuda" and mover.calls == ["offload", "restore"]


def test_offload_all_moves_every_unpinned_model_to_the_cpu_and_keeps_it_cached() -> None:
    """/free's "unload models": off the accelerator, still cached, back when read."""
    cache, mover = _cache()  # no budget: nothing would move on its own
    a, b, c = FakeModel(60 * MiB), FakeModel(10 * MiB), FakeModel(5 * MiB)
    cache.put("a", (a,))
    cache.put("b", (b,))
    cache.put("c", (c,), pins=1)  # the running prompt's
    cache.put("n", (3,))
    cache.offload_all()
    assert (a.device, b.device, c.device) == ("cpu", "cpu", "cuda")
    assert len(cache) == 4 and cache.evictions == 0
    assert cache.used == {"cuda": 5 * MiB, "cpu": 70 * MiB}
    cache.get("a")
    assert a.device == "cuda" and mover.calls == ["offload", "offload", "restore"]


def test_cpu_over_budget_still_evicts_offloaded_entries() -> None:
    cache, _ = _cache(cuda=100 * MiB, cpu=70 * MiB)
    cache.put("a", (FakeModel(60 * MiB),))
    cache.put("b", (FakeModel(60 * MiB),))
    cache.put("c", (FakeModel(60 * MiB),))
    # b's offload pushed the CPU over too: the oldest on the CPU (a) went
    assert "a" not in cache and "b" in cache and "c" in cache
    assert cache.evictions == 1 and cache.offloads == 2


def test_without_a_mover_the_cache_evicts_as_before() -> None:
    cache = OutputCache(budgets={"cuda": 100 * MiB}, movers=[])
    cache.put("a", (FakeModel(60 * MiB),))
    cache.put("b", (FakeModel(60 * MiB),))
    assert "a" not in cache and cache.evictions == 1 and cache.offloads == 0


# --- the torch mover ----------------------------------------------------------------
def test_torch_mover_finds_the_models_in_handles() -> None:
    from nodes.diffusion.handles import DiffusionModel, Vae
    from nodes.diffusion.memory import TorchMover, modules_on

    unet, control, vae = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    @dataclass(frozen=True)
    class Extension:
        net: Any

    model = DiffusionModel(unet, {}, extensions=(Extension(control),))
    value = (model, Vae(vae), torch.zeros(3), 7, "text")
    found = modules_on(value, "cpu")
    assert {id(m) for m in found} == {id(unet), id(control), id(vae)}
    assert modules_on(value, "cuda") == []
    assert TorchMover().offload(value, "cpu") is None  # already where offloads go
    moved = TorchMover(target="meta").offload(value, "cpu")  # meta stands in for a target
    assert moved is not None and moved[0] is value
    assert unet.weight.device.type == "meta" and [d for _, d in moved[1]] == ["cpu"] * 3


def test_the_loaders_register_the_torch_mover() -> None:
    import nodes.models  # noqa: F401
    from engine import cache
    from nodes.diffusion.memory import MOVER

    assert MOVER in cache._MOVERS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_models_are_offloaded_to_the_cpu_and_back() -> None:
    from nodes.diffusion.handles import Vae
    from nodes.diffusion.memory import TorchMover

    a, b = torch.nn.Linear(1024, 1024).cuda(), torch.nn.Linear(1024, 1024).cuda()
    size = 1024 * 1025 * 4
    cache = OutputCache(budgets={"cuda": size + size // 2}, movers=[TorchMover()])
    cache.put("a", (Vae(a),))
    cache.put("b", (Vae(b),))
    assert a.weight.device.type == "cpu" and b.weight.device.type == "cuda"
    cache.get("a")
    assert a.weight.device.type == "cuda" and b.weight.device.type == "cpu"


# --- dtypes ---------------------------------------------------------------------------
def test_dtype_names() -> None:
    from nodes.diffusion.precision import dtype_from_name, vae_dtype

    assert dtype_from_name("default") is torch.float32
    assert dtype_from_name("default", {"dtype": "bf16"}) is torch.bfloat16
    assert dtype_from_name("fp16", {"dtype": "bf16"}) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_from_name("fp64")
    assert vae_dtype(torch.float16, {}) is torch.float32
    assert vae_dtype(torch.float16, {"force_upcast": False}) is torch.float16
    assert vae_dtype(torch.bfloat16, {}) is torch.bfloat16


@pytest.mark.parametrize("which", ["single_file", "diffusers"])
def test_fp16_load_keeps_the_vae_in_fp32(tiny_model_paths: dict[str, Path], which: str) -> None:
    from nodes.diffusion.loading import load_components

    c = load_components(tiny_model_paths[which], dtype=torch.float16)
    assert c.unet.dtype == torch.float16 and c.text_encoder.dtype == torch.float16
    assert c.vae.dtype == torch.float32
    ref = load_components(tiny_model_paths[which])
    # read in fp32 from the file, not rounded through fp16 on the way
    for (name, p), q in zip(c.vae.named_parameters(), ref.vae.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_checkpoint_loader_weight_dtype_and_option(session: Any) -> None:
    from nodes.models import CheckpointLoaderSimple

    def load(**inputs: Any) -> tuple[Any, ...]:
        node = CheckpointLoaderSimple(ckpt_name="steerflow-tiny.safetensors", **inputs)
        ctx = argparse.Namespace(env=session.env, device="cpu")
        return node.execute(ctx)

    model, clip, vae = load(weight_dtype="bf16")
    assert model.unet.dtype == torch.bfloat16 and vae.vae.dtype == torch.bfloat16
    session.env.options["dtype"] = "fp16"
    try:
        model, clip, vae = load()
        assert model.unet.dtype == torch.float16 and clip.text_encoder.dtype == torch.float16
        assert vae.vae.dtype == torch.float32
        model, _, _ = load(weight_dtype="fp32")
        assert model.unet.dtype == torch.float32
        # --dtype is part of the loader's identity: changing it reloads
        fp16 = CheckpointLoaderSimple.fingerprint({"ckpt_name": "steerflow-tiny.safetensors"},
                                                  session.env)
    finally:
        session.env.options.pop("dtype")
    assert fp16 != CheckpointLoaderSimple.fingerprint(
        {"ckpt_name": "steerflow-tiny.safetensors"}, session.env)


def test_a_half_vae_that_overflows_is_rerun_in_fp32() -> None:
    from nodes.diffusion.precision import decode_with_upcast

    class Overflowing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(300.0))  # 300² > fp16 max

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.to(self.scale.dtype) * self.scale * self.scale / 1e5

    vae = Overflowing().half()
    x = torch.ones(2)
    out = decode_with_upcast(vae, lambda m: m(x))
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    assert vae.scale.dtype == torch.float16  # cast back after the retry
    assert torch.isinf(vae(x)).all()  # the fp16 run alone overflows


def test_dtype_option_on_the_command_line_and_server() -> None:
    from nodes.diffusion.precision import DTYPE_NAMES
    from server.config import ConfigError, ServerConfig
    from steerflow.cli import build_parser

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if a.dest == "dtype")
    assert tuple(run.choices) == DTYPE_NAMES
    args = build_parser().parse_args(["run", "wf.json", "--dtype", "bf16"])
    assert args.dtype == "bf16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "wf.json", "--dtype", "fp64"])
    serve = build_parser().parse_args(["serve", "--dtype", "fp16"])
    assert ServerConfig.from_args(serve).dtype == "fp16"
    with pytest.raises(ConfigError, match="--dtype"):
        ServerConfig(dtype="int8").check()


# --- sequential offload: a model bigger than the device's whole budget ---------------
class FakeSequentialMover(FakeMover):
    """Runs a too-big FakeModel "sequentially": its bytes move to the CPU."""

    def offload_sequential(self, value: Any, device_type: str, budget: int
                           ) -> tuple[Any, Any] | None:
        big = [v for v in value if isinstance(v, FakeModel) and v.device == device_type
               and v.nbytes > budget]
        for m in big:
            m.device = "cpu"
        self.calls.append("sequential")
        return (value, (big, device_type)) if big else None


def test_a_model_bigger_than_the_budget_runs_with_sequential_offload() -> None:
    mover = FakeSequentialMover()
    cache = OutputCache(budgets={"cuda": 50 * MiB}, movers=[mover])
    big, small = FakeModel(80 * MiB), FakeModel(10 * MiB)
    entry = cache.put("big", (big, small), pins=1)  # in use: still placed, not offloaded
    assert (big.device, small.device) == ("cpu", "cuda")
    assert entry.sequential is not None and cache.sequential_offloads == 1
    assert cache.used == {"cuda": 10 * MiB, "cpu": 80 * MiB} and cache.offloads == 0
    cache.get("big")  # still too big: stays sequential
    assert big.device == "cpu" and mover.calls == ["sequential"]
    cache.budgets["cuda"] = 100 * MiB  # room now: restored whole on the next read
    cache.get("big")
    assert big.device == "cuda" and entry.sequential is None
    assert mover.calls == ["sequential", "restore"] and cache.used["cuda"] == 90 * MiB


def test_without_a_sequential_mover_a_big_pinned_entry_stays_as_before() -> None:
    cache, _ = _cache(cuda=50 * MiB)
    big = FakeModel(80 * MiB)
    entry = cache.put("big", (big,), pins=1)
    assert big.device == "cuda" and entry.sequential is None


def _txt2img(seed: int, text: str, negative: str, key: str) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "steerflow-tiny.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 3, "cfg": 6.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0], "key": key}},
    }


def test_sequential_offload_gives_the_same_image(models_dir: Path, tmp_path: Path) -> None:
    """The torch mover's sequential offload (diffusers' leaf-level hooks) on the UNet, the
    text encoder and the VAE changes no number; restoring removes every hook. No GPU
    here: the weights are stored on the CPU and computed on the CPU, through the hooks."""
    from engine.session import Session
    from nodes.diffusion.handles import DiffusionModel
    from nodes.diffusion.memory import MOVER, is_sequentially_offloaded
    from tests.graph_nodes import CAPTURED, registry_with_capture

    def session(name: str) -> Session:
        return Session(tmp_path / name, models_dir=models_dir, device="cpu",
                       registry=registry_with_capture())

    plain = session("plain")
    assert plain.run(_txt2img(7, "a red circle", "blurry", "plain")).ok
    reference = CAPTURED.pop("plain")

    hooked = session("hooked")
    assert hooked.run(_txt2img(8, "warm up", "other", "warm")).ok
    [entry] = [e for e in hooked.executor.cache.entries.values()
               if e.outputs and isinstance(e.outputs[0], DiffusionModel)]
    model, clip, vae = entry.outputs
    moved = MOVER.offload_sequential(entry.outputs, "cpu", budget=0)
    assert moved is not None
    modules = (model.unet, clip.text_encoder, vae.vae)
    assert all(is_sequentially_offloaded(m) for m in modules)
    assert model.device.type == "cpu"  # the device it computes on
    assert hooked.run(_txt2img(7, "a red circle", "blurry", "hooked")).ok
    assert torch.equal(CAPTURED.pop("hooked"), reference)

    MOVER.restore(entry.outputs, moved[1])
    assert not any(is_sequentially_offloaded(m) for m in modules)
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks
                   for root in modules for m in root.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_over_the_budget_runs_sequentially_through_the_cache() -> None:
    from nodes.diffusion.handles import Vae
    from nodes.diffusion.memory import TorchMover, is_sequentially_offloaded

    net = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(4)]).cuda()
    x = torch.randn(8, 1024, device="cuda")
    with torch.no_grad():
        expected = net(x)
    size = 4 * 1024 * 1025 * 4
    cache = OutputCache(budgets={"cuda": size // 2}, movers=[TorchMover()])
    entry = cache.put("net", (Vae(net),), pins=1)
    assert entry.sequential is not None and is_sequentially_offloaded(net)
    assert net[0].weight.device.type == "cpu" and cache.used.get("cuda", 0) == 0
    with torch.no_grad():
        assert torch.equal(net(x), expected)
    cache.budgets["cuda"] = 2 * size
    cache.get("net")
    assert not is_sequentially_offloaded(net) and net[0].weight.device.type == "cuda"
