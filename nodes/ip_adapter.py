"""IP-Adapter nodes: load an IP-Adapter (models/ipadapter) and apply it to a model with a
reference image, so the picture steers generation alongside (or instead of) the prompt."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.clip_vision import ClipVision
from nodes.diffusion.handles import DiffusionModel, Tensor
from nodes.models import file_fingerprint, pickle_problem

FOLDER = "ipadapter"
SUFFIXES = (".safetensors", ".sft", ".bin", ".pth", ".pt")


@dataclass(frozen=True, eq=False)
class IPAdapterFile:
    """IPADAPTER: an IP-Adapter's weights as read (built against a UNet when applied)."""

    state: dict[str, dict[str, Any]]
    name: str


def list_ip_adapters(env: Environment) -> list[str]:
    return env.list_files("models", FOLDER, suffixes=SUFFIXES)


class IPAdapterModelLoader(Node):
    """Load an IP-Adapter from models/ipadapter: the original release's files
    (``ip-adapter_sd15.safetensors``, ``ip-adapter-plus_sd15``, ``-plus-face``,
    ``-full-face``, the SDXL ones), safetensors or, with --allow-pickle, ``.bin``.
    Pair it with the CLIP vision model it was trained with (ViT-H for SD 1.5's, ViT-bigG
    for ``ip-adapter_sdxl``) and apply it with Apply IP-Adapter."""

    TYPE = "IPAdapterModelLoader"
    DISPLAY_NAME = "Load IP-Adapter"
    CATEGORY = "loaders"
    OUTPUTS = (Output("IPADAPTER"),)

    ipadapter_file: str = Input(..., choices=list_ip_adapters,
                                description="A file in models/ipadapter")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get("ipadapter_file"), "models", FOLDER)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "ipadapter_file", "models", FOLDER)

    def execute(self, ctx: ExecutionContext) -> tuple[IPAdapterFile]:
        from nodes.diffusion.ip_adapter import read_ip_adapter_file

        path = ctx.env.resolve("models", FOLDER, self.ipadapter_file)
        if not path.is_file():
            raise FileNotFoundError(f"IP-Adapter {self.ipadapter_file!r} not found in "
                                    f"models/{FOLDER}")
        state = read_ip_adapter_file(path, allow_pickle=ctx.env.allow_pickle)
        return (IPAdapterFile(state, self.ipadapter_file),)


class ApplyIPAdapter(Node):
    """Steer a model with a reference image (IP-Adapter, Ye et al. 2023): every
    cross-attention layer also attends to tokens made from the image by CLIP, so the
    result takes the image's subject, colours and style while the prompt still acts.
    Reproduces diffusers' ``load_ip_adapter`` + ``set_ip_adapter_scale``.

    How to use it well: ``weight`` 0.5-0.8 blends image and prompt (diffusers' examples
    use 0.5-0.6); 1.0 follows the image closely and a prompt that contradicts it loses;
    above 1 it overrides the prompt and may burn the image. A short prompt ("best
    quality") with weight 1 is an image variation. ``start_percent`` / ``end_percent``
    limit it to part of the steps, as a ControlNet's: ending at 0.5-0.7 keeps the image's
    layout and colours but lets the prompt finish the details. Several images in one batch
    give one set of tokens each, attended together; with ``attn_mask`` (one mask per
    image) each image steers only its region, e.g. one picture for the left half and
    another for the right. Chain two Apply IP-Adapter nodes for two adapters or two images
    with their own weights. The CLIP vision model must be the
    one the adapter was trained with. Combines with ControlNets, T2I-Adapters, LoRAs,
    SEGA, masks and the other attention techniques in one run (the conditional entry and
    extra entries see the image; the unconditional one a blank image).
    """

    TYPE = "ApplyIPAdapter"
    DISPLAY_NAME = "Apply IP-Adapter"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    ipadapter: IPAdapterFile = Input(type="IPADAPTER")
    clip_vision: ClipVision = Input(type="CLIP_VISION",
                                    description="The image encoder the adapter was trained with")
    image: Tensor = Input(type="IMAGE", description="The reference image(s)")
    weight: float = Input(1.0, min=-1.0, max=5.0, step=0.05,
                          description="How strongly the image steers (diffusers' scale)")
    start_percent: float = Input(0.0, min=0.0, max=1.0, step=0.001,
                                 description="The share of steps before it starts acting")
    end_percent: float = Input(1.0, min=0.0, max=1.0, step=0.001,
                               description="The share of steps after which it stops")
    crop: str = Input("center", choices=("center", "none"),
                      description="How the image is fitted to CLIP's square input")
    attn_mask: Tensor | None = Input(
        type="MASK", optional=True,
        description="Where the image acts (1) and where not (0); one mask, or one per "
                    "reference image (each image then steers its own region)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return _window_problem(inputs, "start_percent", "end_percent")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        return (apply_ip_adapter(self.model, self.ipadapter, self.clip_vision, self.image,
                                 self.weight, self.start_percent, self.end_percent, self.crop,
                                 mask=self.attn_mask),)


#: ComfyUI_IPAdapter_plus's choices that Steerflow runs (the first of each is its default)
WEIGHT_TYPES = ("linear",)
COMBINE_EMBEDS = ("concat", "average")
EMBEDS_SCALING = ("V only",)
_PLUS_WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out",
                      "weak input", "weak output", "weak middle", "strong middle",
                      "style transfer", "composition", "strong style transfer",
                      "style and composition", "style transfer precise",
                      "composition precise")


class IPAdapterAdvanced(Node):
    """ComfyUI_IPAdapter_plus's "IPAdapter Advanced" node (its inputs and widget order),
    so workflows made with that pack run: the same IP-Adapter as Apply IP-Adapter, with
    an optional negative image (instead of a blank one) and several reference images
    concatenated or averaged, and an attention mask. Steerflow runs its defaults —
    weight type ``linear``, ``V only`` scaling — and refuses the pack's other weight types
    with a message; ``start_at`` / ``end_at`` are the share of the steps, as Apply
    ControlNet's here."""

    TYPE = "IPAdapterAdvanced"
    DISPLAY_NAME = "IPAdapter Advanced"
    CATEGORY = "model_patches/unet"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    ipadapter: IPAdapterFile = Input(type="IPADAPTER")
    image: Tensor = Input(type="IMAGE")
    weight: float = Input(1.0, min=-1.0, max=5.0, step=0.05)
    weight_type: str = Input("linear", choices=_PLUS_WEIGHT_TYPES)
    combine_embeds: str = Input("concat", choices=("concat", "add", "subtract", "average",
                                                   "norm average"))
    start_at: float = Input(0.0, min=0.0, max=1.0, step=0.001)
    end_at: float = Input(1.0, min=0.0, max=1.0, step=0.001)
    embeds_scaling: str = Input("V only", choices=("V only", "K+V", "K+V w/ C penalty",
                                                   "K+mean(V) w/ C penalty"))
    image_negative: Tensor | None = Input(type="IMAGE", optional=True)
    attn_mask: Tensor | None = Input(type="MASK", optional=True)
    clip_vision: ClipVision | None = Input(type="CLIP_VISION", optional=True)

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for name, supported in (("weight_type", WEIGHT_TYPES),
                                ("combine_embeds", COMBINE_EMBEDS),
                                ("embeds_scaling", EMBEDS_SCALING)):
            value = inputs.get(name)
            if isinstance(value, str) and value not in supported:
                problems.append((name, f"{name} {value!r} is not supported here; Steerflow "
                                       f"runs {', '.join(map(repr, supported))}"))
        return problems + _window_problem(inputs, "start_at", "end_at")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        if self.clip_vision is None:
            raise ValueError("connect the CLIP vision model the IP-Adapter was trained with "
                             "(Load CLIP Vision) to clip_vision")
        return (apply_ip_adapter(self.model, self.ipadapter, self.clip_vision, self.image,
                                 self.weight, self.start_at, self.end_at, "center",
                                 negative_image=self.image_negative,
                                 average=self.combine_embeds == "average",
                                 mask=self.attn_mask),)


def _window_problem(inputs: dict[str, Any], start_name: str, end_name: str
                    ) -> list[tuple[str | None, str]]:
    """An issue when the step window ends before it starts (the adapter would never act)."""
    start, end = inputs.get(start_name), inputs.get(end_name)
    if isinstance(start, float | int) and isinstance(end, float | int) and start >= end:
        return [(end_name, f"{end_name} ({end}) must be above {start_name} ({start}), or "
                           "the adapter never acts")]
    return []


def apply_ip_adapter(model: DiffusionModel, ipadapter: IPAdapterFile, clip_vision: ClipVision,
                     image: Tensor, weight: float, start: float, end: float, crop: str, *,
                     negative_image: Tensor | None = None, average: bool = False,
                     mask: Tensor | None = None) -> DiffusionModel:
    """``model`` with an IP-Adapter extension for ``image`` attached."""
    import torch

    from nodes.diffusion.ip_adapter import IPAdapter, build_ip_adapter, image_embeds
    from nodes.limits import check_image

    for picture, what in ((image, "image"), (negative_image, "image_negative")):
        if picture is not None:
            check_image(picture, f"IP-Adapter {what}")
            if not torch.isfinite(picture).all():
                raise ValueError(f"the IP-Adapter {what} holds NaN or infinite values: fix the "
                                 "node that made it")
    adapter = build_ip_adapter(ipadapter.state, model.unet, ipadapter.name)
    positive, negative = image_embeds(adapter, clip_vision, image, crop, negative_image)
    width = positive.shape[-1]
    expected = _projection_input(adapter)
    if expected is not None and width != expected:
        raise ValueError(f"this CLIP vision model gives {width}-wide "
                         f"{'hidden states' if adapter.uses_hidden_states else 'embeddings'}, "
                         f"IP-Adapter {ipadapter.name} reads {expected}: use the CLIP vision "
                         "model it was trained with")
    if average:  # one set of tokens from the mean embedding (IPAdapter_plus's "average")
        positive, negative = (e.mean(dim=1, keepdim=True) for e in (positive, negative))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or 0 in mask.shape or not torch.isfinite(mask).all():
            raise ValueError(f"the IP-Adapter attn_mask must be a MASK [B, H, W] of finite "
                             f"values, got shape {tuple(mask.shape)}")
        if mask.shape[0] not in (1, positive.shape[1]):
            raise ValueError(f"IP-Adapter: {mask.shape[0]} masks for {positive.shape[1]} "
                             "reference images; give one mask, or one per image")
    ext = IPAdapter(adapter, positive, negative, weight, start, end, mask)
    return replace(model, extensions=(*model.extensions, ext))


def _projection_input(model: Any) -> int | None:
    """The width the image projection reads (embeddings or hidden states)."""
    proj = model.image_proj
    for name in ("image_embeds", "proj_in", "ff"):
        module = getattr(proj, name, None)
        if name == "ff" and module is not None:
            module = module.net[0].proj
        weight = getattr(module, "weight", None)
        if weight is not None:
            return int(weight.shape[1])
    return None


NODE_CLASSES = (IPAdapterModelLoader, ApplyIPAdapter, IPAdapterAdvanced)
