"""Train DreamBooth: fine-tune the whole UNet on a few images, in the graph that uses it.

The math lives in :mod:`nodes.diffusion.train_dreambooth` (diffusers'
``train_dreambooth.py``), the class images and the prior loss in
:mod:`nodes.diffusion.prior_preservation`, the loop in :mod:`nodes.diffusion.train_common`.
Heavy imports happen inside ``execute``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine import Environment, ExecutionContext, Input, NodeResult, Output
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.train_preview import with_last_sample
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
    _settings,
    check_training_inputs,
    pivot_input,
    pivot_problems,
    pivot_spec,
    save_name,
    training_captions,
    training_info,
)


class TrainDreamBooth(LossMaskInputs, PriorPreservationInputs, TrainingNode):
    """Fine-tune the whole UNet (and optionally the text encoder) on a few captioned images
    of a subject (diffusers' train_dreambooth.py: MSE on the noise, or on v, uniform
    timesteps, AdamW, gradient norm clipped to 1), with optional prior preservation.

    Wire Load Image Batch's IMAGE and captions (one line per image, or one line for all,
    e.g. "a sks shape") with the checkpoint's MODEL, CLIP and VAE. The outputs are a new
    MODEL (and, with ``train_text_encoder``, a new CLIP) over trained copies, used like a
    loaded checkpoint's; the base model is untouched (its LoRA patches, if any, are
    merged into the copy). With ``save_name`` the whole model (UNet, VAE, text encoder) is
    also written atomically to models/checkpoints/<save_name>.safetensors, which Load
    Checkpoint reads; its metadata holds the base model's hash, the steps and the
    parameters. Images are scaled so their shorter side is ``resolution`` and cropped in
    the middle (a multiple of 64 for SD 1.x, of 16 for the default model, whose images
    are 64).

    Prior preservation (``with_prior_preservation``): before training, the base model
    draws ``num_class_images`` images of ``class_prompt`` (the class without the rare
    word: "a shape" for "a sks shape") with ``class_sampler`` at ``class_steps`` /
    ``class_cfg``; every step then trains on as many class examples as instance examples
    and adds ``prior_loss_weight`` times their loss, so the class word keeps its meaning
    (without it, DreamBooth soon draws the subject for every "shape"). The class images
    are kept in temp/training and reused by runs with the same base and class options.

    Using it well: a rare word in every caption ("a sks shape"); the script's learning
    rate 5e-6 (1e-6 to 1e-5 for SD; a small model such as the default takes 1e-4 to
    1e-3), a few hundred steps (about 100-200 per image: more overfits), 100-200 class
    images with prior_loss_weight 1; ``train_text_encoder`` learns the word faster but
    overfits sooner and doubles the memory of the text encoder. Cost: every step is a
    forward and backward pass over the whole UNet with a batch twice ``batch_size``
    with prior preservation, and memory about four times the UNet's weights (weights,
    gradients, AdamW's two moments; an SD 1.5 UNet in float32 needs ~14 GB);
    ``gradient_checkpointing`` trades a third more time for less activation memory.
    The same inputs are never trained twice (cached); progress events carry the loss;
    Stop acts between steps and leaves a resumable state in temp/training (the whole
    model and optimiser: large for large models).

    Pivotal tuning (``pivot_token``, as Train LoRA's): the caption's concept word trains
    its embedding with the UNet, at ``pivot_learning_rate``, so the word itself comes to
    mean the subject rather than the UNet re-routing a random word. A vocabulary word
    (sks) trains its own row, which the output CLIP and a saved checkpoint keep (use the
    word as it is afterwards); a new placeholder (<sks>, ``pivot_vectors`` rows) lives in
    the output CLIP only, so it cannot be saved to a checkpoint. Lower the UNet's rate
    when you add it: with both rates high they overshoot. On the default model the row
    at 5e-2 with the UNet at 5e-5 (a quarter of the rate that works alone) and a masked
    loss (``unmasked_weight`` 0.1), 1600 steps, drew 82% hearts held out over four
    training seeds with the plain prompts within 2 points, where the UNet alone at 2e-4
    drew 68% and cost them 6 points (the example's setting).
    """

    TYPE = "TrainDreamBooth"
    DISPLAY_NAME = "Train DreamBooth"
    CATEGORY = "training"
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("STRING", "ckpt_name"))

    captions: str = Input("", multiline=True, description="One caption per image (a line "
                          "each), or one for all, with a rare word: 'a sks shape'")
    learning_rate: float = Input(5e-6, min=1e-8, max=1e-2, step=1e-6,
                                 description="AdamW learning rate (constant; the script's "
                                 "5e-6)")
    steps: int = Input(400, min=1, max=100_000, description="Optimiser steps")
    batch_size: int = Input(1, min=1, max=64, description="Instance images per step")
    seed: int = Input(0, min=0, max=2**63 - 1,
                      description="Seeds order, noise, timesteps and the class images")
    train_text_encoder: bool = Input(False, description="Fine-tune the text encoder too "
                                     "(the script's --train_text_encoder)")
    save_name: str = Input("", description="Also write models/checkpoints/<name>"
                           ".safetensors (empty: do not save)")
    pivot_token: str = pivot_input("token")
    pivot_initializer: str = pivot_input("initializer")
    pivot_vectors: int = pivot_input("vectors")
    pivot_learning_rate: float = pivot_input("learning_rate")
    pivot_ti_steps: int = pivot_input("ti_steps")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        name = inputs.get("save_name")
        if isinstance(name, str) and (problem := _name_problem(name, "checkpoints", env)):
            problems.append(("save_name", problem))
        captions = inputs.get("captions")
        if isinstance(captions, str) and not captions.strip():
            problems.append(("captions", "write a caption with a rare word (one for all "
                             "images, e.g. 'a sks shape') or link Load Image Batch's "
                             "captions"))
        problems += cls.prior_problems(inputs, "rare word")
        problems += pivot_problems(inputs)
        return problems

    def execute(self, ctx: ExecutionContext
                ) -> tuple[DiffusionModel, TextEncoder, str] | NodeResult:
        from nodes.diffusion import train_common as tc
        from nodes.diffusion import train_dreambooth as tdb
        from nodes.diffusion.lora import patched
        from nodes.diffusion.prior_preservation import class_images
        from nodes.diffusion.train_textual_inversion import base_tokenizer, vocabulary_word

        check_training_inputs(self)
        captions = training_captions(ctx, self)
        name = save_name(self.save_name)
        if name and base_tokenizer(self.clip.tokenizer)[1]:
            raise ValueError("this CLIP knows words added by textual inversion, which a "
                             "checkpoint file cannot hold: train from Load Checkpoint's CLIP "
                             "to save, or clear save_name")
        pivot = pivot_spec(self)
        if name and pivot is not None and not (
                pivot.num_vectors == 1 and vocabulary_word(self.clip.tokenizer, pivot.token)):
            raise ValueError(f"pivot_token {pivot.token!r} is a new word, which a checkpoint "
                             "file cannot hold: use a word the tokenizer has (such as sks, "
                             "one vector), whose trained row the checkpoint keeps, or clear "
                             "save_name")
        settings = _settings(self)
        tdb.check_trainable(self.model, self.vae)
        tc.check_resolution(self.model.unet, self.vae, settings.resolution)
        base_hash = tc.weights_hash(self.model.unet, self.clip.text_encoder)
        checkpoint = _checkpoint(ctx, "dreambooth", self, captions, base_hash)
        if name:  # before the class images: refused in a moment, not after minutes
            target = _claim(ctx.env, "checkpoints", name, checkpoint)
        prior, class_pixels = self.prior(), None
        if prior is not None:
            class_pixels = class_images(ctx, self.model, self.clip, self.vae, prior,
                                        settings.resolution, self.seed, base_hash)
        sample = _sample(ctx, self, captions)
        unet, clip, losses = tdb.train_dreambooth(
            ctx, self.model, self.clip, self.vae, self.images, captions, settings,
            self.train_text_encoder, prior, class_pixels, checkpoint,
            sample=sample, loss_mask=self.loss_mask_spec(), pivot=pivot)
        model = replace(self.model, unet=unet, patches=())  # patches are merged in the copy
        if name:
            info = training_info(self, captions, base_hash, settings.steps, losses)
            # a frozen text encoder is saved as the graph uses it: its patches merged
            with patched(clip.text_encoder, clip.patches):
                tensors, metadata = tdb.checkpoint_file(
                    unet, self.vae.vae, clip.text_encoder, self.model.scheduler_config,
                    self.model.family, info)
            _save(ctx, tensors, metadata, target, checkpoint)
        _release(checkpoint)
        return with_last_sample(ctx, sample, (model, clip, f"{name}.safetensors" if name else ""))


NODE_CLASSES = (TrainDreamBooth,)
