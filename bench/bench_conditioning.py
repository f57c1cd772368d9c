"""Each image- or space-conditioned technique's step time ÷ its diffusers pipeline's on the
same work, measured side by side (interleaved) in one process on tiny models.

Same clock and rules as ``bench_techniques.py`` (its harness runs these cases): the time
between the first and the last step callback, so encoding, depth estimation, VAE work
and set-up are excluded on both sides.

    .venv/bin/python bench/bench_conditioning.py [--size 128] [--steps 10] [--repeats 5]
        [--only t2i_adapter instruct_pix2pix depth2img gligen multidiffusion]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import DDIMScheduler

from bench.bench_techniques import PROMPT, Case, Graph, StepClock, bench_picture, run

# --- Depth2Image: the tiny 5-channel model with the tiny DPT estimating the depth --------

DEPTH_CKPT = "steerflow-tiny-depth"
DEPTH_ESTIMATOR = "steerflow-tiny-dpt"
STRENGTH = 0.8


def install_depth(models: Path) -> None:
    from nodes.diffusion.tiny_depth import save_tiny_depth_model, save_tiny_estimator

    if not (models / "checkpoints" / DEPTH_CKPT / "model_index.json").is_file():
        save_tiny_depth_model(models / "checkpoints")
    if not (models / "depth" / DEPTH_ESTIMATOR / "config.json").is_file():
        save_tiny_estimator(models / "depth", "dpt")


def depth_graph(g: Graph) -> None:
    g["4"]["inputs"]["ckpt_name"] = DEPTH_CKPT
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "bench_picture.png"}}
    g["e"] = {"class_type": "DepthEstimatorLoader",
              "inputs": {"estimator_name": DEPTH_ESTIMATOR}}
    g["d"] = {"class_type": "Depth2ImageConditioning", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0],
        "depth_estimator": ["e", 0]}}
    g["3"]["inputs"].update(positive=["d", 0], negative=["d", 1], latent_image=["d", 2],
                            denoise=STRENGTH)


def depth_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    from PIL import Image

    image = Image.fromarray(bench_picture(common["height"], common["width"]))
    kwargs = {k: v for k, v in common.items() if k not in ("height", "width")}
    pipe(PROMPT, image=image, strength=STRENGTH, callback_on_step_end=clock.tick, **kwargs)


def depth_pipe(models: Path, parts: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionDepth2ImgPipeline
    from transformers import AutoImageProcessor, DPTForDepthEstimation

    from nodes.diffusion.loading import load_components

    c = load_components(models / "checkpoints" / DEPTH_CKPT)
    estimator = models / "depth" / DEPTH_ESTIMATOR
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=DDIMScheduler.from_config(c.scheduler_config),
        depth_estimator=DPTForDepthEstimation.from_pretrained(
            estimator, local_files_only=True).eval(),
        feature_extractor=AutoImageProcessor.from_pretrained(estimator, local_files_only=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- GLIGEN: two phrases in boxes on steerflow-tiny with the tiny GLIGEN's layers ---------

GLIGEN_FILE = "steerflow-tiny-gligen.safetensors"
GLIGEN_BETA = 0.3
GLIGEN_PHRASES = ["a red circle", "a blue square"]


def gligen_boxes(size: int) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) in pixels, multiples of 8, inside a ``size`` square."""
    e = size // 8
    return [(e, 2 * e, 3 * e, 4 * e), (5 * e, e, 2 * e, 2 * e)]


def install_gligen(models: Path) -> None:
    from nodes.diffusion.tiny_gligen import save_tiny_gligen

    if not (models / "gligen" / GLIGEN_FILE).is_file():
        save_tiny_gligen(models / "gligen")


def gligen_graph(g: Graph) -> None:
    size = g["5"]["inputs"]["width"]
    g["gl"] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": GLIGEN_FILE}}
    positive = ["6", 0]
    for i, (phrase, (x, y, w, h)) in enumerate(zip(GLIGEN_PHRASES, gligen_boxes(size),
                                                   strict=True)):
        g[f"box{i}"] = {"class_type": "GLIGENTextBoxApply", "inputs": {
            "conditioning_to": positive, "clip": ["4", 1], "gligen_textbox_model": ["gl", 0],
            "text": phrase, "x": x, "y": y, "width": w, "height": h,
            "gligen_scheduled_sampling_beta": GLIGEN_BETA}}
        positive = [f"box{i}", 0]
    g["3"]["inputs"]["positive"] = positive


def gligen_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    size = common["width"]
    boxes = [[x / size, y / size, (x + w) / size, (y + h) / size]
             for x, y, w, h in gligen_boxes(size)]
    pipe(PROMPT, gligen_phrases=GLIGEN_PHRASES, gligen_boxes=boxes,
         gligen_scheduled_sampling_beta=GLIGEN_BETA, callback=clock.tick, callback_steps=1,
         **common)


def gligen_pipe(models: Path, parts: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionGLIGENPipeline

    from nodes.diffusion.tiny_gligen import build_tiny_gligen_unet

    pipe = StableDiffusionGLIGENPipeline(**{**parts, "unet": build_tiny_gligen_unet()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- T2I-Adapter: the tiny full adapter on the bench picture --------------------------------

def install_adapter(models: Path) -> None:
    from nodes.diffusion.tiny_adapter import TINY_ADAPTER_NAME, save_tiny_adapter

    if not (models / "controlnet" / TINY_ADAPTER_NAME / "config.json").is_file():
        save_tiny_adapter(models / "controlnet")


def adapter_graph(g: Graph) -> None:
    from nodes.diffusion.tiny_adapter import TINY_ADAPTER_NAME

    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "bench_picture.png"}}
    g["12"] = {"class_type": "ControlNetLoader",
               "inputs": {"control_net_name": TINY_ADAPTER_NAME}}
    g["13"] = {"class_type": "T2IAdapterApply", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "adapter": ["12", 0], "image": ["10", 0]}}
    g["3"]["inputs"].update(positive=["13", 0], negative=["13", 1])


def adapter_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    from PIL import Image

    image = Image.fromarray(bench_picture(common["height"], common["width"]))
    pipe(PROMPT, image=image, callback=clock.tick, callback_steps=1, **common)


def adapter_pipe(models: Path, parts: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionAdapterPipeline

    from nodes.diffusion.tiny_adapter import build_tiny_adapter

    pipe = StableDiffusionAdapterPipeline(**parts, adapter=build_tiny_adapter())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- Instruct Pix2Pix: the tiny 8-channel model editing the bench picture ------------------

IP2P_CKPT = "steerflow-tiny-ip2p"
IP2P_IMAGE_CFG = 1.5


def install_ip2p(models: Path) -> None:
    from nodes.diffusion.tiny_ip2p import save_tiny_ip2p_model

    if not (models / "checkpoints" / IP2P_CKPT / "model_index.json").is_file():
        save_tiny_ip2p_model(models / "checkpoints")


def ip2p_graph(g: Graph) -> None:
    g["4"]["inputs"]["ckpt_name"] = IP2P_CKPT
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "bench_picture.png"}}
    g["12"] = {"class_type": "InstructPixToPixConditioning", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0],
        "image_cfg": IP2P_IMAGE_CFG}}
    del g["5"]
    g["3"]["inputs"].update(positive=["12", 0], negative=["12", 1], latent_image=["12", 2])


def ip2p_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    from PIL import Image

    image = Image.fromarray(bench_picture(common["height"], common["width"]))
    kwargs = {k: v for k, v in common.items() if k not in ("height", "width")}
    pipe(PROMPT, image=image, image_guidance_scale=IP2P_IMAGE_CFG,
         callback_on_step_end=clock.tick, **kwargs)


def ip2p_pipe(models: Path, parts: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from nodes.diffusion.loading import load_components

    c = load_components(models / "checkpoints" / IP2P_CKPT)
    pipe = StableDiffusionInstructPix2PixPipeline(
        **{**parts, "vae": c.vae, "text_encoder": c.text_encoder, "unet": c.unet})
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- MultiDiffusion panorama: a latent twice as wide as high, in windows ------------------

PANORAMA_WINDOW = 8  # the tiny model's native latent size (unet.config.sample_size)
PANORAMA_STRIDE = 4


def panorama_graph(g: Graph) -> None:
    g["5"]["inputs"]["width"] = 2 * g["5"]["inputs"]["width"]
    g["p"] = {"class_type": "MultiDiffusionPanorama", "inputs": {
        "model": ["4", 0], "window_size": 0, "stride": PANORAMA_STRIDE,
        "circular_padding": False, "view_batch_size": 1, "view_weights": "uniform"}}
    g["3"]["inputs"]["model"] = ["p", 0]


def panorama_reference(pipe: Any, common: dict[str, Any], clock: StepClock) -> Any:
    pipe(PROMPT, **{**common, "width": 2 * common["width"]}, view_batch_size=1,
         callback_on_step_end=clock.tick)


def panorama_pipe(models_dir: Path, parts: dict[str, Any]) -> Any:
    """StableDiffusionPanoramaPipeline on the shared tiny parts (DDIM), windows of
    ``PANORAMA_WINDOW`` latent pixels every ``PANORAMA_STRIDE``."""
    from diffusers.pipelines.deprecated.stable_diffusion_panorama import (
        StableDiffusionPanoramaPipeline,
    )

    pipe = StableDiffusionPanoramaPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)

    def views(height: int, width: int, window_size: int = 64, stride: int = 8,
              circular_padding: bool = False) -> list[tuple[int, int, int, int]]:
        return StableDiffusionPanoramaPipeline.get_views(
            pipe, height, width, PANORAMA_WINDOW, PANORAMA_STRIDE, circular_padding)

    pipe.get_views = views
    return pipe


CASES: list[Case] = [
    Case("t2i_adapter", "StableDiffusionAdapterPipeline (full adapter)", adapter_graph,
         adapter_reference, install_adapter, adapter_pipe),
    Case("instruct_pix2pix", "StableDiffusionInstructPix2PixPipeline (image_cfg 1.5)",
         ip2p_graph, ip2p_reference, install_ip2p, ip2p_pipe),
    Case("depth2img", "StableDiffusionDepth2ImgPipeline (strength 0.8, DPT estimator)",
         depth_graph, depth_reference, install_depth, depth_pipe),
    Case("gligen", "StableDiffusionGLIGENPipeline (2 boxes, beta 0.3)", gligen_graph,
         gligen_reference, install_gligen, gligen_pipe),
    Case("multidiffusion", f"StableDiffusionPanoramaPipeline (size x 2·size, window "
         f"{PANORAMA_WINDOW}, stride {PANORAMA_STRIDE})", panorama_graph, panorama_reference,
         make_pipe=panorama_pipe),
]

if __name__ == "__main__":
    run(CASES, __doc__.split("\n")[0])
