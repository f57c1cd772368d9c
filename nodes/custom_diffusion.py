"""Train Custom Diffusion: teach a model a concept by tuning its cross-attention K/V and a
modifier token, in the graph that uses it.

The math lives in :mod:`nodes.diffusion.train_custom_diffusion` (diffusers'
``train_custom_diffusion.py``) and the shared loop :mod:`nodes.diffusion.train_common`.
Heavy imports happen inside ``execute``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, NodeResult, Output
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.train_preview import with_last_sample
from nodes.diffusion.train_textual_inversion import syntax_problem
from nodes.training import (
    LossMaskInputs,
    PriorPreservationInputs,
    TrainingNode,
    _checkpoint,
    _claim,
    _name_problem,
    _release,
    _sample,
    _save,
    check_training_inputs,
    save_name,
    training_captions,
    training_info,
)

if TYPE_CHECKING:
    pass

FREEZE_MODELS = ("crossattn_kv", "crossattn")  # the script's --freeze_model choices


class TrainCustomDiffusion(LossMaskInputs, PriorPreservationInputs, TrainingNode):
    """Custom Diffusion (Kumari et al. 2023): fine-tune only the UNet's cross-attention key
    and value projections, plus a new modifier token, on a few images of a concept
    (diffusers' train_custom_diffusion.py: AdamW, gradient norm clipped to 1, the first
    text token's key/value kept out of the gradient, only the modifier's embedding row
    learning).

    Wire Load Image Batch's IMAGE and captions with the checkpoint's MODEL, CLIP and VAE.
    Captions put the modifier before the category word: "photo of a <new1> dog" (one
    caption serves all images). The outputs are the MODEL with the K/V change attached
    as a patch (as Load LoRA gives it; the base model is untouched) and the CLIP that
    knows the modifier, so prompts downstream in the same graph can say "a <new1> dog
    on the beach". With ``save_name`` the K/V change goes to
    models/loras/<name>.safetensors (full-weight ``.diff`` keys, read by Load LoRA) and
    the modifier's vector to models/embeddings/<name>.safetensors (write
    ``embedding:<name>`` in place of the modifier), both with the base model's hash,
    the steps and the parameters in their metadata.

    Prior preservation (recommended for real concepts; as Train DreamBooth's): the base
    model first draws ``num_class_images`` images of ``class_prompt`` ("a dog") with the
    project's sampler (cached in temp/training, so a rerun does not draw them again);
    each step then also fits a class image to its prompt (``prior_loss_weight``, the
    script's 1.0), which keeps "dog" itself from drifting towards your dog.

    Using it well: the script's learning rate 1e-5 with batch 2 for about 250 steps
    (``scale_lr`` multiplies it by the batch size, and by 2 with prior preservation, as
    the script's --scale_lr; off by default as there); ``crossattn`` also tunes to_q and
    to_out (more capacity, more drift); the initializer is a rare single token (the
    paper's advice; the default "pll" is one of the script's). Images are scaled so
    their shorter side is ``resolution`` and centre-cropped; the script's random-scale
    augmentation (and its loss mask) is not applied, as its --noaug. The same inputs
    are never trained twice (cached); progress events carry the loss; Stop acts between
    steps and a rerun resumes. Cost: a forward and backward UNet pass per step (twice
    the batch with prior preservation); ``gradient_checkpointing`` saves memory for
    about a third more time.
    """

    TYPE = "TrainCustomDiffusion"
    DISPLAY_NAME = "Train Custom Diffusion"
    CATEGORY = "training"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("STRING", "lora_name"),
               Output("STRING", "embedding"))

    captions: str = Input("photo of a <new1> shape", multiline=True,
                          description="One caption per image, or one for all; each "
                          "contains the modifier token")
    modifier_token: str = Input("<new1>", description="The new word (not yet in the "
                                "tokenizer); empty: train K/V only")
    initializer_token: str = Input("pll", description="One rare vocabulary word the "
                                   "modifier's vector starts from")
    freeze_model: str = Input("crossattn_kv", choices=FREEZE_MODELS,
                              description="crossattn_kv: train to_k/to_v; crossattn: also "
                              "to_q/to_out")
    learning_rate: float = Input(1e-5, min=1e-7, max=1e-1, step=1e-6,
                                 description="AdamW learning rate (constant)")
    scale_lr: bool = Input(False, description="Multiply the learning rate by the batch size "
                           "(and 2 with prior preservation), as the script's --scale_lr")
    steps: int = Input(250, min=1, max=100_000, description="Optimiser steps")
    batch_size: int = Input(2, min=1, max=64, description="Images per step")
    gradient_checkpointing: bool = Input(False, description="Recompute UNet activations in "
                                         "the backward pass: less memory, slower")
    save_name: str = Input("", description="Also write models/loras/<name>.safetensors and "
                           "models/embeddings/<name>.safetensors (empty: do not save)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        name = inputs.get("save_name")
        if isinstance(name, str):
            for folder in ("loras", "embeddings"):
                if problem := _name_problem(name, folder, env):
                    problems.append(("save_name", problem))
                    break
        token = inputs.get("modifier_token")
        if isinstance(token, str) and token and (token != token.strip() or " " in token):
            problems.append(("modifier_token", "one word without spaces, e.g. <new1> (or "
                             "empty to train K/V only)"))
        elif isinstance(token, str) and token and (problem := syntax_problem(token,
                                                                            "modifier")):
            problems.append(("modifier_token", problem))
        init = inputs.get("initializer_token")
        if isinstance(token, str) and token.strip() and isinstance(init, str) \
                and not init.strip():
            problems.append(("initializer_token", "one rare vocabulary word, e.g. pll"))
        captions = inputs.get("captions")
        if isinstance(captions, str) and not captions.strip():
            problems.append(("captions", "write a caption (one for all images) or link Load "
                             "Image Batch's captions"))
        elif (isinstance(captions, str) and isinstance(token, str) and token.strip()
              and token not in captions):
            problems.append(("captions", f"the captions must contain the modifier token "
                             f"{token!r}, e.g. 'photo of a {token} dog'"))
        problems += cls.prior_problems(inputs, "modifier")
        return problems

    def execute(self, ctx: ExecutionContext
                ) -> tuple[DiffusionModel, TextEncoder, str, str] | NodeResult:
        from nodes.diffusion import train_common as tc
        from nodes.diffusion import train_custom_diffusion as tcd
        from nodes.diffusion.prior_preservation import class_images

        check_training_inputs(self)
        captions = training_captions(ctx, self)
        with_prior = self.with_prior_preservation
        lr = self.learning_rate * (self.batch_size * (2 if with_prior else 1) if self.scale_lr
                                   else 1)
        settings = tc.TrainSettings(steps=self.steps, learning_rate=lr,
                                    batch_size=self.batch_size, seed=self.seed,
                                    resolution=self.resolution,
                                    gradient_checkpointing=self.gradient_checkpointing)
        spec = tcd.CustomDiffusionSpec(freeze_model=self.freeze_model,
                                       modifier_token=self.modifier_token.strip(),
                                       initializer_token=self.initializer_token.strip())
        tc.check_resolution(self.model.unet, self.vae, settings.resolution)
        base_hash = tc.weights_hash(self.model.unet, self.clip.text_encoder)
        checkpoint = _checkpoint(ctx, "custom_diffusion", self, captions, base_hash)
        name = save_name(self.save_name)
        if name:  # both files claimed before any work (the embedding is written if trained)
            targets = {folder: _claim(ctx.env, folder, name, checkpoint)
                       for folder in ("loras", "embeddings")}
        prior, class_pixels = self.prior(), None
        if prior is not None:
            class_pixels = class_images(ctx, self.model, self.clip, self.vae, prior,
                                        settings.resolution, self.seed, base_hash)
        sample = _sample(ctx, self, captions)
        layers, clip, vector, losses = tcd.train_custom_diffusion(
            ctx, self.model, self.clip, self.vae, self.images, captions, spec, settings,
            prior, class_pixels, checkpoint, sample=sample, loss_mask=self.loss_mask_spec())
        label = f"{name}.safetensors" if name else f"trained-custom-diffusion-{ctx.node_id}"
        model = replace(self.model, patches=(*self.model.patches, layers.patch(label)))
        if not name:
            _release(checkpoint)
            return with_last_sample(ctx, sample, (model, clip, "", ""))
        info = training_info(self, captions, base_hash, settings.steps, losses,
                             method="custom_diffusion", modifier_token=spec.modifier_token,
                             initializer_token=spec.initializer_token,
                             **({"scaled_learning_rate": lr} if self.scale_lr else {}))
        metadata = {"format": "pt", **{f"steerflow.{k}": v if isinstance(v, str)
                                       else json.dumps(v) for k, v in info.items()}}
        _save(ctx, layers.state_dict(), metadata, targets["loras"], checkpoint)
        embedding = ""
        if vector is not None:
            # diffusers' learned_embeds layout: {token: [1, dim]}
            _save(ctx, {spec.modifier_token: vector}, metadata, targets["embeddings"], checkpoint)
            embedding = name
        _release(checkpoint)
        return with_last_sample(ctx, sample, (model, clip, label, embedding))


NODE_CLASSES = (TrainCustomDiffusion,)
