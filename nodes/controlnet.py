"""ControlNet nodes: load a ControlNet (or a T2I-Adapter, as ComfyUI does) and apply it to
conditioning with a control image."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Environment, ExecutionContext, Input, Node, Output
from nodes.diffusion.controlnet_union import UNION_CHOICES
from nodes.diffusion.handles import Conditioning, Tensor, Vae
from nodes.models import file_fingerprint, pickle_problem

if TYPE_CHECKING:
    import torch

CONTROLNET_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def list_controlnets(env: Environment) -> list[str]:
    """Single files and diffusers folders (with config.json) under models/controlnet."""
    return env.list_files("models", "controlnet", suffixes=CONTROLNET_SUFFIXES,
                          dirs_with="config.json")


class ControlNetLoader(Node):
    """Load a ControlNet or a T2I-Adapter (diffusers folder or single .safetensors file) for
    SD 1.x / 2.x / SDXL. Which one the file holds is detected; both apply with Apply
    ControlNet, an adapter also with Apply T2I-Adapter. A ControlNet-Union (xinsir's
    controlnet-union-sdxl / ProMax file) loads too: pick its control type with
    SetUnionControlNetType."""

    TYPE = "ControlNetLoader"
    DISPLAY_NAME = "Load ControlNet Model"
    CATEGORY = "loaders"
    OUTPUTS = (Output("CONTROL_NET"),)

    control_net_name: str = Input(..., choices=list_controlnets,
                                  description="A file or diffusers folder in models/controlnet")

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        return file_fingerprint(env, inputs.get("control_net_name"), "models", "controlnet")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        return pickle_problem(inputs, env, "control_net_name", "models", "controlnet")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from diffusers import T2IAdapter

        from nodes.diffusion.controlnet import ControlNet
        from nodes.diffusion.controlnet_loading import load_control_model
        from nodes.diffusion.memory import device_budget
        from nodes.diffusion.t2i_adapter import Adapter

        path = ctx.env.resolve("models", "controlnet", self.control_net_name)
        if not path.exists():
            raise FileNotFoundError(
                f"ControlNet {self.control_net_name!r} not found in models/controlnet")
        # Bigger than the device's budget: it never goes there whole (place_model).
        model = load_control_model(path, allow_pickle=ctx.env.allow_pickle, device=ctx.device,
                                   budget=device_budget(ctx))
        if isinstance(model, T2IAdapter):
            return (Adapter(model, self.control_net_name),)
        return (ControlNet(model, self.control_net_name),)


def _check_percents(start: float, end: float) -> str | None:
    if start >= end:
        return f"start_percent ({start}) must be below end_percent ({end})"
    return None


def _with_extension(cond: Conditioning, extension: Any) -> Conditioning:
    """A new CONDITIONING whose every entry also carries ``extension``."""
    return Conditioning(tuple(
        replace(entry, options={**entry.options,
                                "extensions": (*entry.options.get("extensions", ()), extension)})
        for entry in cond.entries))


def _make_extension(control_net: Any, image: torch.Tensor, strength: float, start: float,
                    end: float, guess_mode: bool) -> Any:
    from nodes.diffusion.controlnet import ControlNetResiduals
    from nodes.diffusion.t2i_adapter import Adapter, T2IAdapterFeatures

    if image.dim() != 4:
        raise ValueError(f"image must be an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    problem = _check_percents(start, end)
    if problem:
        raise ValueError(problem)
    if isinstance(control_net, Adapter):
        if guess_mode:
            raise ValueError(f"{control_net.label} is a T2I-Adapter: guess_mode is a ControlNet "
                             "option, turn it off")
        return T2IAdapterFeatures(control_net, image, strength, start=start, end=end)
    return ControlNetResiduals(control_net, image, strength, start, end, guess_mode)


class ControlNetApplyAdvanced(Node):
    """Steer sampling with a ControlNet and a control image (edges, depth, pose, ...).

    Reproduces diffusers' StableDiffusionControlNetPipeline: the ControlNet acts on
    the steps whose fraction of the schedule lies within start..end, its residuals
    are scaled by ``strength``, and in ``guess_mode`` it sees only the positive
    prompt (residuals scaled 0.1 -> 1.0 from shallow to deep). The control image is
    used at the generation size; an image of another size is stretched to it with
    nearest-neighbour resampling (diffusers' rule for tensor images). Chain several
    of these nodes to combine ControlNets; their residuals add up.

    A T2I-Adapter from Load ControlNet Model applies here too (ComfyUI's way): its
    features are scaled by ``strength`` and added on the steps within start..end;
    guess_mode does not apply to it (Apply T2I-Adapter has diffusers' settings). A
    ControlNet-Union applies here too: set its control type first (SetUnionControlNetType).

    Using it well: the control image fixes where things go, the prompt says what they
    are, so the prompt should describe what the control shows and not fight it. On
    steerflow-shapes the control is a shape mask, white on black, at the generation
    size: prompt one shape for a one-shape mask ("a green star on a white background",
    as workflows/controlnet.json; the drawn shapes then match the mask at IoU 0.84 over
    50 prompts); a prompt naming another place or more shapes than the mask has pulls
    against the ControlNet. Connect the prompts
    through this node (both outputs into the sampler). To loosen the control, lower
    ``strength`` (diffusers' examples use 0.5-1.0) or end it earlier (``end_percent``
    0.5-0.8: the early steps fix the layout, the prompt then decides the details).
    ``guess_mode`` is for an empty or vague prompt: the ControlNet does the work alone.
    """

    TYPE = "ControlNetApplyAdvanced"
    DISPLAY_NAME = "Apply ControlNet"
    CATEGORY = "conditioning/controlnet"
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    positive: Conditioning = Input(type="CONDITIONING",
                                   description="The prompt: describe what the control shows")
    negative: Conditioning = Input(type="CONDITIONING")
    control_net: Any = Input(type="CONTROL_NET")
    image: Tensor = Input(type="IMAGE", description="The control image, 0..1")
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                            description="Scale of the ControlNet's residuals")
    start_percent: float = Input(0.0, min=0.0, max=1.0, step=0.001,
                                 description="Fraction of the steps before the ControlNet starts")
    end_percent: float = Input(1.0, min=0.0, max=1.0, step=0.001,
                               description="Fraction of the steps after which it stops")
    guess_mode: bool = Input(False, description="ControlNet on the positive prompt only, "
                                                "deeper residuals weighted more")
    # ComfyUI's optional input (its SD3 / Flux ControlNets take a VAE-encoded hint);
    # SD 1.x ControlNets and T2I-Adapters take the pixels, so it is accepted unused
    # and ComfyUI graphs that link it (its T2I-Adapter template) load as drawn.
    vae: Vae | None = Input(type="VAE", optional=True,
                            description="Unused here: SD 1.x ControlNets take pixels "
                                        "(ComfyUI's input, kept for its graphs)")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        if "start_percent" in inputs and "end_percent" in inputs:
            problem = _check_percents(inputs["start_percent"], inputs["end_percent"])
            if problem:
                return [("end_percent", problem)]
        return []

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning, Conditioning]:
        if self.strength == 0.0:
            return self.positive, self.negative
        ext = _make_extension(self.control_net, self.image, self.strength, self.start_percent,
                              self.end_percent, self.guess_mode)
        # One object on both sides: the sampler runs it once, over the whole CFG batch.
        return _with_extension(self.positive, ext), _with_extension(self.negative, ext)


class ControlNetApply(Node):
    """Apply a ControlNet to one conditioning (ComfyUI's older node).

    The ControlNet steers only the half of the guidance batch that this
    conditioning feeds (connect it on the positive prompt), over every step.
    Apply ControlNet (the newer node) has the start/end window and its help says how
    to use a ControlNet well: the prompt should describe what the control image shows.
    """

    TYPE = "ControlNetApply"
    DISPLAY_NAME = "Apply ControlNet (Old)"
    CATEGORY = "conditioning/controlnet"
    DEPRECATED = True
    OUTPUTS = (Output("CONDITIONING"),)

    conditioning: Conditioning = Input(type="CONDITIONING",
                                       description="The positive prompt's conditioning")
    control_net: Any = Input(type="CONTROL_NET")
    image: Tensor = Input(type="IMAGE", description="The control image, 0..1")
    strength: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                            description="Scale of the ControlNet's residuals")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        if self.strength == 0.0:
            return (self.conditioning,)
        ext = _make_extension(self.control_net, self.image, self.strength, 0.0, 1.0, False)
        return (_with_extension(self.conditioning, ext),)


class SetUnionControlNetType(Node):
    """Choose which kind of control image a ControlNet-Union (xinsir's ControlNet++,
    controlnet-union-sdxl) gets: openpose, depth, edges (hed/pidi/scribble/ted), lines
    (canny/lineart/anime_lineart/mlsd), normal, segment, tile or repaint.

    Returns a copy of the ControlNet with the type set; apply it with Apply ControlNet as
    usual. For several kinds of control at once, load the union model once, set each type
    on its own branch and chain one Apply ControlNet per image: each runs the model with
    its type and their effects add up. Set the type that matches the image (a depth map
    with ``depth``, a Canny edge map with ``canny/...``). ``auto`` (also what a union model
    does without this node) passes no type, as ComfyUI does: the hint goes in without its
    type embedding, so prefer the matching type. ``tile`` and ``repaint`` need the ProMax
    weights (8 types); the first release knows 6 and refuses them. On a plain ControlNet
    or a T2I-Adapter the type does nothing (as in ComfyUI; a warning says so).
    """

    TYPE = "SetUnionControlNetType"
    DISPLAY_NAME = "SetUnionControlNetType"
    CATEGORY = "conditioning/controlnet"
    OUTPUTS = (Output("CONTROL_NET"),)

    control_net: Any = Input(type="CONTROL_NET", description="A union ControlNet")
    type: str = Input("auto", choices=list(UNION_CHOICES),
                      description="The kind of control image it will get")

    def execute(self, ctx: ExecutionContext) -> tuple[Any]:
        from nodes.diffusion.controlnet import ControlNet
        from nodes.diffusion.controlnet_union import check_type

        net = self.control_net
        if isinstance(net, ControlNet) and net.is_union:
            types = check_type(net.model, self.type, net.name or "this ControlNet-Union")
            return (replace(net, control_types=types),)
        if self.type != "auto" and ctx is not None:
            ctx.warn(f"{getattr(net, 'name', '') or 'this model'} is not a union ControlNet: "
                     f"type {self.type!r} does nothing (load a controlnet-union model)")
        return (net,)


NODE_CLASSES = (ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply,
                SetUnionControlNetType)
