"""unCLIP (Stable unCLIP, SD 2.1 unCLIP): image-variation conditioning from CLIP image
embeddings, under ComfyUI's node ids (unCLIPCheckpointLoader, unCLIPConditioning).

The usual graph: unCLIPCheckpointLoader → its CLIP_VISION into CLIP Vision Encode (the
source image) → unCLIPConditioning on the positive prompt → KSampler with the loader's
MODEL. The math is diffusers' ``StableUnCLIPImg2ImgPipeline`` (see
:mod:`nodes.diffusion.unclip`).
"""

from __future__ import annotations

from dataclasses import replace

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.clip_vision import ClipVision, ClipVisionOutput
from nodes.diffusion.handles import Conditioning, DiffusionModel, TextEncoder, Vae
from nodes.models import CheckpointFileNode, list_checkpoints


class UnCLIPCheckpointLoader(CheckpointFileNode):
    """Load an unCLIP checkpoint (e.g. SD 2.1 unCLIP) for image variations: MODEL, CLIP,
    VAE and its own CLIP_VISION image encoder.

    Give it a diffusers ``StableUnCLIPImg2ImgPipeline`` folder in models/checkpoints
    (unet, vae, text_encoder, image_encoder, image_normalizer, image_noising_scheduler);
    single ``.safetensors``/``.ckpt`` unCLIP files are not supported yet. Encode the
    source image with this CLIP_VISION (CLIP Vision Encode), never another CLIP: the
    UNet reads exactly this encoder's embeddings. The MODEL also samples without unCLIP
    conditioning (image embedding zeros, an unconditioned variation).
    """

    TYPE = "unCLIPCheckpointLoader"
    DISPLAY_NAME = "unCLIP Checkpoint Loader"
    CATEGORY = "loaders"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("VAE"), Output("CLIP_VISION"))

    ckpt_name: str = Input(..., choices=list_checkpoints,
                           description="A diffusers StableUnCLIPImg2ImgPipeline folder in "
                                       "models/checkpoints")


    def execute(self, ctx: ExecutionContext
                ) -> tuple[DiffusionModel, TextEncoder, Vae, ClipVision]:
        from nodes.diffusion.clip_vision import load_clip_vision
        from nodes.diffusion.loading import load_components
        from nodes.diffusion.memory import device_budget
        from nodes.diffusion.precision import dtype_from_name
        from nodes.diffusion.preview import link_vae
        from nodes.diffusion.unclip import (
            UnclipExtension,
            check_unclip_folder,
            image_processor_stats,
            load_unclip_parts,
        )

        path = ctx.env.resolve("models", "checkpoints", self.ckpt_name)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {self.ckpt_name!r} not found in models/checkpoints")
        check_unclip_folder(path)  # before any weight is read
        dtype = dtype_from_name("default", ctx.env.options)
        allow_pickle = ctx.env.allow_pickle
        budget = device_budget(ctx)
        loaded = load_components(path, allow_pickle=allow_pickle, device=ctx.device,
                                 dtype=dtype, budget=budget)
        parts = load_unclip_parts(path, allow_pickle=allow_pickle)
        clip_vision = load_clip_vision(path / "image_encoder", allow_pickle=allow_pickle,
                                       dtype=dtype, device=ctx.device, budget=budget,
                                       name=f"{self.ckpt_name}/image_encoder")
        stats = image_processor_stats(path)
        if stats is not None:  # the pipeline's own preprocessing constants
            clip_vision = replace(clip_vision, image_mean=stats[0], image_std=stats[1])
        link_vae(loaded.unet, loaded.vae)  # live previews fit their colour map to this VAE
        model = DiffusionModel(loaded.unet, dict(loaded.scheduler_config), loaded.family,
                               extensions=(UnclipExtension(parts),),
                               latent_scale=float(loaded.vae.config.scaling_factor))
        return (model,
                TextEncoder(loaded.text_encoder, loaded.tokenizer, loaded.family),
                Vae(loaded.vae),
                clip_vision)


class UnCLIPConditioning(Node):
    """Condition a prompt on a CLIP image embedding for an unCLIP model: the sampled
    image becomes a variation of the encoded one (diffusers' StableUnCLIPImg2ImgPipeline).

    Wire ``clip_vision_output`` from CLIP Vision Encode with the CLIP_VISION of
    unCLIPCheckpointLoader and apply it to the positive prompt only (the negative then
    gets zeros, as the pipeline's unconditional half). ``noise_augmentation`` (0..1, the
    pipeline's ``noise_level`` / 999) noises the embedding first: higher values keep less
    of the image and give the prompt more say (0 to 0.3 are typical). ``strength`` scales
    the embedding's effect; chain several of these nodes to mix images: their vectors add
    up (each times its strength), so keep the strengths summing to about 1.

    On SDXL this is Revision (as in ComfyUI): encode the image with CLIP-G's vision model
    (``clip_vision_g``, CLIP Vision Loader) and the prompt's pooled output becomes the
    image embedding times ``strength``; pair it with a Conditioning Zero Out text prompt
    for the image alone, or keep the text for a mix.
    """

    TYPE = "unCLIPConditioning"
    DISPLAY_NAME = "unCLIP Conditioning"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING")
    clip_vision_output: ClipVisionOutput = Input(type="CLIP_VISION_OUTPUT")
    strength: float = Input(1.0, min=-10.0, max=10.0, step=0.01,
                            description="Weight of this image's embedding (0: no effect)")
    noise_augmentation: float = Input(0.0, min=0.0, max=1.0, step=0.01,
                                      description="Noise on the embedding: 0 follows the "
                                                  "image closely, higher varies it more")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.diffusion.unclip import OPTION, UnclipCondition, UnclipExtension

        embeds = self.clip_vision_output.image_embeds
        if embeds.ndim != 2 or embeds.shape[0] == 0:
            raise ValueError("unCLIP Conditioning: clip_vision_output has no image embeddings "
                             f"[B, D] (got shape {tuple(embeds.shape)})")
        if self.strength == 0:
            return (self.conditioning,)
        cond = UnclipCondition(embeds.detach(), float(self.strength),
                               float(self.noise_augmentation))
        check = UnclipExtension()  # no parts: only checks the MODEL is an unCLIP one
        return (Conditioning(tuple(
            replace(entry, options={
                **entry.options,
                OPTION: (*entry.options.get(OPTION, ()), cond),
                "extensions": (*entry.options.get("extensions", ()), check)})
            for entry in self.conditioning.entries)),)


NODE_CLASSES = (UnCLIPCheckpointLoader, UnCLIPConditioning)
