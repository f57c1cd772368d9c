"""T2I-Adapters through the graph equal diffusers' StableDiffusionAdapterPipeline."""

from __future__ import annotations

import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.original_layout import CONFIG_METADATA_KEY
from nodes.diffusion.schedulers import SAMPLERS
from nodes.diffusion.tiny_adapter import (
    TINY_ADAPTER_NAME,
    TINY_LIGHT_ADAPTER_NAME,
    build_tiny_adapter,
    save_tiny_adapter,
)
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
STEPS = 6
TOL = 1e-4
NAMES = {"full": TINY_ADAPTER_NAME, "light": TINY_LIGHT_ADAPTER_NAME}
KINDS = {"full": "full_adapter", "light": "light_adapter"}


def control_picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A blocky random RGB picture (structure at several scales, like an edge map)."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
    arr = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    arr[rng.random((h, w)) < 0.1] = 255
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def adapter_paths(models_dir) -> dict[str, dict[str, Path]]:
    """The tiny full and light adapters (seed 0 in models/controlnet, seed 1 under
    controlnet/seed1), each as a diffusers folder and an original-layout single file."""
    target = models_dir / "controlnet"
    paths = {}
    for kind, adapter_type in KINDS.items():
        paths[kind] = save_tiny_adapter(target, adapter_type)
        paths[f"{kind}1"] = save_tiny_adapter(target / "seed1", adapter_type, seed=1)
    return paths


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "input").mkdir()
    control_picture((64, 64), 0).save(home / "input" / "control_a.png")
    control_picture((64, 64), 1).save(home / "input" / "control_b.png")
    control_picture((72, 40), 2).save(home / "input" / "control_odd.png")  # resized
    return home


@pytest.fixture(scope="module")
def session(models_dir, controlnet_paths, adapter_paths, home):
    return Session(home, models_dir=models_dir, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def base_pipe(tiny_model_paths):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_reference(kind: str, adapter_paths) -> diffusers.T2IAdapter:
    return diffusers.T2IAdapter.from_pretrained(adapter_paths[kind]["diffusers"],
                                                local_files_only=True).eval()


@contextmanager
def conditioning_factor(unet, steps: int, factor: float):
    """diffusers' SD 1.x adapter pipeline has no ``adapter_conditioning_factor``; apply its
    SDXL pipeline's rule (features only while ``i < int(steps * factor)``) by dropping them
    from the UNet calls after that."""
    calls = []
    forward = unet.forward

    def wrapped(*args, **kwargs):
        if len(calls) >= int(steps * factor):
            kwargs["down_intrablock_additional_residuals"] = None
        calls.append(1)
        return forward(*args, **kwargs)

    unet.forward = wrapped
    try:
        yield
    finally:
        del unet.forward


def reference_image(base, adapter, image, *, sampler="ddim", seed=7, factor=1.0, cfg=7.5,
                    width=64, height=64, **kwargs) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe = diffusers.StableDiffusionAdapterPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        adapter=adapter, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
        scheduler=getattr(diffusers, class_name).from_config(base.scheduler.config, **extra))
    pipe.set_progress_bar_config(disable=True)
    with conditioning_factor(base.unet, STEPS, factor):
        out = pipe(PROMPT, negative_prompt=NEGATIVE, image=image, num_inference_steps=STEPS,
                   guidance_scale=cfg, height=height, width=width, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
    return out.images


def graph_prompt(adapters: list[dict], *, sampler="ddim", seed=7, cfg=7.5, width=64,
                 height=64, batch=1, comfy=False, controlnet=False, sag=False,
                 sega=False) -> dict:
    """txt2img on the tiny model with one Apply T2I-Adapter per entry of ``adapters`` (or,
    ``comfy``, ComfyUI's Apply ControlNet with strength = scale and end = factor), chained;
    optionally the tiny ControlNet, SAG and SEGA in the same run."""
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": width, "height": height, "batch_size": batch}},
    }
    pos, neg, model = ["pos", 0], ["neg", 0], ["ckpt", 0]
    for i, a in enumerate(adapters):
        prompt[f"ad{i}"] = {"class_type": "ControlNetLoader",
                            "inputs": {"control_net_name": a["name"]}}
        prompt[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": a["image"]}}
        common = {"positive": pos, "negative": neg, "image": [f"img{i}", 0]}
        if comfy:
            prompt[f"apply{i}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
                **common, "control_net": [f"ad{i}", 0], "strength": a.get("scale", 1.0),
                "start_percent": 0.0, "end_percent": a.get("factor", 1.0)}}
        else:
            prompt[f"apply{i}"] = {"class_type": "T2IAdapterApply", "inputs": {
                **common, "adapter": [f"ad{i}", 0],
                "adapter_conditioning_scale": a.get("scale", 1.0),
                "adapter_conditioning_factor": a.get("factor", 1.0)}}
        pos, neg = [f"apply{i}", 0], [f"apply{i}", 1]
    if controlnet:
        prompt["cn"] = {"class_type": "ControlNetLoader",
                        "inputs": {"control_net_name": "steerflow-tiny-controlnet"}}
        prompt["cnimg"] = {"class_type": "LoadImage", "inputs": {"image": "control_b.png"}}
        prompt["cnapply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": pos, "negative": neg, "control_net": ["cn", 0],
            "image": ["cnimg", 0], "strength": 0.8}}
        pos, neg = ["cnapply", 0], ["cnapply", 1]
    if sag:
        prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                         "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
        model = ["sag", 0]
    if sega:
        prompt["concept"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["ckpt", 1], "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["sega"] = {"class_type": "ApplySEGA",
                          "inputs": {"model": model, "concepts": ["concept", 0]}}
        model = ["sega", 0]
    prompt["sample"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": cfg, "sampler_name": sampler,
        "scheduler": "normal", "positive": pos, "negative": neg,
        "latent_image": ["latent", 0], "denoise": 1.0}}
    prompt["decode"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    prompt["capture"] = {"class_type": "TestCapture", "inputs": {"value": ["decode", 0]}}
    return prompt


def graph_image(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex  # a fresh key so the capture node runs again
    prompt["capture"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()



def file_name(kind: str, single: bool) -> str:
    return f"{NAMES[kind]}.safetensors" if single else NAMES[kind]


# --- parity with the pipeline ----------------------------------------------------------------

@pytest.mark.parametrize(("kind", "single", "sampler", "scale", "factor", "cfg", "size", "image"), [
    ("full", False, "ddim", 1.0, 1.0, 7.5, (64, 64), "control_a.png"),
    ("light", True, "euler", 0.8, 0.5, 7.5, (64, 64), "control_a.png"),
    ("full", True, "dpmpp_2m", 1.2, 0.7, 7.5, (80, 48), "control_odd.png"),
    ("light", False, "ddim", 1.0, 1.0, 1.0, (80, 48), "control_odd.png"),
])
def test_one_adapter_matches_pipeline(session, base_pipe, adapter_paths, home, kind, single,
                                      sampler, scale, factor, cfg, size, image):
    width, height = size
    spec = {"name": file_name(kind, single), "image": image, "scale": scale, "factor": factor}
    ours = graph_image(session, graph_prompt([spec], sampler=sampler, cfg=cfg, width=width,
                                             height=height))
    # The pipeline resizes a PIL control image of another size with Lanczos; so do we.
    ref = reference_image(base_pipe, load_reference(kind, adapter_paths),
                          Image.open(home / "input" / image), sampler=sampler, factor=factor,
                          cfg=cfg, width=width, height=height,
                          adapter_conditioning_scale=scale)
    assert ours.shape == ref.shape == (1, height, width, 3)
    assert np.abs(ours - ref).max() <= TOL
    plain = graph_image(session, graph_prompt([], sampler=sampler, cfg=cfg, width=width,
                                              height=height))
    assert np.abs(ours - plain).max() > 1e-2  # the adapter does something


@pytest.mark.parametrize(("kind", "factor"), [("full", 1.0), ("light", 0.5)])
def test_several_adapters_match_multiadapter(session, base_pipe, adapter_paths, home, kind,
                                             factor):
    specs = [{"name": file_name(kind, False), "image": "control_a.png", "scale": 0.7,
              "factor": factor},
             {"name": f"seed1/{file_name(kind, True)}", "image": "control_b.png",
              "scale": 0.4, "factor": factor}]
    ours = graph_image(session, graph_prompt(specs))
    multi = diffusers.MultiAdapter([load_reference(kind, adapter_paths),
                                    load_reference(f"{kind}1", adapter_paths)])
    images = [Image.open(home / "input" / s["image"]) for s in specs]
    ref = reference_image(base_pipe, multi, images, factor=factor,
                          adapter_conditioning_scale=[0.7, 0.4])
    assert np.abs(ours - ref).max() <= TOL
    first_only = graph_image(session, graph_prompt(specs[:1]))
    assert np.abs(ours - first_only).max() > 1e-3


def test_batch_of_two_matches_pipeline(session, base_pipe, adapter_paths, home):
    prompt = graph_prompt([{"name": NAMES["full"], "image": "control_a.png"}], batch=2)
    ours = graph_image(session, prompt)
    ref = reference_image(base_pipe, load_reference("full", adapter_paths),
                          Image.open(home / "input" / "control_a.png"), num_images_per_prompt=2)
    assert ours.shape == ref.shape == (2, 64, 64, 3)
    assert np.abs(ours - ref).max() <= TOL


def test_conditioning_factor_limits_the_steps(session):
    def image(factor: float, scale: float = 1.0) -> np.ndarray:
        return graph_image(session, graph_prompt([{"name": NAMES["full"], "image": "control_a.png",
                                                   "scale": scale, "factor": factor}]))

    full, half, plain = image(1.0), image(0.5), graph_image(session, graph_prompt([]))
    assert np.abs(full - half).max() > 1e-3 and np.abs(half - plain).max() > 1e-3
    assert np.array_equal(image(0.0), plain) and np.array_equal(image(1.0, 0.0), plain)


@pytest.mark.parametrize("kind", ["full", "light"])
def test_single_file_equals_diffusers_folder(session, kind):
    a = graph_image(session, graph_prompt([{"name": file_name(kind, False),
                                            "image": "control_a.png", "factor": 0.5}]))
    b = graph_image(session, graph_prompt([{"name": file_name(kind, True),
                                            "image": "control_a.png", "factor": 0.5}]))
    assert np.array_equal(a, b)


def test_comfyui_apply_controlnet_equals_the_adapter_node(session):
    specs = [{"name": NAMES["full"], "image": "control_a.png", "scale": 0.8, "factor": 0.5},
             {"name": NAMES["light"], "image": "control_b.png", "scale": 0.6, "factor": 1.0}]
    dedicated = graph_image(session, graph_prompt(specs))
    comfy = graph_image(session, graph_prompt(specs, comfy=True))
    assert np.array_equal(dedicated, comfy)


def test_old_apply_node_steers_the_positive_half_only(session):
    prompt = graph_prompt([])
    prompt["ad"] = {"class_type": "ControlNetLoader",
                    "inputs": {"control_net_name": NAMES["full"]}}
    prompt["img"] = {"class_type": "LoadImage", "inputs": {"image": "control_a.png"}}
    prompt["apply"] = {"class_type": "ControlNetApply", "inputs": {
        "conditioning": ["pos", 0], "control_net": ["ad", 0], "image": ["img", 0],
        "strength": 1.0}}
    prompt["sample"]["inputs"]["positive"] = ["apply", 0]
    old = graph_image(session, prompt)
    both = graph_image(session, graph_prompt([{"name": NAMES["full"], "image": "control_a.png"}]))
    plain = graph_image(session, graph_prompt([]))
    assert np.abs(old - plain).max() > 1e-3 and np.abs(old - both).max() > 1e-3


# --- with other techniques -------------------------------------------------------------------

def test_adapter_controlnet_sag_and_sega_each_act_in_one_run(session):
    adapter = [{"name": NAMES["full"], "image": "control_a.png", "scale": 0.8}]
    every = {"controlnet": True, "sag": True, "sega": True}
    out = graph_image(session, graph_prompt(adapter, **every))
    assert np.isfinite(out).all()
    without_adapter = graph_image(session, graph_prompt([], **every))
    assert np.abs(out - without_adapter).max() > 1e-3, "adapter"
    for technique in every:
        without = graph_image(session, graph_prompt(adapter, **{**every, technique: False}))
        assert np.abs(out - without).max() > 1e-3, technique


# --- bad input -------------------------------------------------------------------------------

def test_control_image_batch_must_be_one_or_the_latent_batch(session):
    prompt = graph_prompt([{"name": NAMES["full"], "image": "control_a.png"}], batch=3)
    # a 2-image IMAGE: two decoded latents
    prompt["two"] = {"class_type": "EmptyLatentImage",
                     "inputs": {"width": 64, "height": 64, "batch_size": 2}}
    prompt["twoimg"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["two", 0], "vae": ["ckpt", 2]}}
    prompt["apply0"]["inputs"]["image"] = ["twoimg", 0]
    message = run_error(session, prompt)
    assert "control image batch (2) must be 1 or match the latent batch (3)" in message


def test_adapter_that_does_not_fit_the_model_is_refused(session, models_dir):
    narrow = build_tiny_adapter(channels=(16, 32))
    folder = models_dir / "controlnet" / "narrow-adapter"
    narrow.save_pretrained(folder)
    try:
        message = run_error(session, graph_prompt([{"name": "narrow-adapter",
                                                    "image": "control_a.png"}]))
        assert "does not fit this model" in message and "(32, 8, 8)" in message
    finally:
        shutil.rmtree(folder)


def test_controlnet_given_to_the_adapter_node_is_refused(session):
    prompt = graph_prompt([{"name": "steerflow-tiny-controlnet", "image": "control_a.png"}])
    message = run_error(session, prompt)
    assert "is a ControlNet, not a T2I-Adapter" in message


def test_guess_mode_with_an_adapter_is_refused(session):
    prompt = graph_prompt([{"name": NAMES["full"], "image": "control_a.png"}], comfy=True)
    prompt["apply0"]["inputs"]["guess_mode"] = True
    assert "guess_mode is a ControlNet option" in run_error(session, prompt)


def test_pickle_adapter_refused_unless_opted_in(session, models_dir, adapter_paths, home):
    single = adapter_paths["full"]["single_file"]
    with safe_open(str(single), "pt") as fh:
        config = fh.metadata()[CONFIG_METADATA_KEY]
    pickled = models_dir / "controlnet" / "pickled-adapter.pth"
    torch.save({**load_file(single), CONFIG_METADATA_KEY: config}, pickled)
    try:
        prompt = graph_prompt([{"name": "pickled-adapter.pth", "image": "control_a.png"}])
        with pytest.raises(PromptValidationError, match=r"pickled-adapter\.pth is a pickle"):
            session.run(prompt)
        opted = Session(home, models_dir=models_dir, device="cpu", allow_pickle=True,
                        registry=registry_with_capture())
        expected = graph_image(session, graph_prompt([{"name": NAMES["full"],
                                                       "image": "control_a.png"}]))
        assert np.array_equal(graph_image(opted, prompt), expected)
    finally:
        pickled.unlink()


# --- loading ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["full", "light"])
def test_files_without_metadata_get_their_config_from_the_shapes(adapter_paths, tmp_path, kind):
    from nodes.diffusion.controlnet_loading import load_control_model

    reference = load_reference(kind, adapter_paths)
    keys = ("in_channels", "channels", "num_res_blocks", "downscale_factor", "adapter_type")
    original = load_file(adapter_paths[kind]["single_file"])  # TencentARC's layout
    diffusers_layout = {k: v.contiguous() for k, v in reference.state_dict().items()}
    for tensors in (original, diffusers_layout):
        save_file(tensors, str(tmp_path / "bare.safetensors"))  # no metadata
        loaded = load_control_model(tmp_path / "bare.safetensors")
        assert isinstance(loaded, diffusers.T2IAdapter)
        assert {k: loaded.config[k] for k in keys} == {k: reference.config[k] for k in keys}
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_sd_sized_original_layouts_map_onto_diffusers_configs():
    """Released SD 1.x full (channels 320-1280, 2 resnets) and light (4 resnets) adapters."""
    from accelerate import init_empty_weights

    from nodes.diffusion.controlnet_loading import adapter_from_state_dict, adapter_to_original

    for kind, blocks in (("full_adapter", 2), ("light_adapter", 4)):
        channels = [320, 640, 1280, 1280] if kind == "full_adapter" else [320, 640, 1280]
        with init_empty_weights():
            adapter = diffusers.T2IAdapter(in_channels=3, channels=channels,
                                           num_res_blocks=blocks, adapter_type=kind)
        original = adapter_to_original(adapter.state_dict(), dict(adapter.config))
        assert ("body.7.block2.weight" in original if kind == "full_adapter"
                else "body.3.body.3.block2.weight" in original)
        loaded = adapter_from_state_dict(original)
        keys = ("in_channels", "channels", "num_res_blocks", "downscale_factor", "adapter_type")
        assert {k: loaded.config[k] for k in keys} == {k: adapter.config[k] for k in keys}


def test_unsupported_adapter_files_say_why(adapter_paths, controlnet_paths):
    from nodes.diffusion.controlnet_loading import (
        adapter_from_state_dict,
        load_controlnet,
        load_t2i_adapter,
    )

    original = load_file(adapter_paths["full"]["single_file"])
    with pytest.raises(ValueError, match="variant diffusers cannot represent"):
        adapter_from_state_dict({**original, "body.2.skep.weight": torch.zeros(64, 32, 1, 1)})
    with pytest.raises(ValueError, match="style adapter"):
        adapter_from_state_dict({"backbone.0.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="is a T2I-Adapter, not a ControlNet"):
        load_controlnet(adapter_paths["light"]["single_file"])
    with pytest.raises(ValueError, match="is a ControlNet, not a T2I-Adapter"):
        load_t2i_adapter(controlnet_paths["single_file"])


# --- training ----------------------------------------------------------------------------------

def test_shapes_adapter_config_fits_the_shapes_unet_within_the_size_budget():
    from nodes.diffusion.t2i_adapter import Adapter, fitting_features
    from training.models import ModelConfigs, build_unet
    from training.train_t2i_adapter import adapter_config

    configs = ModelConfigs()
    adapter = diffusers.T2IAdapter(**adapter_config(configs))
    assert 2 * sum(p.numel() for p in adapter.parameters()) <= 2_000_000  # float16 bytes
    features = adapter(torch.zeros(1, 3, configs.image_size, configs.image_size))
    latent = configs.image_size // configs.downscale
    used = fitting_features(Adapter(adapter), features, build_unet(configs), latent, latent)
    assert [tuple(f.shape[1:]) for f in used] == [(32, 8, 8), (64, 8, 8), (96, 4, 4),
                                                  (96, 4, 4)]  # the last: the mid block's


def test_training_stage_exports_an_adapter_the_engine_runs(tmp_path):
    """A toy run (random VAE, text encoder and UNet) lowers the loss on a fixed batch; the
    export loads in both formats, ships, and the adapter IoU metric runs through the graph."""
    import copy

    from nodes.diffusion.controlnet_loading import load_control_model
    from tests.test_training import TOY
    from training.evaluate import EvalConfig, evaluate
    from training.export import export_model, ship_weights
    from training.loop import LoopConfig
    from training.models import build_noise_scheduler, build_text_encoder, build_unet, build_vae
    from training.shapes import ShapesDataset, collate
    from training.train import StageOptions, add_training_noise, diffusion_loss, load_unet, load_vae
    from training.train_t2i_adapter import (
        ADAPTER_NAME,
        adapter_residuals,
        control_images,
        train_t2i_adapter,
    )

    class FixedBatch(ShapesDataset):
        """Every step sees the same four samples."""

        def sample(self, index: int):  # type: ignore[no-untyped-def]
            return super().sample(index % 4)

        def caption(self, index: int, variant: int = 0) -> str:
            return super().caption(index % 4, 0)

    class Options(StageOptions):
        def dataset(self, **kwargs: object) -> ShapesDataset:
            return FixedBatch(seed=self.seed, size=self.configs.image_size, **kwargs)

    opts = Options(out_dir=tmp_path, models=TOY)
    torch.manual_seed(0)
    for stage, module in (("vae", build_vae(TOY)), ("text_encoder", build_text_encoder(TOY)),
                          ("unet", build_unet(TOY))):
        module.save_pretrained(opts.final(stage), safe_serialization=True)

    def train(steps: int) -> tuple:
        loop = LoopConfig(steps=steps, lr=1e-2, save_every=1000, progress=False,
                          lr_schedule="constant")
        return train_t2i_adapter(opts, loop, batch_size=4, latent_cache=8,
                                 timesteps="uniform")

    initial = copy.deepcopy(train(0)[0])  # the same seed: the start of the next run
    trained, result = train(20)
    assert len(result.losses) == 20 and np.isfinite(result.losses).all()
    vae, unet, scheduler = load_vae(opts), load_unet(opts), build_noise_scheduler()
    batch = collate([opts.dataset()[i] for i in range(4)])

    @torch.no_grad()
    def fixed_loss(adapter) -> float:  # the same noise and timesteps for both adapters
        with torch.random.fork_rng():
            torch.manual_seed(5)
            latents = vae.encode(batch["pixel_values"]).latent_dist.mean
            cond, context = control_images(batch["mask"][:, 0], 32), torch.zeros(4, 77, 16)
            losses = []
            for _ in range(8):
                noise, t, noisy = add_training_noise(latents, scheduler, "uniform")
                pred = unet(noisy, t, context, down_intrablock_additional_residuals=(
                    adapter_residuals(adapter, unet, cond, noisy))).sample
                losses.append(float(diffusion_loss(pred, noise, t, scheduler, 5.0)))
        return float(np.mean(losses))

    assert fixed_loss(trained) < 0.97 * fixed_loss(initial)
    paths = export_model(tmp_path)
    folder, single = (load_control_model(paths[k]) for k in ("adapter", "adapter_single_file"))
    assert folder.config.adapter_type == single.config.adapter_type == "full_adapter_xl"
    state = single.state_dict()
    assert all(torch.equal(state[k], v) for k, v in folder.state_dict().items())
    shipped = ship_weights(tmp_path / "export", tmp_path / "weights")
    assert f"{ADAPTER_NAME}.safetensors" in {p.name for p in shipped}
    # the adapter IoU metric, through the graph (ComfyUI's Apply ControlNet path)
    cfg = EvalConfig(samples=0, two_shape_samples=0, sega_samples=0, controlnet_samples=0,
                     adapter_samples=1, lora_samples=0, inversion_samples=0, steps=2,
                     image_size=32, progress=False)
    report = evaluate(tmp_path / "export", cfg)
    assert set(report.metrics) == {"adapter_iou", "adapter_iou_pixels"}
