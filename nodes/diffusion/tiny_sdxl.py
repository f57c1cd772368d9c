"""Tiny, randomly initialised SDXL base and refiner models for tests and offline demos.

The real diffusers/transformers classes (two text encoders, the text-time added
embedding, per-level transformer depths) with small sizes; CLIP-L is 32 wide and bigG
48 wide so any mix-up of the two shows. Weights depend only on the seed. Images are
noise.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    T2IAdapter,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from nodes.diffusion.loading import FAMILY_CONFIG_DIRS, family_configs
from nodes.diffusion.sdxl_loading import save_original_sdxl_checkpoint
from nodes.diffusion.tiny import TEXT_CONFIG, VAE_CONFIG, _seeded, ensure_built
from nodes.diffusion.tokenizer import load_clip_tokenizer

TINY_SDXL_NAME = "steerflow-tiny-sdxl"
TINY_REFINER_NAME = "steerflow-tiny-sdxl-refiner"

CLIP_L_WIDTH = 32
BIG_G_WIDTH = 48
TIME_EMBED_DIM = 8

#: bigG: OpenCLIP's plain GELU, with a projection (the pooled output)
BIG_G_CONFIG: dict[str, object] = {
    **TEXT_CONFIG, "hidden_size": BIG_G_WIDTH, "intermediate_size": 96,
    "num_attention_heads": 4, "num_hidden_layers": 3, "projection_dim": BIG_G_WIDTH,
    "hidden_act": "gelu",
}

_UNET_COMMON: dict[str, object] = {
    "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (32, 64), "norm_num_groups": 32,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4), "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": TIME_EMBED_DIM,
}
UNET_CONFIG: dict[str, object] = {
    **_UNET_COMMON, "transformer_layers_per_block": (1, 2),
    "cross_attention_dim": CLIP_L_WIDTH + BIG_G_WIDTH,
    "projection_class_embeddings_input_dim": BIG_G_WIDTH + 6 * TIME_EMBED_DIM,
}
REFINER_UNET_CONFIG: dict[str, object] = {
    **_UNET_COMMON, "transformer_layers_per_block": 2, "cross_attention_dim": BIG_G_WIDTH,
    "projection_class_embeddings_input_dim": BIG_G_WIDTH + 5 * TIME_EMBED_DIM,
}
#: SDXL's VAE scaling factor on the tiny SD VAE (8x downscale)
SDXL_VAE_CONFIG: dict[str, object] = {**VAE_CONFIG, "scaling_factor": 0.13025}


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(family_configs("sdxl")["scheduler"])


def build_tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """The tiny SDXL base pipeline on CPU in float32; same seed, same weights."""
    unet = _seeded(seed, lambda: UNet2DConditionModel(**UNET_CONFIG))
    vae = _seeded(seed + 1, lambda: AutoencoderKL(**SDXL_VAE_CONFIG))
    text_encoder = _seeded(seed + 2, lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)))
    text_encoder_2 = _seeded(seed + 3, lambda: CLIPTextModelWithProjection(
        CLIPTextConfig(**BIG_G_CONFIG)))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=load_clip_tokenizer(FAMILY_CONFIG_DIRS["sdxl"] / "tokenizer"),
        tokenizer_2=load_clip_tokenizer(FAMILY_CONFIG_DIRS["sdxl"] / "tokenizer_2"),
        unet=unet, scheduler=_scheduler())


def build_tiny_sdxl_refiner(seed: int = 0) -> StableDiffusionXLImg2ImgPipeline:
    """The tiny SDXL refiner (bigG and VAE shared with the base of the same seed, as the
    real refiner shares the base's VAE and bigG)."""
    base = build_tiny_sdxl_pipeline(seed)
    unet = _seeded(seed + 10, lambda: UNet2DConditionModel(**REFINER_UNET_CONFIG)).eval()
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=_scheduler(),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)


def save_tiny_sdxl(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SDXL base as a diffusers folder and an original-layout single file."""
    return _save(build_tiny_sdxl_pipeline(seed), Path(target_dir), TINY_SDXL_NAME)


def save_tiny_sdxl_refiner(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SDXL refiner as a diffusers folder and an original-layout single file."""
    return _save(build_tiny_sdxl_refiner(seed), Path(target_dir), TINY_REFINER_NAME)


def _save(pipe: StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline, target: Path,
          name: str) -> dict[str, Path]:
    target.mkdir(parents=True, exist_ok=True)
    folder, single = target / name, target / f"{name}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    save_original_sdxl_checkpoint(
        single, unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder,
        text_encoder_2=pipe.text_encoder_2, scheduler_config=dict(pipe.scheduler.config))
    return {"diffusers": folder, "single_file": single}


def ensure_tiny_sdxl(models_dir: Path) -> tuple[Path, Path]:
    """Make sure the tiny SDXL base and refiner exist in ``models_dir/checkpoints`` (both
    formats); returns their folders."""
    base = ensure_built(models_dir, "checkpoints", TINY_SDXL_NAME, "model_index.json",
                        save_tiny_sdxl)
    refiner = ensure_built(models_dir, "checkpoints", TINY_REFINER_NAME, "model_index.json",
                           save_tiny_sdxl_refiner)
    return base, refiner


# --- ControlNet and T2I-Adapter for the tiny SDXL base -------------------------------------------

TINY_SDXL_CONTROLNET_NAME = "steerflow-tiny-sdxl-controlnet"
TINY_SDXL_ADAPTER_NAME = "steerflow-tiny-sdxl-adapter"


def build_tiny_sdxl_controlnet(seed: int = 0) -> ControlNetModel:
    """A ControlNet for the tiny SDXL base (``from_unet``: text-time added embedding and
    all), its zero convolutions re-initialised so it has an effect; 8x hint encoder."""
    from nodes.diffusion.tiny_controlnet import HINT_CHANNELS

    unet = _seeded(seed + 20, lambda: UNet2DConditionModel(**UNET_CONFIG))

    def build() -> ControlNetModel:
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
        for conv in (*net.controlnet_down_blocks, net.controlnet_mid_block,
                     net.controlnet_cond_embedding.conv_out):
            conv.reset_parameters()
        return net

    return _seeded(seed + 21, build).eval()


def build_tiny_sdxl_adapter(seed: int = 0) -> T2IAdapter:
    """A ``full_adapter_xl`` T2I-Adapter whose features fit the tiny SDXL UNet's two down
    blocks (as SDXL's: the first feature at half the latent size)."""
    return _seeded(seed + 22, lambda: T2IAdapter(
        in_channels=3, channels=[32, 64], num_res_blocks=2, downscale_factor=16,
        adapter_type="full_adapter_xl")).eval()


def save_tiny_sdxl_control(target_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny SDXL ControlNet and T2I-Adapter, each as a diffusers folder and an
    original-layout single file (``<name>`` and ``<name>.safetensors``)."""
    from nodes.diffusion.controlnet_loading import save_original_adapter, save_original_controlnet

    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    net, adapter = build_tiny_sdxl_controlnet(seed), build_tiny_sdxl_adapter(seed)
    net.save_pretrained(target / TINY_SDXL_CONTROLNET_NAME, safe_serialization=True)
    save_original_controlnet(target / f"{TINY_SDXL_CONTROLNET_NAME}.safetensors", net)
    adapter.save_pretrained(target / TINY_SDXL_ADAPTER_NAME, safe_serialization=True)
    save_original_adapter(target / f"{TINY_SDXL_ADAPTER_NAME}.safetensors", adapter)
    return {"controlnet": target / TINY_SDXL_CONTROLNET_NAME,
            "adapter": target / TINY_SDXL_ADAPTER_NAME}
