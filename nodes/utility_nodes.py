"""Small ComfyUI utility nodes: Custom Combo, Color Picker (``ColorToRGBInt``), Create
List, Get Image/Video Latent Size, LatentCutToBatch, Image Compare and Webcam Capture,
under ComfyUI's ids, inputs and widget order."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.autogrow import autogrow
from engine.node import NamedInputsNode, input_spec
from engine.paths import PathError
from nodes.bounding_boxes import HEX_COLOR
from nodes.conditioning import MAX_RESOLUTION
from nodes.diffusion.handles import Latent, Tensor
from nodes.frontend_widgets import FrontEndWidgetNode, any_value
from nodes.primitives import check_text

if TYPE_CHECKING:
    import torch

MAX_OPTIONS = 100  # Custom Combo's option1 ... option100
MAX_LIST_ITEMS = 100_000  # Create List's output
LIST_INPUTS = 10  # ComfyUI's Autogrow default: input0 ... input9


class CustomCombo(NamedInputsNode):
    """A dropdown of your own options: type them in ComfyUI's front end (a new box opens
    under the last one); outputs the chosen text and its position (0 for the first
    option box, -1 if the choice is in none).

    ComfyUI's front end sends the options as ``option1``, ``option2``, ... and the position
    as ``index``, and the choice is not checked against them (they are the user's own).
    Without ``index`` the position is found among the options (0 when none matches)."""

    TYPE = "CustomCombo"
    DISPLAY_NAME = "Custom Combo"
    CATEGORY = "utils"
    OUTPUTS = (Output("STRING", "STRING"), Output("INT", "INDEX"))
    HIDDEN: ClassVar[tuple[str, ...]] = (
        "index", *(f"option{k}" for k in range(1, MAX_OPTIONS + 1)))

    @classmethod
    def schema(cls, env: Environment | None = None) -> dict[str, Any]:
        """ComfyUI's schema: only ``choice`` (its front end adds the option boxes and the
        hidden ``index`` itself)."""
        schema = super().schema(env)
        for section in ("required", "optional"):
            for name in cls.HIDDEN:
                schema["input"][section].pop(name, None)
            order = schema["input_order"][section]
            schema["input_order"][section] = [n for n in order if n not in cls.HIDDEN]
        # where a UI file keeps them: [choice, index, option1, ...] (engine.comfy_workflow)
        schema["trailing_widgets"] = [["index", "INT"],
                                      *([name, "STRING"] for name in cls.HIDDEN[1:])]
        return schema

    def execute(self, ctx: ExecutionContext) -> tuple[str, int]:
        choice = check_text(self.TYPE, "choice", self.inputs.get("choice") or "")
        index = self.inputs.get("index")
        if index is None:
            options = [self.inputs.get(name) for name in self.HIDDEN[1:]]
            index = next((k for k, option in enumerate(options) if option == choice), 0)
        return choice, int(index)


# A COMBO without choices: any text passes, as ComfyUI skips its validation.
CustomCombo.INPUT_SPECS = {
    "choice": input_spec("choice", str, Input(..., type="COMBO")),
    "index": input_spec("index", int, Input(optional=True)),
    **{name: input_spec(name, str, Input(optional=True)) for name in CustomCombo.HIDDEN[1:]},
}


def parse_color(color: Any) -> tuple[int, int, int, float]:
    """``#RRGGBB`` or ``#RRGGBBAA`` → (r, g, b, alpha in 0..1)."""
    match = HEX_COLOR.fullmatch(color) if isinstance(color, str) else None
    if match is None or not color.startswith("#"):
        raise ValueError(f"color must be in format #RRGGBB or #RRGGBBAA, got "
                         f"{str(color)[:40]!r}")
    rgb = match[1]
    alpha = int(match[2], 16) / 255.0 if match[2] else 1.0
    return int(rgb[0:2], 16), int(rgb[2:4], 16), int(rgb[4:6], 16), alpha


class ColorToRGBInt(Node):
    """A color as one number, ``0xRRGGBB`` (what Empty Image's ``color`` takes), as its
    ``#RRGGBB`` text, and its alpha (``#RRGGBBAA``'s last two digits; 1.0 without)."""

    TYPE = "ColorToRGBInt"
    DISPLAY_NAME = "Color Picker"
    CATEGORY = "utils"
    OUTPUTS = (Output("INT", "rgb_int"), Output("STRING", "hex"), Output("FLOAT", "alpha"))

    # ComfyUI's COLOR widget; declared as text, which both front ends draw as a picker
    color: str = Input("#ffffff", description="'#RRGGBB' or '#RRGGBBAA'")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        try:
            parse_color(inputs.get("color"))
        except ValueError as exc:
            return [("color", str(exc))]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[int, str, float]:
        r, g, b, alpha = parse_color(self.color)
        return r * 256 * 256 + g * 256 + b, self.color[:7], alpha


class CreateList(NamedInputsNode):
    """Gather values into one list, in input order: the nodes it feeds then run once
    per item (e.g. several prompts or images through one sampler). A linked list adds
    all its items. Link one input to get the next (up to 10)."""

    TYPE = "CreateList"
    DISPLAY_NAME = "Create List"
    CATEGORY = "utils"
    INPUT_IS_LIST = True
    OUTPUTS = (Output("*", "list", is_list=True),)
    GROUP: ClassVar[str] = "inputs"
    PREFIX: ClassVar[str] = "input"

    def execute(self, ctx: ExecutionContext) -> tuple[list[Any]]:
        items: list[Any] = []
        for name in self.INPUT_SPECS:
            values = self.inputs.get(name)
            if values is None:
                continue
            items.extend(values)
            if len(items) > MAX_LIST_ITEMS:
                raise ValueError(f"Create List: more than {MAX_LIST_ITEMS} items")
        return (items,)


# ComfyUI's Autogrow: inputs.input0, ...; the first is required
CreateList.INPUT_SPECS = autogrow(CreateList.GROUP, CreateList.PREFIX, Any, Input(type="*"),
                                  prefix=CreateList.PREFIX, min=1, max=LIST_INPUTS)


def _latent_samples(latent: Any, name: str) -> torch.Tensor:
    import torch

    samples = getattr(latent, "samples", None)
    if not isinstance(samples, torch.Tensor) or samples.dim() not in (4, 5) \
            or 0 in samples.shape:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else None
        raise ValueError(f"{name} must be a LATENT with samples [B, C, h, w] (or a video's "
                         f"[B, C, t, h, w]), got {shape or type(latent).__name__}")
    return samples


class GetLatentSize(Node):
    """A latent's width and height (in latent pixels: an SD latent is 1/8 of the image),
    frame count (1 for an image latent) and batch size, as numbers for other nodes."""

    TYPE = "GetLatentSize"
    DISPLAY_NAME = "Get Image/Video Latent Size"
    CATEGORY = "latent"
    OUTPUTS = (Output("INT", "width", tooltip="The latent width."),
               Output("INT", "height", tooltip="The latent height."),
               Output("INT", "frames",
                      tooltip="The latent frame count. Image latents have one frame."),
               Output("INT", "batch_size", tooltip="The number of latents in the batch."))

    latent: Latent = Input(type="LATENT", description="The image or video latent to inspect")

    def execute(self, ctx: ExecutionContext) -> tuple[int, int, int, int]:
        samples = _latent_samples(self.latent, "latent")
        if samples.dim() == 5:
            batch, _, frames, height, width = samples.shape
        else:
            (batch, _, height, width), frames = samples.shape, 1
        return int(width), int(height), int(frames), int(batch)


class LatentCutToBatch(Node):
    """Slice latents into ``slice_size`` wide (x) or tall (y) strips and stack the strips
    as a batch: a batch of B latents w wide cut along x gives B * w/slice_size latents
    (each latent's strips in order, left to right). A remainder narrower than a slice is
    dropped; a slice_size past the size takes it whole. ``t`` (a video latent's frames)
    leaves an image latent unchanged, as in ComfyUI. Noise masks are cut along."""

    TYPE = "LatentCutToBatch"
    CATEGORY = "latent/advanced"
    OUTPUTS = (Output("LATENT"),)

    samples: Latent = Input(type="LATENT")
    dim: str = Input("t", choices=("t", "x", "y"))
    slice_size: int = Input(1, min=1, max=MAX_RESOLUTION, step=1)

    def execute(self, ctx: ExecutionContext) -> tuple[Latent]:
        from nodes.diffusion.handles import InpaintCondition
        from nodes.diffusion.masking import mask_to_latent
        from nodes.latent_ops import _plain, _tile

        latent = self.samples
        samples = _latent_samples(latent, "samples")
        _plain(latent, "samples", self.TYPE)
        if samples.dim() != 4:
            raise ValueError("LatentCutToBatch: video latents [B, C, t, h, w] are not "
                             "supported; cut an image latent along x or y")
        axis = {"x": 3, "y": 2, "t": 1}[self.dim]
        if axis < 2:  # ComfyUI's "t" of a 4-D latent is its channels: left unchanged
            return (latent,)
        size, batch = int(samples.shape[axis]), int(samples.shape[0])
        step = min(self.slice_size, size)
        keep = size // step * step

        def cut(value: torch.Tensor) -> torch.Tensor:
            moved = _tile(value, batch).movedim(axis, 1)[:, :keep]
            return moved.reshape(-1, step, *moved.shape[2:]).movedim(1, axis).contiguous()

        mask = latent.noise_mask
        if mask is not None:
            mask = cut(mask_to_latent(mask, tuple(samples.shape[-2:])))
        inpaint = latent.inpaint
        if inpaint is not None:
            inpaint = InpaintCondition(cut(inpaint.mask), cut(inpaint.masked_latents))
        # The rows are new latents: their seeds follow their new positions (batch_index
        # would name the old batch's items, which ComfyUI keeps by mistake).
        return (replace(latent, samples=cut(samples), noise_mask=mask, inpaint=inpaint,
                        batch_index=None, extension_results=()),)


def _check_compare_images(image: Any, name: str) -> bool:
    """Whether ``image`` has something to show (ComfyUI skips a missing or empty one)."""
    import torch

    from nodes.limits import check_image

    if image is None or (isinstance(image, torch.Tensor) and image.dim() == 4
                         and image.shape[0] == 0):
        return False
    check_image(image, name)
    return True


class ImageCompare(FrontEndWidgetNode):
    """Compare two images, e.g. before and after an edit: after a run the node shows them
    under one slider (in ComfyUI's front end and in Steerflow's canvas)."""

    TYPE = "ImageCompare"
    DISPLAY_NAME = "Image Compare"
    CATEGORY = "image"
    OUTPUT_NODE = True
    OUTPUTS = ()
    FRONTEND_WIDGETS = {"compare_view": any_value}

    image_a: Tensor = Input(type="IMAGE", optional=True)
    image_b: Tensor = Input(type="IMAGE", optional=True)
    # ComfyUI's slider widget; its value (if any) is not used.
    compare_view: Any = Input(type="IMAGECOMPARE", optional=True)

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        from nodes.image import save_images

        ui: dict[str, list[dict[str, str]]] = {"a_images": [], "b_images": []}
        token = secrets.token_hex(4)
        for side, image in (("a", self.image_a), ("b", self.image_b)):
            if _check_compare_images(image, f"image_{side}"):
                ui[f"{side}_images"] = save_images(image, ctx, "temp",
                                                   f"compare_{side}_{token}")
        ui["images"] = ui["a_images"] + ui["b_images"]
        return NodeResult((), ui)


def _check_capture_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"the capture must be an image name, got {type(value).__name__}")
    return value


class WebcamCapture(FrontEndWidgetNode):
    """A webcam picture: ComfyUI's front end shows the camera, and on Queue (with
    ``capture_on_queue``; else on its capture button) uploads a still to
    ``temp/webcam/``, whose name becomes ``image``. ``width`` and ``height`` are the
    capture's size (0: the camera's own); a still of another size is resized to them
    here (bilinear). Any image name Load Image takes also works."""

    TYPE = "WebcamCapture"
    DISPLAY_NAME = "Webcam Capture"
    CATEGORY = "image"
    OUTPUTS = (Output("IMAGE"),)
    FRONTEND_WIDGETS = {"image": _check_capture_name}

    image: str = Input(..., type="WEBCAM",
                       description="The uploaded capture, e.g. 'webcam/1.png [temp]'")
    width: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    height: int = Input(0, min=0, max=MAX_RESOLUTION, step=1)
    capture_on_queue: bool = Input(True)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        from nodes.image import LoadImage

        name = inputs.get("image")
        if not name or not isinstance(name, str) or not name.strip():
            return [("image", "no webcam capture: capture one in ComfyUI's front end, or "
                              "name an uploaded image ('x.png', 'webcam/x.png [temp]')")]
        try:
            role, path = LoadImage.locate(env, name)
        except PathError as exc:
            return [("image", str(exc))]
        if not path.is_file():
            return [("image", f"the capture {name!r} is not in the {role} folder")]
        return []

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        from nodes.image import LoadImage

        if inputs.get("capture_on_queue", True):
            return secrets.token_hex(8)  # ComfyUI's IS_CHANGED is NaN: always run
        return LoadImage.fingerprint({"image": inputs.get("image")}, env)

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        from nodes.diffusion.resize import common_upscale
        from nodes.image import LoadImage

        image, _ = LoadImage.model_construct(image=self.image).execute(ctx)
        if self.width > 0 and self.height > 0 \
                and tuple(image.shape[1:3]) != (self.height, self.width):
            image = common_upscale(image.movedim(-1, 1), self.width, self.height,
                                   "bilinear").movedim(1, -1)
        return (image,)


NODE_CLASSES = (CustomCombo, ColorToRGBInt, CreateList, GetLatentSize, LatentCutToBatch,
                ImageCompare, WebcamCapture)
