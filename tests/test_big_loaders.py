"""ControlNet, CLIP vision, GLIGEN, upscale and depth loaders place models as the checkpoint
loader does (:func:`nodes.diffusion.memory.place_model`): over the device's budget a model
never goes to the device whole, it runs with sequential offload, and outputs are unchanged.

No GPU here, as in tests/test_big_models.py: the budget is faked (``device_budget``) and the
models compute on the CPU through diffusers' offload hooks; every ``Module.to(device)`` of a
whole model is recorded, which a device smaller than the model could not take.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.session import Session
from tests.graph_nodes import CAPTURED, registry_with_capture
from tests.test_big_models import record_whole_moves

TOL = 1e-6
TINY_BUDGET = 1024  # bytes: smaller than any model here


@pytest.fixture
def whole_moves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the model classes moved whole with ``Module.to(device)``; the leaf layers
    the offload hooks move one at a time are not recorded."""
    from diffusers import AutoencoderKL, ControlNetModel, T2IAdapter, UNet2DConditionModel
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection
    from transformers import CLIPModel, CLIPTextModel, CLIPVisionModelWithProjection

    return record_whole_moves(monkeypatch, (
        UNet2DConditionModel, AutoencoderKL, CLIPTextModel, ControlNetModel, T2IAdapter,
        CLIPModel, CLIPVisionModelWithProjection, GLIGENTextBoundingboxProjection))


def _tiny_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from nodes.diffusion import memory

    monkeypatch.setattr(memory, "device_budget", lambda ctx, device=None: TINY_BUDGET)


def _cached(session: Session, kind: type) -> Any:
    """The one cached output of type ``kind`` in the session's cache."""
    [value] = [e.outputs[0] for e in session.executor.cache.entries.values()
               if e.outputs and isinstance(e.outputs[0], kind)]
    return value


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# --- ControlNet (Load ControlNet Model) through the graph ----------------------------------

def test_a_controlnet_over_the_budget_is_never_moved_whole_and_steers_the_same(
        models_dir: Path, controlnet_paths: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, whole_moves: list[str]) -> None:
    from nodes.diffusion.controlnet import ControlNet
    from nodes.diffusion.memory import is_sequentially_offloaded
    from tests.test_controlnet import NET, control_picture, graph_prompt

    (tmp_path / "input").mkdir()
    control_picture((64, 64), 0).save(tmp_path / "input" / "control.png")
    prompt = graph_prompt([{"net": NET, "image": "control.png"}])

    def image(session: Session) -> torch.Tensor:
        key = uuid.uuid4().hex
        prompt["capture"]["inputs"]["key"] = key
        result = session.run(prompt)
        assert result.ok, result.run.error
        return CAPTURED.pop(key)

    def session() -> Session:
        return Session(tmp_path, models_dir=models_dir, device="cpu",
                       registry=registry_with_capture())

    plain_session = session()
    plain = image(plain_session)
    assert "ControlNetModel" in whole_moves  # the normal load moves it whole
    assert not is_sequentially_offloaded(_cached(plain_session, ControlNet).model)
    whole_moves.clear()

    _tiny_budget(monkeypatch)
    small = session()
    offloaded = image(small)
    assert whole_moves == []
    net = _cached(small, ControlNet).model
    assert is_sequentially_offloaded(net) and not net.training
    assert _max_diff(offloaded, plain) <= TOL


def test_control_loaders_place_by_the_budget(controlnet_paths: dict[str, Path],
                                             tiny_model_paths: dict[str, Path],
                                             whole_moves: list[str]) -> None:
    """load_controlnet, load_t2i_adapter's common loader and the diff ControlNet loader."""
    from nodes.diffusion.component_loading import load_diff_controlnet, load_unet
    from nodes.diffusion.controlnet_loading import load_control_model
    from nodes.diffusion.memory import is_sequentially_offloaded

    for path in controlnet_paths.values():
        assert is_sequentially_offloaded(load_control_model(path, budget=TINY_BUDGET))
    unet, _, _ = load_unet(tiny_model_paths["single_file"])
    whole_moves.clear()
    net = load_diff_controlnet(controlnet_paths["single_file"], unet, budget=TINY_BUDGET)
    assert is_sequentially_offloaded(net) and whole_moves == []
    assert not is_sequentially_offloaded(load_control_model(controlnet_paths["diffusers"],
                                                            budget=1 << 30))
    assert whole_moves == ["ControlNetModel"]


# --- CLIP vision (Load CLIP Vision) through the graph --------------------------------------

def test_a_clip_vision_model_over_the_budget_is_never_moved_whole_and_encodes_the_same(
        models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        whole_moves: list[str]) -> None:
    from nodes.diffusion.clip_vision import ClipVision
    from nodes.diffusion.memory import is_sequentially_offloaded
    from nodes.diffusion.tiny_clip import ensure_tiny_clip
    from tests.test_clip_vision import FULL, _encode_graph, _run

    ensure_tiny_clip(models_dir)

    def session() -> Session:
        return Session(tmp_path, models_dir=models_dir, device="cpu",
                       registry=registry_with_capture())

    plain_session = session()
    plain = _run(plain_session, _encode_graph(FULL, text="a red circle"))
    assert "CLIPModel" in whole_moves
    whole_moves.clear()

    _tiny_budget(monkeypatch)
    small = session()
    out = _run(small, _encode_graph(FULL, text="a red circle"))
    assert whole_moves == []
    clip = _cached(small, ClipVision)
    assert is_sequentially_offloaded(clip.model) and not clip.model.training
    assert clip.device == torch.device("cpu")  # where it computes, not only its weights
    for field in ("image_embeds", "last_hidden_state", "penultimate_hidden_states"):
        assert _max_diff(getattr(out["encoded"], field), getattr(plain["encoded"], field)) <= TOL
    assert abs(out["score"] - plain["score"]) <= TOL  # the text tower too


# --- GLIGEN, upscale models, depth estimators ----------------------------------------------

def test_a_gligen_position_net_over_the_budget_is_placed_and_fits_the_same(
        models_dir: Path, whole_moves: list[str]) -> None:
    from nodes.diffusion.gligen import fit, load_gligen
    from nodes.diffusion.memory import is_sequentially_offloaded
    from nodes.diffusion.tiny_gligen import (
        TINY_GLIGEN_NAME,
        build_tiny_gligen_unet,
        save_tiny_gligen,
    )

    path = save_tiny_gligen(models_dir / "gligen")["single_file"]
    assert path.name == f"{TINY_GLIGEN_NAME}.safetensors"
    plain = load_gligen(path)
    whole_moves.clear()
    small = load_gligen(path, budget=TINY_BUDGET)
    assert whole_moves == [] and is_sequentially_offloaded(small.position_net)

    torch.manual_seed(0)
    boxes, masks = torch.rand(2, 30, 4), (torch.rand(2, 30) > 0.5).float()
    phrases = torch.randn(2, 30, plain.phrase_dim)

    def tokens(net: Any) -> torch.Tensor:
        with torch.no_grad():
            return net(boxes, masks, positive_embeddings=phrases)

    assert _max_diff(tokens(small.position_net), tokens(plain.position_net)) <= TOL
    # Fitted to a UNet of another dtype: a hook-free copy, the loaded net left as it is.
    unet = build_tiny_gligen_unet().to(torch.float64)
    fitted = fit(small, unet)[-1].module
    assert fitted is not small.position_net and not is_sequentially_offloaded(fitted)
    assert fitted.null_positive_feature.dtype == torch.float64
    assert is_sequentially_offloaded(small.position_net)
    boxes, masks, phrases = boxes.double(), masks.double(), phrases.double()
    assert _max_diff(tokens(fitted), tokens(plain.position_net.double())) <= TOL


def test_an_upscale_model_over_the_budget_is_placed_and_upscales_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from nodes.diffusion.memory import compute_device, is_sequentially_offloaded
    from nodes.diffusion.upscale_model import load_upscale_model, upscale_image
    from tests.test_upscale_model import tiny_esrgan

    path = tmp_path / "x2.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_esrgan().state_dict().items()}, str(path))
    plain = load_upscale_model(path)
    moves: list[str] = []
    real_to = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.__class__.__module__.startswith("spandrel") and \
                torch._C._nn._parse_to(*args, **kwargs)[0] is not None:
            moves.append(type(self).__name__)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    small = load_upscale_model(path, budget=TINY_BUDGET)
    assert moves == [] and is_sequentially_offloaded(small.model)
    assert compute_device(small.model) == torch.device("cpu")
    image = torch.rand(1, 19, 23, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _max_diff(upscale_image(small, image), upscale_image(plain, image)) <= TOL


def test_a_depth_estimator_over_the_budget_is_placed_and_predicts_the_same(
        models_dir: Path) -> None:
    from nodes.depth2img import estimator_folders
    from nodes.diffusion.depth2img import load_depth_estimator
    from nodes.diffusion.memory import is_sequentially_offloaded
    from nodes.diffusion.tiny_depth import save_tiny_estimator

    model_dir, processor_dir = estimator_folders(save_tiny_estimator(models_dir / "depth", "dpt"))
    plain = load_depth_estimator(model_dir, processor_dir)
    small = load_depth_estimator(model_dir, processor_dir, budget=TINY_BUDGET)
    assert is_sequentially_offloaded(small.model) and not small.model.training
    image = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(0))
    assert _max_diff(small.predict(image), plain.predict(image)) <= TOL


def test_compute_device_is_where_the_hooks_move_the_layers() -> None:
    from nodes.diffusion.memory import (
        compute_device,
        end_sequential_offload,
        start_sequential_offload,
    )

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert compute_device(net) == torch.device("cpu")
    start_sequential_offload(net, "cuda:0")  # hooks only: nothing runs, no GPU needed
    assert compute_device(net) == torch.device("cuda:0")
    assert net[0].weight.device == torch.device("cpu")
    end_sequential_offload(net, "cpu")
    assert compute_device(net) == torch.device("cpu")
    assert compute_device(torch.nn.ReLU()) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_controlnet_and_clip_vision_over_the_budget_are_adopted_and_unchanged(
        models_dir: Path, controlnet_paths: dict[str, Path], tmp_path: Path) -> None:
    """On a GPU with a cache budget smaller than every model: the loaders keep them on the
    CPU with sequential offload, the cache adopts them, and the outputs match a plain run."""
    from nodes.diffusion.clip_vision import ClipVision
    from nodes.diffusion.controlnet import ControlNet
    from nodes.diffusion.memory import compute_device, is_sequentially_offloaded
    from nodes.diffusion.tiny_clip import ensure_tiny_clip
    from tests.test_clip_vision import FULL, _encode_graph, _run
    from tests.test_controlnet import NET, control_picture, graph_prompt

    ensure_tiny_clip(models_dir)
    (tmp_path / "input").mkdir()
    control_picture((64, 64), 0).save(tmp_path / "input" / "control.png")

    def session(budgets: dict[str, int] | None = None) -> Session:
        return Session(tmp_path, models_dir=models_dir, device="cuda",
                       registry=registry_with_capture(), cache_budgets=budgets)

    def both(s: Session) -> tuple[torch.Tensor, Any]:
        prompt = graph_prompt([{"net": NET, "image": "control.png"}])
        prompt["capture"]["inputs"]["key"] = key = uuid.uuid4().hex
        assert s.run(prompt).ok
        return CAPTURED.pop(key), _run(s, _encode_graph(FULL))["encoded"]

    plain_image, plain_encoded = both(session())
    small = session({"cpu": 1 << 34, "cuda": TINY_BUDGET})
    image, encoded = both(small)
    for kind in (ControlNet, ClipVision):
        [entry] = [e for e in small.executor.cache.entries.values()
                   if e.outputs and isinstance(e.outputs[0], kind)]
        assert entry.sequential is not None and is_sequentially_offloaded(entry.outputs[0].model)
        assert compute_device(entry.outputs[0].model).type == "cuda"
    assert _max_diff(image, plain_image) <= TOL
    assert _max_diff(encoded.image_embeds, plain_encoded.image_embeds) <= TOL
