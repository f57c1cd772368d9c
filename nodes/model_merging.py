"""ComfyUI's model-merging nodes (and Repeat Latent Batch, which its merge examples use).

A merge never changes either loaded model: it returns model1's handle with one more
weight patch (:mod:`nodes.diffusion.model_merging`) that the sampler or the prompt
encoder applies for its call, like a LoRA. Names, inputs, ranges and defaults are
ComfyUI's, so its workflows load unchanged. Save the result with Save Checkpoint or
ModelSave.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

from engine import ExecutionContext, Input, Node, Output
from engine.node import NamedInputsNode, input_spec
from nodes.diffusion.handles import DiffusionModel, Latent, TextEncoder
from nodes.diffusion.model_merging import CLIP_SKIPPED, ModelMergeError, merge_patch, unet_block

if TYPE_CHECKING:
    import torch

Factors = Callable[[str], tuple[float, float]]  # parameter name -> (keep, add)
CATEGORY = "advanced/model_merging"


def _families(what: str, family1: str, family2: str) -> str:
    """``models (sd1 and sdxl)``, or ``models (both sd1)``: "sd1 and sd1" read as a match."""
    return (f"{what} (both {family1})" if family1 == family2
            else f"{what} ({family1} and {family2})")


def merge_models(model1: DiffusionModel, model2: DiffusionModel, factors: Factors,
                 label: str) -> DiffusionModel:
    """model1 with model2's UNet merged in by ``factors``; model1's scheduler, extensions
    and earlier patches are kept (ComfyUI clones model1)."""
    patch = merge_patch(model1.unet, model2.unet, model2.patches, factors, label=label,
                        what=_families("models", model1.family, model2.family),
                        in_channels_may_differ=True)
    return model1 if patch is None else replace(model1, patches=(*model1.patches, patch))


def merge_clips(clip1: TextEncoder, clip2: TextEncoder, factors: Factors,
                label: str) -> TextEncoder:
    """clip1 with clip2's text encoders merged in (both of SDXL's, each with its own)."""
    out = clip1
    for encoder, field in (("text_encoder", "patches"), ("text_encoder_2", "patches_2")):
        root1, root2 = getattr(clip1, encoder), getattr(clip2, encoder)
        if root1 is None and root2 is None:
            continue
        if root1 is None or root2 is None:
            which = "first" if root1 is None else "second"
            raise ModelMergeError(f"cannot merge these CLIPs: the {which} has no {encoder} "
                                  f"({clip1.family} and {clip2.family}); merge CLIPs of the "
                                  "same base")
        patch = merge_patch(root1, root2, getattr(clip2, field), factors, label=label,
                            what=f"CLIP {encoder}s", skip=CLIP_SKIPPED)
        if patch is not None:
            out = replace(out, **{field: (*getattr(out, field), patch)})
    return out


def _ratio(ratio: float) -> Factors:
    return lambda _name: (ratio, 1.0 - ratio)


def _subtract(multiplier: float) -> Factors:
    return lambda _name: (multiplier, -multiplier)


def _add(_name: str) -> tuple[float, float]:
    return (1.0, 1.0)


class ModelMergeSimple(Node):
    """``model1 · ratio + model2 · (1 − ratio)`` for every UNet weight (ratio 1: model1)."""

    TYPE = "ModelMergeSimple"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("MODEL"),)

    model1: DiffusionModel = Input(type="MODEL")
    model2: DiffusionModel = Input(type="MODEL")
    ratio: float = Input(1.0, min=0.0, max=1.0, step=0.01,
                         description="Share of model1 (1: model1 only, 0: model2 only)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        return (merge_models(self.model1, self.model2, _ratio(self.ratio),
                             f"merge simple {self.ratio:g}"),)


class ModelMergeBlocks(Node):
    """ModelMergeSimple with a ratio per UNet part: ``input`` (conv_in, down blocks, and
    the time embedding), ``middle`` (mid block), ``out`` (up blocks, final norm and conv)."""

    TYPE = "ModelMergeBlocks"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("MODEL"),)

    model1: DiffusionModel = Input(type="MODEL")
    model2: DiffusionModel = Input(type="MODEL")
    input: float = Input(1.0, min=0.0, max=1.0, step=0.01,
                         description="Share of model1 in the input (down) blocks")
    middle: float = Input(1.0, min=0.0, max=1.0, step=0.01,
                          description="Share of model1 in the middle block")
    out: float = Input(1.0, min=0.0, max=1.0, step=0.01,
                       description="Share of model1 in the output (up) blocks")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        ratios = {"input": self.input, "middle": self.middle, "out": self.out}

        def factors(name: str) -> tuple[float, float]:
            ratio = ratios[unet_block(name)]
            return (ratio, 1.0 - ratio)

        label = f"merge blocks {self.input:g}/{self.middle:g}/{self.out:g}"
        return (merge_models(self.model1, self.model2, factors, label),)


def _block_ratio(name: str) -> Input:
    return Input(1.0, min=0.0, max=1.0, step=0.01,
                 description=f"Share of model1 in {name.rstrip('.')} (1: model1 only)")


class _ModelMergeByBlock(NamedInputsNode):
    """Base of ComfyUI's per-architecture merges (ModelMergeSD1, ModelMergeSDXL): a ratio
    for each original-layout UNet block, named by its key prefix (``input_blocks.4.``);
    a weight takes the ratio of the longest prefix its original name starts with (the
    first block's when none: ComfyUI's rule)."""

    BLOCKS: ClassVar[tuple[str, ...]] = ()
    CATEGORY = "advanced/model_merging/model_specific"
    OUTPUTS = (Output("MODEL"),)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: object) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.BLOCKS:
            cls.INPUT_SPECS = {
                "model1": input_spec("model1", DiffusionModel, Input(type="MODEL")),
                "model2": input_spec("model2", DiffusionModel, Input(type="MODEL")),
                **{b: input_spec(b, float, _block_ratio(b)) for b in cls.BLOCKS}}

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.original_layout import original_name, unet_key_map

        model1, model2 = self.inputs["model1"], self.inputs["model2"]
        ratios = {b: float(self.inputs.get(b, 1.0)) for b in self.BLOCKS}
        unet = model1.unet
        key_map = unet_key_map(dict(unet.config), set(unet.state_dict()))
        by_length = sorted(ratios, key=len, reverse=True)

        def factors(name: str) -> tuple[float, float]:
            original = original_name(name, key_map) or ""
            ratio = next((ratios[b] for b in by_length if original.startswith(b)),
                         ratios[self.BLOCKS[0]])
            return (ratio, 1.0 - ratio)

        changed = {b: r for b, r in ratios.items() if r != 1.0}
        label = f"{self.TYPE} " + ", ".join(f"{b}{r:g}" for b, r in changed.items())
        return (merge_models(model1, model2, factors, label),)


def _blocks(inputs: int, outputs: int, dot: str = ".") -> tuple[str, ...]:
    """ComfyUI's input names (its SDXL node writes the numbered blocks without the dot)."""
    return ("time_embed.", "label_emb.", *(f"input_blocks.{i}{dot}" for i in range(inputs)),
            *(f"middle_block.{i}{dot}" for i in range(3)),
            *(f"output_blocks.{i}{dot}" for i in range(outputs)), "out.")


class ModelMergeSD1(_ModelMergeByBlock):
    """ModelMergeSimple with a ratio for every block of an SD 1.x UNet (the time
    embedding, input blocks 0-11, middle block 0-2, output blocks 0-11, out): e.g. the
    composition from one model (input blocks) and the detail from another (output)."""

    TYPE = "ModelMergeSD1"
    BLOCKS = _blocks(12, 12)


class ModelMergeSD2(ModelMergeSD1):
    """ModelMergeSD1 for SD 2.x UNets (the same blocks)."""

    TYPE = "ModelMergeSD2"


class ModelMergeSDXL(_ModelMergeByBlock):
    """ModelMergeSimple with a ratio for every block of an SDXL UNet (the time and size
    embeddings, input blocks 0-8, middle block 0-2, output blocks 0-8, out)."""

    TYPE = "ModelMergeSDXL"
    BLOCKS = _blocks(9, 9, dot="")


class ModelMergeSubtract(Node):
    """``(model1 − model2) · multiplier`` for every UNet weight: the difference of a
    fine-tune and its base (add it to another model with ModelMergeAdd)."""

    TYPE = "ModelMergeSubtract"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("MODEL"),)

    model1: DiffusionModel = Input(type="MODEL")
    model2: DiffusionModel = Input(type="MODEL")
    multiplier: float = Input(1.0, min=-10.0, max=10.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        return (merge_models(self.model1, self.model2, _subtract(self.multiplier),
                             f"merge subtract {self.multiplier:g}"),)


class ModelMergeAdd(Node):
    """``model1 + model2`` for every UNet weight (model2 usually a ModelMergeSubtract
    difference)."""

    TYPE = "ModelMergeAdd"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("MODEL"),)

    model1: DiffusionModel = Input(type="MODEL")
    model2: DiffusionModel = Input(type="MODEL")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        return (merge_models(self.model1, self.model2, _add, "merge add"),)


class CLIPMergeSimple(Node):
    """``clip1 · ratio + clip2 · (1 − ratio)`` for every text-encoder weight."""

    TYPE = "CLIPMergeSimple"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("CLIP"),)

    clip1: TextEncoder = Input(type="CLIP")
    clip2: TextEncoder = Input(type="CLIP")
    ratio: float = Input(1.0, min=0.0, max=1.0, step=0.01,
                         description="Share of clip1 (1: clip1 only, 0: clip2 only)")

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder]:
        return (merge_clips(self.clip1, self.clip2, _ratio(self.ratio),
                            f"clip merge simple {self.ratio:g}"),)


class CLIPMergeSubtract(Node):
    """``(clip1 − clip2) · multiplier`` for every text-encoder weight."""

    TYPE = "CLIPMergeSubtract"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("CLIP"),)

    clip1: TextEncoder = Input(type="CLIP")
    clip2: TextEncoder = Input(type="CLIP")
    multiplier: float = Input(1.0, min=-10.0, max=10.0, step=0.01)

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder]:
        return (merge_clips(self.clip1, self.clip2, _subtract(self.multiplier),
                            f"clip merge subtract {self.multiplier:g}"),)


class CLIPMergeAdd(Node):
    """``clip1 + clip2`` for every text-encoder weight."""

    TYPE = "CLIPMergeAdd"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("CLIP"),)

    clip1: TextEncoder = Input(type="CLIP")
    clip2: TextEncoder = Input(type="CLIP")

    def execute(self, ctx: ExecutionContext) -> tuple[TextEncoder]:
        return (merge_clips(self.clip1, self.clip2, _add, "clip merge add"),)


def _tile(value: torch.Tensor, batch: int) -> torch.Tensor:
    """A per-sample tensor cycled up to ``batch`` entries (a shorter mask batch)."""
    if value.shape[0] >= batch:
        return value
    times = math.ceil(batch / value.shape[0])
    return value.repeat(times, *([1] * (value.dim() - 1)))[:batch]


def _repeat(value: torch.Tensor, batch: int, amount: int) -> torch.Tensor:
    """Repeat a per-sample tensor along with the samples; a batch of 1 is left to
    broadcast, as ComfyUI leaves a single noise mask."""
    if value.shape[0] <= 1:
        return value
    value = _tile(value, batch)
    return value.repeat(amount, *([1] * (value.dim() - 1)))


class RepeatLatentBatch(Node):
    """Repeat the whole batch ``amount`` times (``[a, b]`` ×2 → ``[a, b, a, b]``), with its
    noise mask and inpainting inputs: variations of one image-to-image start."""

    TYPE = "RepeatLatentBatch"
    DISPLAY_NAME = "Repeat Latent Batch"
    CATEGORY = "latent/batch"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    amount: int = Input(1, min=1, max=64)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        latent = self.samples
        if self.amount == 1:
            return (latent,)
        if type(latent) is not Latent:
            raise ValueError(f"this LATENT ({type(latent).__name__}) carries per-sample state "
                             "Repeat Latent Batch cannot repeat; repeat the latent before the "
                             "node that made it")
        samples = latent.samples
        batch = int(samples.shape[0])
        mask = latent.noise_mask
        inpaint = latent.inpaint
        if inpaint is not None:
            inpaint = replace(inpaint, mask=_repeat(inpaint.mask, batch, self.amount),
                              masked_latents=_repeat(inpaint.masked_latents, batch,
                                                     self.amount))
        index = latent.batch_index
        if index is not None:  # ComfyUI's: each copy takes the next free item numbers
            offset = max(index) - min(index) + 1
            index = tuple(i + k * offset for k in range(self.amount) for i in index)
        return (replace(latent,
                        samples=samples.repeat(self.amount, *([1] * (samples.dim() - 1))),
                        noise_mask=None if mask is None else _repeat(mask, batch, self.amount),
                        inpaint=inpaint, extension_results=(), batch_index=index),)


NODE_CLASSES = (ModelMergeSimple, ModelMergeBlocks, ModelMergeSD1, ModelMergeSD2,
                ModelMergeSDXL, ModelMergeSubtract, ModelMergeAdd,
                CLIPMergeSimple, CLIPMergeSubtract, CLIPMergeAdd, RepeatLatentBatch)
