"""Pix2Pix-Zero nodes: an edit direction from sentences, and the edit itself (cross-attention
guidance) on a prompt's conditioning."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder
from nodes.diffusion.pix2pix_zero import EditDirection


def _sentence_problems(inputs: dict[str, Any], env: Environment, name: str
                       ) -> list[tuple[str | None, str]]:
    from nodes.diffusion.embeddings import prompt_problems
    from nodes.diffusion.pix2pix_zero import sentences

    text = inputs.get(name)
    if not isinstance(text, str):
        return []  # linked: checked when it runs
    if not sentences(text):
        return [(name, f"write at least one {name} sentence (one per line)")]
    return [(name, message, severity) for severity, message in prompt_problems(env, text)]


class Pix2PixZeroEditDirection(Node):
    """The direction of an edit in the text encoder's embedding space (Pix2Pix-Zero,
    Parmar et al. 2023): the mean encoding of the ``target`` sentences minus that of the
    ``source`` sentences, one sentence per line (diffusers' ``get_embeds`` and
    ``construct_direction``).

    Write many sentences that differ only in the concept to change, in the same wording:
    "a red circle at the top" / "a red square at the top", varied in everything else
    (colours, places, backgrounds), so what they share cancels and only the edit is left.
    The paper used about a thousand generated sentences per concept; tens already give a
    clean direction, and the same number on both sides keeps it balanced. Each sentence
    is one 77-token window (longer ones are cut); ``embedding:name`` works as in Encode
    Prompt. Wire the output into Pix2Pix-Zero. Cost: one text-encoder pass per sentence.
    """

    TYPE = "Pix2PixZeroEditDirection"
    DISPLAY_NAME = "Pix2Pix-Zero Edit Direction"
    CATEGORY = "conditioning/pix2pix_zero"
    OUTPUTS = (Output("EDIT_DIRECTION"),)

    clip: TextEncoder = Input(type="CLIP")
    source: str = Input("", multiline=True,
                        description="Sentences with the concept to change, one per line")
    target: str = Input("", multiline=True,
                        description="The same sentences with the new concept, one per line")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return _sentence_problems(inputs, env, "source") + _sentence_problems(inputs, env,
                                                                              "target")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        from nodes.conditioning import CLIPTextEncode

        prints = [CLIPTextEncode.fingerprint({"text": inputs.get(k)}, env)
                  for k in ("source", "target")]
        return prints if any(p is not None for p in prints) else None

    def execute(self, ctx: ExecutionContext) -> tuple[EditDirection]:
        from nodes.diffusion.embeddings import EmbeddingLibrary
        from nodes.diffusion.pix2pix_zero import construct_direction, get_embeds, sentences

        source, target = sentences(self.source), sentences(self.target)
        for name, lines in (("source", source), ("target", target)):
            if not lines:
                raise ValueError(f"Pix2Pix-Zero Edit Direction: write at least one {name} "
                                 "sentence (one per line)")
        dim = int(self.clip.text_encoder.get_input_embeddings().weight.shape[1])
        library = EmbeddingLibrary(ctx.env, dim)
        direction = construct_direction(get_embeds(self.clip, source, library),
                                        get_embeds(self.clip, target, library))
        return (EditDirection(direction, len(source), len(target)),)


class Pix2PixZero(Node):
    """Edit what a prompt draws while keeping the picture's layout (Pix2Pix-Zero, Parmar
    et al. 2023; diffusers' ``StableDiffusionPix2PixZeroPipeline``).

    Wire the **source** prompt's conditioning (Encode Prompt with the caption of the
    image) and an edit direction (Pix2Pix-Zero Edit Direction); use the output as the
    sampler's **positive**. It samples the prompt moved along the direction, while a
    second, reference trajectory samples the source prompt from the same start: before
    each step the latent takes a gradient step (size ``cross_attention_guidance_amount``)
    that pulls the edit's cross-attention maps towards the reference's, so shapes stay
    where they were and only the edited concept changes.

    To edit a real image: DDIM Inversion of its latent with the caption (cfg 1;
    Pix2Pix-Zero's ``num_reg_steps`` 5 helps), then KSamplerAdvanced with add_noise
    disable, sampler ddim, the same steps, and this conditioning as positive. To edit a
    generated image, sample the same seed with this conditioning.

    ``cross_attention_guidance_amount``: the pipeline's default is 0.1 (0.15 in its
    example; SD 2.x v-models need 0.01 or less). The gradient's size depends on the model,
    so tune it: too high and the latent leaves the image manifold (colour blotches, the
    shape moves). 0 turns the guidance off; the direction still applies. Cost: each step
    adds a reference UNet pass and a UNet pass with gradients (about 4-5x the time of a
    plain step). Composes with ControlNet, LoRA, SEGA, SAG and masks in one run.

    On the default model (60 held-out one-circle images, inverted with num_reg_steps 5,
    DDIM 25 steps, cfg 7.5, 60 sentences per side) circle → square with colour and place
    kept: 100% at amounts 0 to 1 (the median PSNR outside the shape 38 dB), 78% at 10.
    The edit is easy for this model (writing "square" into the prompt does as well from
    the same noise), so the guidance's layout-keeping shows little here; it is meant for
    edits whose layout the prompt does not pin down (a cat's pose, turning into a dog).
    """

    TYPE = "Pix2PixZero"
    DISPLAY_NAME = "Pix2Pix-Zero"
    SEARCH_ALIASES = ("pix2pix zero", "p2p zero")
    CATEGORY = "conditioning/pix2pix_zero"
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING",
                                       description="The source prompt (the image's caption)")
    edit_direction: EditDirection = Input(type="EDIT_DIRECTION")
    cross_attention_guidance_amount: float = Input(
        0.1, min=0.0, max=1000.0, step=0.01,
        description="Gradient step size pulling the edit's cross-attention to the "
        "source's (0: off)")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.diffusion.pix2pix_zero import Pix2PixZero as Extension
        from nodes.diffusion.pix2pix_zero import edit_embeds

        entries = self.conditioning.entries
        if len(entries) != 1:
            raise ValueError(f"Pix2Pix-Zero edits one prompt, this conditioning has "
                             f"{len(entries)} (a Conditioning Combine?): apply Pix2Pix-Zero "
                             "first and combine its output")
        entry = entries[0]
        edited = edit_embeds(entry.embeds, self.edit_direction.direction)
        extension = Extension(entry.embeds, edited, self.cross_attention_guidance_amount)
        options = {**entry.options,
                   "extensions": (*entry.options.get("extensions", ()), extension)}
        return (Conditioning((CondEntry(edited, options),)),)


NODE_CLASSES = (Pix2PixZeroEditDirection, Pix2PixZero)
