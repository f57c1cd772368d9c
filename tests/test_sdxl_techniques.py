"""Existing techniques on SDXL equal diffusers' SDXL pipelines (tiny random weights).

ControlNet-SDXL vs ``StableDiffusionXLControlNetPipeline``, T2I-Adapter-SDXL vs
``StableDiffusionXLAdapterPipeline``, img2img vs ``StableDiffusionXLImg2ImgPipeline``,
inpainting vs ``StableDiffusionXLInpaintPipeline``; LoRA with kohya SDXL keys; non-square.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session
from nodes.diffusion.schedulers import SAMPLERS, SCHEDULES
from tests.graph_nodes import CAPTURED, registry_with_capture
from tests.test_controlnet import control_picture
from tests.test_sdxl import BASE, HEIGHT, NEGATIVE, PROMPT, WIDTH, txt2img_prompt

CONTROLNET = "steerflow-tiny-sdxl-controlnet"
ADAPTER = "steerflow-tiny-sdxl-adapter"
TOL = 1e-4


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory) -> Path:
    from nodes.diffusion.tiny_sdxl import ensure_tiny_sdxl, save_tiny_sdxl_control

    root = tmp_path_factory.mktemp("sdxl_models")
    ensure_tiny_sdxl(root)
    save_tiny_sdxl_control(root / "controlnet")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("sdxl_home")
    (home / "input").mkdir()
    control_picture((WIDTH, HEIGHT), 0).save(home / "input" / "control.png")
    return home


@pytest.fixture(scope="module")
def session(sdxl_models, home):
    return Session(home, models_dir=sdxl_models, device="cpu", registry=registry_with_capture())


@pytest.fixture(scope="module")
def base(sdxl_models):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        sdxl_models / "checkpoints" / BASE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scheduler(base, sampler: str, schedule: str = "normal"):
    class_name, extra = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(
        base.scheduler.config, **extra, **SCHEDULES[schedule])


def graph_image(session, prompt) -> np.ndarray:
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()


def generator(seed: int = 3) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


# --- ControlNet ---------------------------------------------------------------------------------

def controlnet_prompt(net: str, *, sampler="euler", strength=1.0, start=0.0, end=1.0,
                      guess=False, steps=5) -> dict:
    prompt = txt2img_prompt(BASE, sampler, "normal", steps=steps)
    prompt["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": net}}
    prompt["21"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
    prompt["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["20", 0],
        "image": ["21", 0], "strength": strength, "start_percent": start,
        "end_percent": end, "guess_mode": guess}}
    prompt["3"]["inputs"]["positive"] = ["22", 0]
    prompt["3"]["inputs"]["negative"] = ["22", 1]
    return prompt


@pytest.mark.parametrize(("net", "sampler", "strength", "start", "end", "guess"), [
    (CONTROLNET, "euler", 1.0, 0.0, 1.0, False),
    (f"{CONTROLNET}.safetensors", "dpmpp_2m", 0.7, 0.2, 0.8, False),
    (CONTROLNET, "euler", 1.3, 0.0, 1.0, True),
])
def test_controlnet_matches_sdxl_controlnet_pipeline(session, base, sdxl_models, home, net,
                                                     sampler, strength, start, end, guess):
    ours = graph_image(session, controlnet_prompt(net, sampler=sampler, strength=strength,
                                                  start=start, end=end, guess=guess))
    controlnet = diffusers.ControlNetModel.from_pretrained(
        sdxl_models / "controlnet" / CONTROLNET, local_files_only=True).eval()
    pipe = diffusers.StableDiffusionXLControlNetPipeline(
        **{k: v for k, v in base.components.items() if k != "scheduler"},
        controlnet=controlnet, scheduler=scheduler(base, sampler))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=Image.open(home / "input" / "control.png"),
               num_inference_steps=5, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               controlnet_conditioning_scale=strength, control_guidance_start=start,
               control_guidance_end=end, guess_mode=guess, output_type="np",
               generator=generator()).images
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    plain = graph_image(session, txt2img_prompt(BASE, sampler, "normal"))
    assert np.abs(ours - plain).max() > 1e-3  # the ControlNet acts
    assert np.abs(ours - ref).max() <= TOL


# --- LoRA ---------------------------------------------------------------------------------------

RANK, ALPHA = 4, 2.0


def _lora_targets(module: torch.nn.Module, part: str) -> list[str]:
    return [n for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and part in n]


def write_sdxl_loras(base, folder: Path) -> tuple[Path, Path]:
    """The same random LoRA (UNet attention, both text encoders' attention and MLP) as a
    kohya SDXL file (SGM block names, alpha) and as a diffusers/PEFT file."""
    from safetensors.torch import save_file

    from nodes.diffusion.lora import _original_unet_names

    original = {v: k for k, v in _original_unet_names(base.unet).items()}
    gen = torch.Generator().manual_seed(5)
    kohya, peft = {}, {}
    for component, root, part in (("unet", base.unet, "attentions"),
                                  ("text_encoder", base.text_encoder, "layers"),
                                  ("text_encoder_2", base.text_encoder_2, "layers")):
        for name in _lora_targets(root, part):
            weight = root.get_submodule(name).weight
            down = torch.randn(RANK, weight.shape[1], generator=gen) * 0.3
            up = torch.randn(weight.shape[0], RANK, generator=gen) * 0.3
            flat = {"unet": "lora_unet_" + original.get(name, name).replace(".", "_"),
                    "text_encoder": "lora_te1_" + name.replace(".", "_"),
                    "text_encoder_2": "lora_te2_" + name.replace(".", "_")}[component]
            kohya.update({f"{flat}.lora_down.weight": down, f"{flat}.lora_up.weight": up,
                          f"{flat}.alpha": torch.tensor(ALPHA)})
            # PEFT without metadata: alpha = rank, so fold ALPHA / RANK into up
            peft.update({f"{component}.{name}.lora_A.weight": down,
                         f"{component}.{name}.lora_B.weight": up * (ALPHA / RANK)})
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in kohya)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(kohya, str(folder / "sdxl_kohya.safetensors"))
    save_file(peft, str(folder / "sdxl_peft.safetensors"))
    return folder / "sdxl_kohya.safetensors", folder / "sdxl_peft.safetensors"


@pytest.fixture(scope="module")
def sdxl_loras(sdxl_models, base) -> tuple[Path, Path]:
    return write_sdxl_loras(base, sdxl_models / "loras")


@pytest.mark.parametrize("lora", ["sdxl_kohya.safetensors", "sdxl_peft.safetensors"])
def test_lora_matches_load_lora_weights(session, sdxl_models, sdxl_loras, lora):
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt["30"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": lora, "strength_model": 0.8,
        "strength_clip": 0.8}}
    prompt["3"]["inputs"]["model"] = ["30", 0]
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["30", 1]
    ours = graph_image(session, prompt)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
        sdxl_models / "checkpoints" / BASE, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(sdxl_models / "loras"), weight_name=lora, adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[0.8])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=5, guidance_scale=5.0,
               height=HEIGHT, width=WIDTH, output_type="np", generator=generator()).images
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal"))
    assert np.abs(ours - plain).max() > 1e-3  # the LoRA acts
    assert np.abs(ours - ref).max() <= TOL


def test_lora_text_encoder_2_layers_reach_big_g(session, sdxl_models, sdxl_loras):
    """Guards the parity test: the bigG part alone changes the image."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(sdxl_loras[0]))
    save_file({k: v for k, v in state.items() if k.startswith("lora_te2_")},
              str(sdxl_models / "loras" / "sdxl_te2_only.safetensors"))
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt["30"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": "sdxl_te2_only.safetensors",
        "strength_model": 1.0, "strength_clip": 1.0}}
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["30", 1]
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal"))
    assert np.abs(graph_image(session, prompt) - plain).max() > 1e-3


# --- img2img and inpainting ---------------------------------------------------------------------

def picture() -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / np.array([[HEIGHT - 1], [WIDTH - 1]])[:, :, None]
    arr = np.stack([x, y, 1 - x * y], axis=-1)
    arr[(x - 0.3) ** 2 + (y - 0.35) ** 2 < 0.04] = (0.9, 0.1, 0.1)
    return (arr * 255).round().astype(np.uint8)


def box_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    mask[8:40, 40:88] = 1.0
    return mask


@pytest.fixture(scope="module")
def pictures(home) -> Path:
    Image.fromarray(picture()).save(home / "input" / "picture.png")
    Image.fromarray((box_mask() * 255).astype(np.uint8)).save(home / "input" / "mask.png")
    return home


@torch.no_grad()
def image_latents(vae) -> torch.Tensor:
    x = torch.from_numpy(picture().astype(np.float32) / 255.0)[None].permute(0, 3, 1, 2)
    return vae.encode(x * 2 - 1).latent_dist.mode() * vae.config.scaling_factor


def img2img_prompt(sampler: str, denoise: float, mask: bool = False) -> dict:
    prompt = txt2img_prompt(BASE, sampler, "normal", steps=8)
    prompt["40"] = {"class_type": "LoadImage", "inputs": {"image": "picture.png"}}
    prompt["41"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["40", 0], "vae": ["4", 2]}}
    latent = ["41", 0]
    if mask:
        prompt["42"] = {"class_type": "LoadImageMask",
                        "inputs": {"image": "mask.png", "channel": "red"}}
        prompt["43"] = {"class_type": "SetLatentNoiseMask",
                        "inputs": {"samples": latent, "mask": ["42", 0]}}
        latent = ["43", 0]
    prompt["3"]["inputs"].update(latent_image=latent, denoise=denoise)
    return prompt


@pytest.mark.parametrize(("sampler", "strength"), [("euler", 0.6), ("dpmpp_2m", 0.3)])
def test_img2img_matches_sdxl_img2img_pipeline(session, base, pictures, sampler, strength):
    ours = graph_image(session, img2img_prompt(sampler, strength))
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        **{k: v for k, v in base.components.items() if k != "scheduler"},
        scheduler=scheduler(base, sampler))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=image_latents(base.vae),
               strength=strength, num_inference_steps=8, guidance_scale=5.0,
               output_type="np", generator=generator()).images
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize(("sampler", "strength"), [("euler", 1.0), ("euler", 0.7)])
def test_noise_mask_matches_sdxl_inpaint_pipeline(session, base, pictures, sampler, strength):
    """SetLatentNoiseMask on the 4-channel base equals StableDiffusionXLInpaintPipeline with
    a 4-channel UNet (the mask blends the re-noised image back in at every step)."""
    ours = graph_image(session, img2img_prompt(sampler, strength, mask=True))
    pipe = diffusers.StableDiffusionXLInpaintPipeline(
        **{k: v for k, v in base.components.items() if k != "scheduler"},
        scheduler=scheduler(base, sampler))
    pipe.set_progress_bar_config(disable=True)
    latents = image_latents(base.vae)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=latents,
               mask_image=torch.from_numpy(box_mask())[None, None], masked_image_latents=latents,
               height=HEIGHT, width=WIDTH, strength=strength, num_inference_steps=8,
               guidance_scale=5.0, output_type="np", generator=generator()).images
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(ours - ref).max() <= TOL


# --- T2I-Adapter --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "strength", "end"), [
    (ADAPTER, 1.0, 1.0), (f"{ADAPTER}.safetensors", 0.8, 0.6)])
def test_t2i_adapter_matches_sdxl_adapter_pipeline(session, base, sdxl_models, home, name,
                                                   strength, end):
    """ControlNetApplyAdvanced with an SDXL T2I-Adapter (full_adapter_xl) equals
    StableDiffusionXLAdapterPipeline (end_percent = adapter_conditioning_factor)."""
    ours = graph_image(session, controlnet_prompt(name, strength=strength, end=end))
    adapter = diffusers.T2IAdapter.from_pretrained(
        sdxl_models / "controlnet" / ADAPTER, local_files_only=True).eval()
    pipe = diffusers.StableDiffusionXLAdapterPipeline(
        **{k: v for k, v in base.components.items() if k != "scheduler"},
        adapter=adapter, scheduler=scheduler(base, "euler"))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, image=Image.open(home / "input" / "control.png"),
               num_inference_steps=5, guidance_scale=5.0, height=HEIGHT, width=WIDTH,
               adapter_conditioning_scale=strength, adapter_conditioning_factor=end,
               output_type="np", generator=generator()).images
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal"))
    assert np.abs(ours - plain).max() > 1e-3  # the adapter acts
    assert np.abs(ours - ref).max() <= TOL


# --- the example workflow -----------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "workflows" / "sdxl_controlnet.json"


def test_example_workflow_runs_on_tiny_stand_ins(sdxl_models, tmp_path):
    """workflows/sdxl_controlnet.json as shipped, with tiny weights under the real names."""
    import shutil

    from engine.session import Workflow

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "controlnet").mkdir()
    shutil.copy(sdxl_models / "checkpoints" / f"{BASE}.safetensors",
                models / "checkpoints" / "sd_xl_base_1.0.safetensors")
    shutil.copy(sdxl_models / "controlnet" / f"{CONTROLNET}.safetensors",
                models / "controlnet" / "controlnet-canny-sdxl-1.0.safetensors")
    (tmp_path / "home" / "input").mkdir(parents=True)
    shutil.copy(EXAMPLE.parent / "assets" / "controlnet_control.png",
                tmp_path / "home" / "input" / "controlnet_control.png")
    session = Session(tmp_path / "home", models_dir=models, device="cpu")
    wf = Workflow.load(EXAMPLE)
    for node, value in (("5.width", 96), ("5.height", 64), ("3.steps", 3)):
        wf.set(node, value)
    result = session.run(wf)
    assert result.ok, result.run.error
    assert [p.suffix for p in result.image_paths] == [".png"]


def test_example_workflow_without_weights_names_the_missing_models(tmp_path):
    from engine.session import Workflow
    from engine.validation import PromptValidationError

    session = Session(tmp_path, models_dir=tmp_path / "models", device="cpu")
    with pytest.raises(PromptValidationError) as info:
        session.validate(Workflow.load(EXAMPLE))
    issues = [i for i in info.value.issues if i.severity == "error"]
    assert {(i.kind, i.input_name) for i in issues} >= {("not_in_choices", "ckpt_name"),
                                                        ("not_in_choices", "control_net_name")}
    where = {i.input_name: i.message.rpartition("(looked in ")[2] for i in issues}
    assert where["ckpt_name"] == "models/checkpoints/)"
    assert where["control_net_name"] == "models/controlnet/)"


# --- techniques without an SDXL pipeline in diffusers: they run, with the added conditioning ----

def _with_sega(prompt: dict, clip: list, sampler: str = "3") -> None:
    prompt["50"] = {"class_type": "SEGAConcept", "inputs": {
        "clip": clip, "text": "a blue square", "direction": "add", "scale": 10.0,
        "warmup_steps": 1, "cooldown_steps": 10000, "threshold": 0.5, "weight": 1.0}}
    prompt["51"] = {"class_type": "ApplySEGA", "inputs": {
        "model": prompt[sampler]["inputs"]["model"], "concepts": ["50", 0],
        "momentum_scale": 0.1, "momentum_beta": 0.4}}
    prompt[sampler]["inputs"]["model"] = ["51", 0]


def _with_fabric(prompt: dict, clip: list) -> None:
    prompt["52"] = {"class_type": "LoadImage", "inputs": {"image": "picture.png"}}
    prompt["53"] = {"class_type": "FABRICFeedback", "inputs": {
        "model": prompt["3"]["inputs"]["model"], "clip": clip, "vae": ["4", 2],
        "liked": ["52", 0], "feedback_start_ratio": 0.0, "feedback_end_ratio": 1.0}}
    prompt["3"]["inputs"]["model"] = ["53", 0]


def _with_attend_excite(prompt: dict, clip: list) -> None:
    prompt["6"] = {"class_type": "AttendAndExcite", "inputs": {
        "clip": clip, "text": PROMPT, "words": "circle", "max_iter_to_alter": 2,
        "thresholds": "0:0.99", "scale_factor": 20.0, "attn_res": 0,
        "max_refinement_steps": 2, "normalize_eot": False}}


@pytest.mark.parametrize("technique", ["sega", "fabric", "attend_excite"])
def test_techniques_with_their_own_prompts_or_passes_run_on_sdxl(session, pictures, technique):
    """SEGA encodes its concepts with both encoders (80 wide on the tiny SDXL), FABRIC's and
    Attend-and-Excite's own UNet passes get the pooled and size rows."""
    plain = graph_image(session, txt2img_prompt(BASE, "euler", "normal", steps=3))
    prompt = txt2img_prompt(BASE, "euler", "normal", steps=3)
    {"sega": _with_sega, "fabric": _with_fabric,
     "attend_excite": _with_attend_excite}[technique](prompt, ["4", 1])
    image = graph_image(session, prompt)
    assert np.isfinite(image).all() and np.abs(image - plain).max() > 1e-4


def test_diffedit_mask_runs_on_sdxl(session, pictures):
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt["12"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
        **prompt["6"]["inputs"], "text_g": "a blue square", "text_l": "a blue square"}}
    prompt["40"] = {"class_type": "LoadImage", "inputs": {"image": "picture.png"}}
    prompt["60"] = {"class_type": "DiffEditMask", "inputs": {
        "model": ["4", 0], "vae": ["4", 2], "image": ["40", 0], "source": ["6", 0],
        "target": ["12", 0], "negative": ["7", 0], "seed": 0, "steps": 10, "cfg": 5.0,
        "num_maps_per_mask": 2, "mask_encode_strength": 0.5, "mask_thresholding_ratio": 3.0}}
    prompt["10"]["inputs"]["value"] = ["60", 0]
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    for node in ("3", "8"):
        del prompt[node]
    result = session.run(prompt)
    assert result.ok, result.run.error
    mask = CAPTURED.pop(key)
    assert tuple(mask.shape) == (1, HEIGHT, WIDTH) and 0 < float(mask.mean()) < 1


def test_sega_on_the_refiner_encodes_with_big_g(session, sdxl_models):
    """Nodes that encode text themselves take the refiner's CLIP (bigG only, 48 wide)."""
    from tests.test_sdxl import REFINER, refiner_prompt

    plain = graph_image(session, refiner_prompt(BASE, REFINER, steps=4, switch=2))
    prompt = refiner_prompt(BASE, REFINER, steps=4, switch=2)
    _with_sega(prompt, ["2", 1], sampler="9")  # the refiner's sampler and CLIP
    assert np.abs(graph_image(session, prompt) - plain).max() > 1e-5


def test_prompt_weights_act_on_both_encoders(sdxl_models):
    """``(word:1.5)`` changes CLIP-L's columns and bigG's (ComfyUI weights each encoder)."""
    from nodes.diffusion.handles import TextEncoder
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.sdxl import encode_sdxl
    from nodes.diffusion.tiny_sdxl import CLIP_L_WIDTH

    loaded = load_components(sdxl_models / "checkpoints" / BASE)
    clip = TextEncoder(loaded.text_encoder, loaded.tokenizer, "sdxl",
                       text_encoder_2=loaded.text_encoder_2, tokenizer_2=loaded.tokenizer_2)
    plain, pooled = encode_sdxl(clip, "a red circle")
    weighted, weighted_pooled = encode_sdxl(clip, "a (red:1.5) circle")
    diff = (weighted - plain).abs()
    assert float(diff[..., :CLIP_L_WIDTH].max()) > 1e-3
    assert float(diff[..., CLIP_L_WIDTH:].max()) > 1e-3
    assert torch.equal(pooled, weighted_pooled)  # ComfyUI: the pooled output is unweighted


# --- hooks and NAG on SDXL ----------------------------------------------------------------------

def test_hooks_and_bypass_loras_equal_load_lora_on_sdxl(session, sdxl_loras):
    """Set CLIP Hooks (both encoders) with the hooks on every prompt, and Load LoRA
    (Bypass), each equal Load LoRA on SDXL (pooled outputs and size conditioning ride
    along with the hooked rows)."""
    lora = "sdxl_kohya.safetensors"
    merged = txt2img_prompt(BASE, "euler", "normal")
    merged["30"] = {"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": lora, "strength_model": 0.8,
        "strength_clip": 0.8}}
    merged["3"]["inputs"]["model"] = ["30", 0]
    merged["6"]["inputs"]["clip"] = merged["7"]["inputs"]["clip"] = ["30", 1]
    want = graph_image(session, merged)
    bypass = json.loads(json.dumps(merged))
    bypass["30"]["class_type"] = "LoraLoaderBypass"
    assert np.abs(graph_image(session, bypass) - want).max() <= 1e-4
    hooked = txt2img_prompt(BASE, "euler", "normal")
    hooked["31"] = {"class_type": "CreateHookLora", "inputs": {
        "lora_name": lora, "strength_model": 0.8, "strength_clip": 0.8}}
    hooked["32"] = {"class_type": "SetClipHooks", "inputs": {
        "clip": ["4", 1], "apply_to_conds": True, "schedule_clip": False, "hooks": ["31", 0]}}
    hooked["6"]["inputs"]["clip"] = hooked["7"]["inputs"]["clip"] = ["32", 0]
    assert np.abs(graph_image(session, hooked) - want).max() <= 1e-4


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_nag_runs_on_sdxl(session, cfg):
    prompt = txt2img_prompt(BASE, "euler", "normal")
    prompt["3"]["inputs"]["cfg"] = cfg
    plain = graph_image(session, json.loads(json.dumps(prompt)))
    prompt["33"] = {"class_type": "NAGuidance", "inputs": {
        "model": ["4", 0], "nag_scale": 5.0, "nag_alpha": 0.5, "nag_tau": 1.5}}
    prompt["3"]["inputs"]["model"] = ["33", 0]
    image = graph_image(session, prompt)
    assert np.isfinite(image).all() and np.abs(image - plain).max() > 1e-4
