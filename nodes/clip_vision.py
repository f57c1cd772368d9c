"""CLIP vision nodes: load a CLIP (ComfyUI's CLIPVisionLoader), encode images with it
(CLIPVisionEncode) and score images against text (CLIPScore)."""

from __future__ import annotations

from typing import Any

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from nodes.diffusion.clip_vision import ClipVision, ClipVisionOutput
from nodes.diffusion.handles import Tensor
from nodes.models import file_fingerprint, pickle_problem

FOLDER = "clip_vision"
CLIP_VISION_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
CROPS = ("center", "none")


def list_clip_vision(env: Environment) -> list[str]:
    """Single files and transformers folders (with config.json) under models/clip_vision."""
    return env.list_files("models", FOLDER, suffixes=CLIP_VISION_SUFFIXES,
                          dirs_with="config.json")


def _check_image(image: Any, node: str) -> None:
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4) or image.shape[0] == 0:
        raise ValueError(f"{node}: expected an IMAGE batch [B, H, W, C] with C = 1, 3 or 4, "
                         f"got shape {tuple(image.shape)}")


class CLIPVisionLoader(Node):
    """Load a CLIP vision model from models/clip_vision: a single ``.safetensors`` with
    transformers' key names (a whole CLIP, or the image tower alone as ComfyUI's
    clip_vision files) or a transformers folder (``config.json`` + weights).

    A whole CLIP, such as the built-in ``steerflow-shapes-clip.safetensors`` (trained on
    the default model's shapes world: it knows colours, shapes, positions and
    backgrounds; zero-shot on held-out images: colour 100%, position 99%, background
    100%, shape 96% (85% on two-shape images)), also carries its text tower and
    tokenizer, which CLIP Score and a text target of CLIP Guidance need; an image tower
    alone serves CLIP Vision Encode and image targets. Pickle files load only when
    pickles are allowed (--allow-pickle).
    """

    TYPE = "CLIPVisionLoader"
    DISPLAY_NAME = "Load CLIP Vision"
    CATEGORY = "loaders"
    OUTPUTS = (Output("CLIP_VISION"),)

    clip_name: str = Input(..., choices=list_clip_vision,
                           description="A file or transformers folder in models/clip_vision")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get("clip_name"), "models", FOLDER)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "clip_name", "models", FOLDER)

    def execute(self, ctx: ExecutionContext) -> tuple[ClipVision]:
        from nodes.diffusion.clip_vision import load_clip_vision
        from nodes.diffusion.memory import device_budget

        path = ctx.env.resolve("models", FOLDER, self.clip_name)
        if not path.exists():
            raise FileNotFoundError(f"CLIP vision model {self.clip_name!r} not found in "
                                    f"models/{FOLDER}")
        # Bigger than the device's budget: it never goes there whole (place_model).
        return (load_clip_vision(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                                 name=self.clip_name, budget=device_budget(ctx)),)


class CLIPVisionEncode(Node):
    """Encode images with a CLIP image tower (ComfyUI's node and output): the projected
    ``image_embeds``, the ``last_hidden_state`` and the ``penultimate_hidden_states``
    (what IP-Adapter, unCLIP and style models read).

    ``crop``: "center" resizes the short side to the model's size (bicubic) and takes
    the centre square, as CLIP's image processor; "none" squashes the whole image to a
    square, so nothing at the edges is lost. Cost: one pass of the image tower.
    """

    TYPE = "CLIPVisionEncode"
    DISPLAY_NAME = "CLIP Vision Encode"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CLIP_VISION_OUTPUT"),)

    clip_vision: ClipVision = Input(type="CLIP_VISION")
    image: Tensor = Input(type="IMAGE")
    crop: str = Input("center", choices=list(CROPS),
                      description="centre square (CLIP's processor) or the whole image squashed")

    def execute(self, ctx: ExecutionContext) -> tuple[ClipVisionOutput]:
        import torch

        _check_image(self.image, "CLIP Vision Encode")
        with torch.no_grad():
            return (self.clip_vision.encode(self.image, self.crop),)


class CLIPScore(Node):
    """How well images match a text: CLIPScore (Hessel et al. 2021, the metric of
    torchmetrics' ``CLIPScore``), per image ``max(100 * cos(image, text), 0)`` in the
    CLIP's joint space; FLOAT is the batch's mean, STRING (and the node's text) lists
    each image's score.

    Wire ``clip_vision`` from Load CLIP Vision with a whole CLIP (it needs the text tower:
    on the default model use ``steerflow-shapes-clip.safetensors``), ``image`` from VAE
    Decode or Load Image, and the prompt as ``text``; one line scores every image, or give
    one line per image (any other count is refused). Scores compare within one CLIP only. On
    the shapes CLIP (held-out images) "a <colour> <shape>" that is true scores 46.5 on
    average, with the wrong colour 25.7 and with the wrong shape 27.9, each lower on every
    image: it reads colour, shape, position and background. Cost:
    one image-tower and one text-tower pass (~6 ms per 64x64 image on one CPU thread).
    """

    TYPE = "CLIPScore"
    DISPLAY_NAME = "CLIP Score"
    CATEGORY = "image/analysis"
    OUTPUT_NODE = True
    OUTPUTS = (Output("FLOAT", name="score"), Output("STRING", name="scores"))

    clip_vision: ClipVision = Input(type="CLIP_VISION")
    image: Tensor = Input(type="IMAGE")
    text: str = Input(..., multiline=True,
                      description="The prompt; one line per image to score each its own")
    crop: str = Input("center", choices=list(CROPS),
                      description="centre square (CLIP's processor) or the whole image squashed")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        text = inputs.get("text")
        if isinstance(text, str) and not _lines(text):
            return [("text", "text is empty: give the prompt to score the images against")]
        return []

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        import torch

        from nodes.diffusion.clip_vision import clip_score

        _check_image(self.image, "CLIP Score")
        if not self.clip_vision.has_text:
            raise ValueError(f"CLIP Score: {self.clip_vision.name or 'this CLIP'} has no text "
                             "tower; load a whole CLIP (e.g. steerflow-shapes-clip.safetensors)")
        lines = _lines(self.text)
        if not lines:
            raise ValueError("CLIP Score: text is empty")
        count = self.image.shape[0]
        if len(lines) not in (1, count):  # joining them scored a sentence nobody wrote
            raise ValueError(f"CLIP Score: {len(lines)} lines of text for {count} image"
                             f"{'s' if count != 1 else ''}: give one line to score every "
                             "image against, or one line per image, in the batch's order")
        texts = lines
        with torch.no_grad():
            scores = clip_score(self.clip_vision, self.image, texts, self.crop).tolist()
        summary = ", ".join(f"{s:.2f}" for s in scores)
        mean = sum(scores) / len(scores)
        return NodeResult((float(mean), summary),
                          {"text": [f"CLIPScore {mean:.2f} (per image: {summary})"]})


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


NODE_CLASSES = (CLIPVisionLoader, CLIPVisionEncode, CLIPScore)
