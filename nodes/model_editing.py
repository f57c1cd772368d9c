"""Model editing node: TIME's closed-form edit of the cross-attention K/V projections."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import DiffusionModel, TextEncoder

DEFAULT_AUGMENTATIONS = "A photo of\nAn image of\nA picture of"  # diffusers' AUGS_CONST


class TIMEModelEdit(Node):
    """TIME (Orgad et al. 2023, "Editing Implicit Assumptions in Text-to-Image
    Diffusion Models"): change what the model draws for a word, for every prompt, by
    a closed-form edit of its cross-attention key/value projections.

    The edit makes the source prompt's tokens project like the destination prompt's
    ("a circle" → "a square": every prompt that says "circle" now gets the keys and
    values of "square"). The paper's use is to specify an implicit assumption ("a pack
    of roses" → "a pack of blue roses"); a word swap works too. Wire MODEL and CLIP
    from the same checkpoint; the MODEL out goes to the sampler (the CLIP is only read:
    encode prompts with the checkpoint's CLIP as usual). It is a persistent model edit
    like a LoRA: it acts on every prompt sampled with the edited MODEL, and the cached
    checkpoint never changes.

    It edits SD 1.x / 2.x models (one text encoder); an SDXL model is refused.

    Using it well: short prompts that differ only in the words to change, with the
    same article ("a circle" → "a square"; extra destination words such as "blue" are
    fine). Each differing source word maps onto a destination word; a source word
    dropped from the destination is refused. ``lamb`` (λ) weighs keeping the old
    weights against the edit, on the scale of the text states' squared norms:
    diffusers' default 0.1 suits SD 1.x; on the default model use 2-5 (0.1 over-fits:
    the edit leaks, squares turn into circles and crosses into diamonds). Too small
    a λ leaks into other words, too large a λ stops editing. ``with_to_k`` also edits
    the keys (the paper's and diffusers' default), so the edited word attends where
    the new one would.
    ``augmentations`` are prefixes ("A photo of") giving more sentences to edit on,
    one a line (empty: the prompts only). ``restart_params`` drops earlier TIME edits
    of the incoming MODEL (diffusers' default); turn it off to stack several edits.
    Cost: a few text-encoder passes and one linear solve when the node runs (cached
    after), a dense copy of the edited K/V weights in memory, and nothing extra per
    sampling step. On the default model "a circle" → "a square" at λ 5 makes circle
    prompts of any colour, size and place draw squares (100 of 100 held-out prompts)
    and leaves the other shapes as they were (97% right, unedited 96%; README).
    """

    TYPE = "TIMEModelEdit"
    DISPLAY_NAME = "Edit Model (TIME)"
    SEARCH_ALIASES = ("TIME", "model editing", "text-to-image model editing")
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    clip: TextEncoder = Input(type="CLIP", description="The text encoder of the same checkpoint")
    source_prompt: str = Input("a circle", description="What the model draws now (e.g. 'a circle')")
    destination_prompt: str = Input("a square",
                                    description="What it should draw instead (e.g. 'a square')")
    lamb: float = Input(0.1, min=0.0001, max=100.0, step=0.01,
                        description="Regularisation λ: smaller edits harder (SD 0.1; the "
                        "default model 2-5)")
    with_to_k: bool = Input(True, description="Edit the key projections as well as the values")
    restart_params: bool = Input(True, description="Drop earlier TIME edits of this model "
                                 "first (off: edits accumulate)")
    augmentations: str = Input(DEFAULT_AUGMENTATIONS, multiline=True,
                               description="Prefixes for extra edit sentences, one a line")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        texts = {}
        for name in ("source_prompt", "destination_prompt"):
            text = inputs.get(name)
            if isinstance(text, str):
                texts[name] = text.strip()
                if not texts[name]:
                    problems.append((name, "is empty: TIME edits from a source prompt to a "
                                           "destination prompt (e.g. 'a circle' → 'a square')"))
        if len(texts) == 2 and texts["source_prompt"] and (
                texts["source_prompt"] == texts["destination_prompt"]):
            problems.append(("destination_prompt", "equals the source prompt: nothing to edit"))
        return problems

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.model_editing import parse_augmentations, time_edit
        from nodes.diffusion.sdxl import require_sd_unet

        require_sd_unet(self.model.unet, "Edit Model (TIME)")
        return (time_edit(self.model, self.clip, self.source_prompt.strip(),
                          self.destination_prompt.strip(), lamb=self.lamb,
                          with_to_k=self.with_to_k,
                          augmentations=parse_augmentations(self.augmentations),
                          restart_params=self.restart_params),)


NODE_CLASSES = (TIMEModelEdit,)
