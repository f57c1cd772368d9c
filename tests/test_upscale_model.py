"""Load Upscale Model + Upscale Image (using Model): spandrel without torchvision, a tiny
ESRGAN built with spandrel's own class, ComfyUI's tiling, pickles, errors."""

from __future__ import annotations

import importlib.util
import itertools
import uuid

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine import PromptValidationError
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

NAME = "tiny-esrgan-x2.safetensors"
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def tiny_esrgan(scale: int = 2, seed: int = 0) -> torch.nn.Module:
    """A random ESRGAN (old-arch RRDBNet) from spandrel's own class, in eval mode."""
    from nodes.diffusion.upscale_model import spandrel_api

    spandrel_api()  # first: imports spandrel's package, with or without torchvision
    from spandrel.architectures.ESRGAN import ESRGAN
    torch.manual_seed(seed)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    with torch.no_grad():  # random init is tiny; make the output vary visibly
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale")
    models = root / "models" / "upscale_models"
    models.mkdir(parents=True)
    model = tiny_esrgan()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(models / NAME))
    torch.save(model.state_dict(), models / "tiny-esrgan-x2.pth")
    (root / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (27, 45, 3), dtype=np.uint8)).save(
        root / "input" / "noise.png")
    return root


def make_session(root, allow_pickle=False):
    from engine.session import Session

    return Session(root, models_dir=root / "models", device="cpu", allow_pickle=allow_pickle,
                   registry=registry_with_capture())


@pytest.fixture(scope="module")
def session(folders):
    return make_session(folders)


def upscale_prompt(model_name=NAME, image="noise.png", key=None):
    return {
        "1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "ImageUpscaleWithModel",
              "inputs": {"upscale_model": ["1", 0], "image": ["2", 0]}},
        "10": {"class_type": "TestCapture",
               "inputs": {"value": ["3", 0], "key": key or uuid.uuid4().hex}},
    }


def loaded_image(root) -> torch.Tensor:
    pixels = np.asarray(Image.open(root / "input" / "noise.png").convert("RGB"))
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)[None]


def comfy_tiled_scale(samples, function, tile, overlap, scale, out_channels=3):
    """ComfyUI's ``tiled_scale_multidim`` for 2-D images, written out independently."""
    out = torch.zeros(samples.shape[0], out_channels, samples.shape[2] * scale,
                      samples.shape[3] * scale)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if s.shape[2] <= tile and s.shape[3] <= tile:
            out[b:b + 1] = function(s)
            continue
        acc = torch.zeros_like(out[b:b + 1])
        div = torch.zeros_like(out[b:b + 1])
        positions = [range(0, n - overlap, tile - overlap) if n > tile else [0]
                     for n in s.shape[2:]]
        for it in itertools.product(*positions):
            s_in, up = s, []
            for d in range(2):
                pos = max(0, min(s.shape[d + 2] - overlap, it[d]))
                length = min(tile, s.shape[d + 2] - pos)
                s_in = s_in.narrow(d + 2, pos, length)
                up.append(round(pos * scale))
            ps = function(s_in)
            mask = torch.ones_like(ps)
            feather = round(overlap * scale)
            for d in (2, 3):
                if feather >= mask.shape[d]:
                    continue
                for t in range(feather):
                    a = (t + 1) / feather
                    mask.narrow(d, t, 1).mul_(a)
                    mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
            o = acc.narrow(2, up[0], mask.shape[2]).narrow(3, up[1], mask.shape[3])
            od = div.narrow(2, up[0], mask.shape[2]).narrow(3, up[1], mask.shape[3])
            o.add_(ps * mask)
            od.add_(mask)
        out[b:b + 1] = acc / div.clamp(min=1e-8)
    return out


def test_spandrel_imports_without_torchvision():
    import sys

    from nodes.diffusion.upscale_model import spandrel_api

    api = spandrel_api()
    assert "ESRGAN" in api.registry and "SwinIR" in api.registry and "Compact" in api.registry
    if not HAS_TORCHVISION:
        assert "torchvision" not in sys.modules
        assert set(api.unavailable) == {"LaMa", "RestoreFormer"}
        assert len(api.registry) >= 40
        import spandrel  # what a custom node would do: the public types are there

        assert spandrel.ImageModelDescriptor is api.image_descriptor


def test_graph_equals_the_model_on_the_whole_image(session, folders):
    prompt = upscale_prompt()
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    out = CAPTURED.pop(prompt["10"]["inputs"]["key"])
    image = loaded_image(folders)
    assert out.shape == (1, 54, 90, 3)  # non-square, x2
    with torch.no_grad():
        reference = tiny_esrgan()(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.equal(out, reference)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.05  # not a constant picture
    progress = [d for n, d in result.events if n == "progress" and d["node"] == "3"]
    assert [(d["value"], d["max"]) for d in progress] == [(1, 1)]


@pytest.mark.parametrize(("height", "width", "tile", "overlap"),
                         [(45, 70, 32, 8), (33, 20, 16, 4), (40, 40, 40, 8)])
def test_tiles_follow_comfyui_tiling_math(height, width, tile, overlap):
    from nodes.diffusion.upscale_model import tiled_scale, tiled_steps

    model = tiny_esrgan()
    torch.manual_seed(1)
    image = torch.rand(2, 3, height, width)
    with torch.no_grad():
        expected = comfy_tiled_scale(image, lambda x: model(x).clamp(0, 1), tile, overlap, 2)
        calls = []
        got = tiled_scale(image, lambda x: model(x).clamp(0, 1), 2, 3, tile, overlap,
                          on_tile=lambda: calls.append(1))
    assert got.shape == (2, 3, height * 2, width * 2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert len(calls) == 2 * tiled_steps(height, width, tile, overlap)
    if max(height, width) > tile:  # seams blended: near the whole-image result, not equal
        with torch.no_grad():
            whole = model(image).clamp(0, 1)
        assert not torch.equal(got, whole)
        assert float((got - whole).abs().mean()) < 0.05


def test_node_tiles_with_progress_per_tile_and_interrupts(folders, monkeypatch):
    from nodes.diffusion import upscale_model as um

    monkeypatch.setattr(um, "DEFAULT_TILE", 16)
    monkeypatch.setattr(um, "DEFAULT_OVERLAP", 4)
    session = make_session(folders)
    prompt = upscale_prompt()
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    out = CAPTURED.pop(prompt["10"]["inputs"]["key"])
    image = loaded_image(folders).movedim(-1, 1)
    model = tiny_esrgan()
    with torch.no_grad():
        expected = comfy_tiled_scale(image, lambda x: model(x).clamp(0, 1), 16, 4, 2)
    torch.testing.assert_close(out, expected.movedim(1, -1), rtol=0, atol=1e-6)
    steps = um.tiled_steps(27, 45, 16, 4)
    progress = [(d["value"], d["max"]) for n, d in result.events
                if n == "progress" and d["node"] == "3"]
    assert progress == [(i, steps) for i in range(1, steps + 1)]

    seen = []
    fresh = make_session(folders)  # nothing cached

    def on_event(name, data):
        if name == "progress" and data.get("node") == "3":
            seen.append(data["value"])
            if len(seen) == 2:
                fresh.executor.interrupt()

    assert fresh.run(upscale_prompt(), on_event=on_event).run.status == "interrupted"
    assert seen == [1, 2]


def test_out_of_memory_halves_the_tile():
    from nodes.diffusion.upscale_model import tiled_scale, upscale_image

    model = tiny_esrgan()

    class Descriptor:
        scale, input_channels, output_channels = 2, 3, 3

        def __init__(self):
            self.model = model
            self.sizes = []

        def __call__(self, x):
            self.sizes.append(max(x.shape[-2:]))
            if max(x.shape[-2:]) > 160:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return model(x).clamp_(0, 1)

    descriptor = Descriptor()
    image = torch.rand(1, 200, 150, 3)
    out = upscale_image(descriptor, image, tile=512, overlap=32)
    assert descriptor.sizes[0] == 200 and max(descriptor.sizes[2:]) <= 128  # 512, 256, 128
    with torch.no_grad():
        expected = tiled_scale(image.movedim(-1, 1), lambda x: model(x).clamp(0, 1), 2, 3,
                               128, 32)
    torch.testing.assert_close(out, expected.movedim(1, -1), rtol=0, atol=1e-6)

    descriptor.__class__.__call__ = lambda self, x: (_ for _ in ()).throw(
        torch.OutOfMemoryError("simulated"))
    with pytest.raises(torch.OutOfMemoryError):  # below 128 it gives up, as ComfyUI
        upscale_image(descriptor, image)


def test_pickles_are_refused_unless_allowed(folders):
    session = make_session(folders)
    with pytest.raises(PromptValidationError) as info:
        session.run(upscale_prompt("tiny-esrgan-x2.pth"))
    assert "pickle" in str(info.value)
    allowed = make_session(folders, allow_pickle=True)
    prompt = upscale_prompt("tiny-esrgan-x2.pth")
    result = allowed.run(prompt)
    assert result.ok, result.run.error
    image = loaded_image(folders).movedim(-1, 1)
    with torch.no_grad():
        reference = tiny_esrgan()(image).clamp(0, 1).movedim(1, -1)
    assert torch.equal(CAPTURED.pop(prompt["10"]["inputs"]["key"]), reference)


def test_unknown_and_torchvision_architectures_say_why(folders, tmp_path):
    from nodes.diffusion.upscale_model import (
        UnsupportedUpscaleModelError,
        descriptor_from_state_dict,
    )

    with pytest.raises(UnsupportedUpscaleModelError, match="not a model spandrel"):
        descriptor_from_state_dict({"foo.weight": torch.zeros(3)}, "foo.safetensors")
    if not HAS_TORCHVISION:
        lama = {"model.model.1.bn_l.running_mean": torch.zeros(4)}
        with pytest.raises(UnsupportedUpscaleModelError, match=r"LaMa.*torchvision"):
            descriptor_from_state_dict(lama, "big-lama.safetensors")
    save_file({"foo.weight": torch.zeros(3)},
              str(folders / "models" / "upscale_models" / "junk.safetensors"))
    message = run_error(make_session(folders), upscale_prompt("junk.safetensors"))
    assert "junk.safetensors is not a model spandrel" in message


def test_wrong_input_is_a_clear_error(session):
    prompt = upscale_prompt()
    prompt["3"]["inputs"]["upscale_model"] = ["2", 0]  # an IMAGE, not an UPSCALE_MODEL
    with pytest.raises(PromptValidationError):
        session.run(prompt)


def test_shipped_example_is_exactly_bilinear_and_matches_its_recipe():
    from pathlib import Path

    import torch.nn.functional as F
    from safetensors.torch import load_file

    from nodes.diffusion.upscale_model import load_upscale_model, upscale_image
    from training.upscaler_x2 import OUT, bilinear_state_dict

    assert OUT.is_relative_to(Path(__file__).resolve().parents[1] / "workflows" / "assets")
    shipped = load_file(str(OUT))
    recipe = bilinear_state_dict()
    assert shipped.keys() == recipe.keys()
    assert all(torch.equal(shipped[k].float(), recipe[k]) for k in recipe)
    descriptor = load_upscale_model(OUT)
    assert (descriptor.architecture.id, descriptor.scale) == ("Compact", 2)
    x = torch.rand(2, 19, 33, 3)
    out = upscale_image(descriptor, x)
    want = F.interpolate(x.movedim(-1, 1), scale_factor=2, mode="bilinear",
                         align_corners=False).movedim(1, -1)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


def test_style_model_loader_is_defined_and_refuses_a_non_style_file(folders):
    folder = folders / "models" / "style_models"
    folder.mkdir(exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(folder / "redux.safetensors"))
    session = make_session(folders)
    assert session.registry.get("StyleModelLoader").OUTPUTS[0].type == "STYLE_MODEL"
    prompt = {
        "1": {"class_type": "StyleModelLoader",
              "inputs": {"style_model_name": "redux.safetensors"}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["1", 0], "key": "style"}},
    }
    assert "redux.safetensors is not a style model" in run_error(session, prompt)
    prompt["1"]["inputs"]["style_model_name"] = "missing.safetensors"
    with pytest.raises(PromptValidationError):
        session.run(prompt)


def test_the_cache_weighs_a_loaded_upscale_model_and_finds_it_to_offload(folders):
    """A spandrel descriptor is neither a container nor a dataclass: registered members
    let the cache count its weights and the mover find its module."""
    from engine.nbytes import value_nbytes
    from nodes.diffusion.memory import modules_on
    from nodes.diffusion.upscale_model import load_upscale_model

    descriptor = load_upscale_model(folders / "models" / "upscale_models" / NAME)
    model = descriptor.model
    weights = sum(t.numel() * t.element_size()
                  for t in itertools.chain(model.parameters(), model.buffers()))
    assert weights > 0
    assert value_nbytes((descriptor,)) == {"cpu": weights}
    assert modules_on({"upscale": descriptor}, "cpu") == [descriptor.model]
