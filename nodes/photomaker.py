"""PhotoMaker nodes (ComfyUI's ``PhotoMakerLoader`` and ``PhotoMakerEncode``): an SDXL
prompt that carries a person's identity from reference photos, no training needed."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.embeddings import (
    EmbeddingLibrary,
    embedding_fingerprint,
    prompt_problems,
)
from nodes.diffusion.handles import Conditioning, Tensor, TextEncoder
from nodes.models import ModelFileNode

FOLDER = "photomaker"
SUFFIXES = (".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt")
TRIGGER_WORD = "photomaker"  # nodes.diffusion.photomaker's (kept torch-free here)


def trigger_problem(text: str) -> str | None:
    """Why ``text`` has no trigger word, or None. As ComfyUI, the trigger is a word of
    ``text.split(" ")`` equal to ``photomaker``: "photomaker," is not one."""
    words = text.split(" ")
    if TRIGGER_WORD in words:
        return None
    near = next((w for w in words if TRIGGER_WORD in w.lower()), None)
    hint = (f" ({near!r} is not it: the trigger must stand between spaces, lowercase, "
            "e.g. 'a man photomaker , smiling')" if near is not None else "")
    return (f"the text has no trigger word {TRIGGER_WORD!r}{hint}: write it as a word of "
            "its own right after the class word it stands for, e.g. 'photograph of a man "
            "photomaker'")


def list_photomaker_models(env: Environment) -> list[str]:
    return env.list_files("models", FOLDER, suffixes=SUFFIXES)


class PhotoMakerLoader(ModelFileNode):
    """Load a PhotoMaker v1 ID encoder from models/photomaker (``photomaker-v1.bin``
    needs --allow-pickle; a ``.safetensors`` copy loads without). Use it with PhotoMaker
    Encode and an SDXL base checkpoint. The file's built-in UNet LoRA (``lora_weights``)
    is not applied, as in ComfyUI: the ID encoder alone already carries the identity.
    PhotoMaker V2 files are refused (they need InsightFace, which ComfyUI's nodes lack).
    """

    TYPE = "PhotoMakerLoader"
    DISPLAY_NAME = "Load PhotoMaker"
    CATEGORY = "_for_testing/photomaker"
    OUTPUTS = (Output("PHOTOMAKER"),)
    MODEL_FOLDER = FOLDER
    FILE_INPUT = "photomaker_model_name"

    photomaker_model_name: str = Input(..., choices=list_photomaker_models,
                                       description="A file in models/photomaker")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.photomaker import load_photomaker

        path = self.model_file(ctx, "PhotoMaker model")
        return (load_photomaker(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                                name=self.photomaker_model_name),)


class PhotoMakerEncode(Node):
    """Encode an SDXL prompt whose subject looks like the person in ``image``.

    Write the trigger word ``photomaker`` as a word of its own (lowercase; as in ComfyUI,
    "photomaker," is not it) right after the class word it stands for: "photograph of a
    man photomaker smiling in a garden". The trigger is removed and the class word's
    token is fused with the photos' identity: each photo of the batch gives one copy of
    the class token, as in PhotoMaker's pipeline (ComfyUI uses only the first photo);
    1-4 clear, well-lit face photos of the same person work best. Use the result as the
    positive prompt of an SDXL base model, with an ordinary negative prompt; weights,
    ``embedding:`` names and long prompts work as in CLIP Text Encode. PhotoMaker's demo
    samples with guidance 5 and 50 steps, and with the plain prompt (no trigger word) for
    the first 20% of the steps, which keeps more of a prompt's style: Conditioning Set
    Timestep Range on both prompts and Conditioning Combine do that here.
    """

    TYPE = "PhotoMakerEncode"
    DISPLAY_NAME = "PhotoMaker Encode"
    CATEGORY = "_for_testing/photomaker"
    OUTPUTS = (Output("CONDITIONING"),)

    photomaker: Any = Input(type="PHOTOMAKER")
    image: Tensor = Input(type="IMAGE", description="Reference photo(s) of one person's face")
    clip: TextEncoder = Input(type="CLIP", description="An SDXL base checkpoint's CLIP")
    text: str = Input("photograph of photomaker", multiline=True, dynamic_prompts=True,
                      description="The prompt, with 'photomaker' right after the class word")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str, str]]:
        text = inputs.get("text")
        if not isinstance(text, str):
            return []
        problems = [("text", message, severity)
                    for severity, message in prompt_problems(env, text)]
        problem = trigger_problem(text)
        if problem is not None:
            problems.append(("text", problem, "error"))
        return problems

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return embedding_fingerprint(env, inputs.get("text"))

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        from nodes.conditioning import encode_hooked
        from nodes.diffusion.photomaker import check_clip, check_id_images, photomaker_encode

        check_clip(self.clip)
        check_id_images(self.image)
        return (encode_hooked(self.clip, lambda clip: photomaker_encode(
            self.photomaker, self.image, clip, self.text,
            lambda dim: EmbeddingLibrary(ctx.env, dim))),)


NODE_CLASSES = (PhotoMakerLoader, PhotoMakerEncode)
