"""IP-Adapter nodes: load an IP-Adapter (models/ipadapter) and apply it to a model with a
reference image, so the picture steers generation alongside (or instead of) the prompt."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.clip_vision import ClipVision
from nodes.diffusion.handles import DiffusionModel, Tensor
from nodes.models import path_fingerprint, pickle_problem

FOLDER = "ipadapter"
SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


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
        path = env.resolve("models", FOLDER, inputs["ipadapter_file"])
        return path_fingerprint(path) if path.exists() else None

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
    give one set of tokens each, attended together; chain two Apply IP-Adapter nodes for
    two adapters or two images with their own weights. The CLIP vision model must be the
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

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        start, end = inputs.get("start_percent"), inputs.get("end_percent")
        if isinstance(start, float | int) and isinstance(end, float | int) and start >= end:
            return [("end_percent", f"end_percent ({end}) must be above start_percent "
                                    f"({start}), or the adapter never acts")]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        from nodes.diffusion.ip_adapter import IPAdapter, build_ip_adapter, image_embeds

        image = self.image
        if image.ndim != 4 or image.shape[0] == 0 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"Apply IP-Adapter: expected an IMAGE batch [B, H, W, C], got "
                             f"shape {tuple(image.shape)}")
        model = build_ip_adapter(self.ipadapter.state, self.model.unet, self.ipadapter.name)
        positive, negative = image_embeds(model, self.clip_vision, image, self.crop)
        width = positive.shape[-1]
        expected = _projection_input(model)
        if expected is not None and width != expected:
            raise ValueError(f"this CLIP vision model gives {width}-wide "
                             f"{'hidden states' if model.uses_hidden_states else 'embeddings'}"
                             f", IP-Adapter {self.ipadapter.name} reads {expected}: use the "
                             "CLIP vision model it was trained with")
        ext = IPAdapter(model, positive, negative, self.weight, self.start_percent,
                        self.end_percent)
        return (replace(self.model, extensions=(*self.model.extensions, ext)),)


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


NODE_CLASSES = (IPAdapterModelLoader, ApplyIPAdapter)
