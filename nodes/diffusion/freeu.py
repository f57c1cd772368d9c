"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net") as a sampler extension.

In the two lowest-resolution up blocks of the UNet, FreeU re-weights what each ResNet
of the block receives, ``cat([h, skip])``:

* the *backbone* ``h`` (the up path's own features): its first half of channels is
  multiplied by ``b`` (``b1`` in the lowest-resolution block, ``b2`` in the next);
* the *skip* (the down path's features): its lowest spatial frequencies (the centre
  2x2 of the shifted 2-D spectrum) are multiplied by ``s`` (``s1`` / ``s2``).

FreeU v1 scales by the constant ``b``; ComfyUI's FreeU_V2 by ``1 + (b − 1) · m``, where
``m`` is the channel mean of ``h`` normalised to 0..1 per image (min-max over its
pixels), so the boost follows where the backbone is strong. The placement, the
constant-``b`` math and the Fourier filter are diffusers' (``UNet2DConditionModel.
enable_freeu``: ``resolution_idx`` 0 and 1, every ResNet of those blocks, its
``fourier_filter``), so v1 matches ``pipe.enable_freeu(s1, s2, b1, b2)``.

How the UNet is changed, for one run only: forward pre-hooks, no attribute and no
weight of the cached UNet changes. A pre-hook on each of the two up blocks filters the
skip tensors it receives (and notes their channel counts); a pre-hook on each of their
ResNets scales the backbone part of the ResNet's input. They are registered in the
``denoise`` phase (the sampler calls it once per run, after every extension's ``setup``
and inside the ``try`` whose ``finally`` runs ``teardown``) and removed in ``teardown``;
so a run that fails anywhere, even in a later extension's ``setup``, leaves no hook
behind, and FreeU's ``priority`` 0 runs its ``teardown`` before any other's. Every UNet
pass of the run goes through them (SAG's and PAG's passes too, as with diffusers'
attributes or ComfyUI's model patch). Several FreeU extensions on one model chain in
attachment order, as ComfyUI's output-block patches do.

Not diffusers' attributes (``enable_freeu`` sets ``s1 s2 b1 b2`` on the up blocks):
diffusers tests them for truth, so any value 0 (ComfyUI allows 0 for all four) would
turn FreeU off altogether, and two FreeU nodes would fight over one set of attributes.

Importing this module does not import torch (node schemas and validation stay light).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import Denoise, SamplerExtension

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

#: the up blocks FreeU acts on, by diffusers' ``resolution_idx`` (0: the lowest resolution)
STAGES = (0, 1)


def freeu_blocks(unet: Any) -> list[tuple[int, Any]]:
    """``(stage, up block)`` of the blocks FreeU acts on: those whose ``resolution_idx``
    (their index in ``up_blocks`` where a block has none) is 0 or 1, as diffusers'
    ``apply_freeu`` chooses them."""
    found = []
    for index, block in enumerate(getattr(unet, "up_blocks", None) or ()):
        stage = getattr(block, "resolution_idx", None)
        stage = index if stage is None else stage
        if stage in STAGES and getattr(block, "resnets", None) is not None:
            found.append((stage, block))
    return found


def backbone_scale(h: torch.Tensor, b: float, adaptive: bool) -> torch.Tensor | float:
    """The factor for the first half of the backbone's channels: ``b`` (v1), or
    ``1 + (b − 1) · m`` with ``m`` the channel mean of ``h`` min-max normalised per
    image (v2; ``[B, 1, H, W]``). A flat mean (max = min, e.g. a 1x1 map, where ComfyUI
    divides 0 by 0) gives m = 0: the backbone is left as it is."""
    if not adaptive:
        return b
    import torch

    mean = h.mean(1, keepdim=True)
    flat = mean.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1, 1) - low
    normalised = (mean - low) / span.clamp_min(torch.finfo(span.dtype).tiny)
    return (b - 1) * normalised + 1


@dataclass
class _FreeUState:
    #: hook handles on the UNet, removed in ``teardown``
    handles: list[Any] = field(default_factory=list)


class FreeU(SamplerExtension):
    """FreeU v1 (``adaptive`` False) or ComfyUI's FreeU_V2 (``adaptive`` True)."""

    # Its phases change no prediction, so the order matters only for ``teardown``: first,
    # so no other extension's failing teardown can keep the hooks on the UNet.
    priority = 0

    def __init__(self, b1: float, b2: float, s1: float, s2: float, adaptive: bool = False):
        self.b = {0: float(b1), 1: float(b2)}
        self.s = {0: float(s1), 1: float(s2)}
        self.adaptive = bool(adaptive)

    def setup(self, run: SamplingRun) -> None:
        if len(freeu_blocks(run.model.unet)) < len(STAGES):
            raise ValueError("FreeU needs a UNet with at least two up blocks (the two "
                             "lowest-resolution ones are re-weighted); this model has fewer")
        run.state[self] = _FreeUState()

    def denoise(self, run: SamplingRun, denoise: Denoise) -> Denoise:
        # Hooks go on here, not in setup: this phase runs inside the sampler's try, so
        # teardown removes them whatever fails afterwards (see the module docstring).
        self.install(run.model.unet, run.state[self].handles)
        return denoise

    def teardown(self, run: SamplingRun) -> None:
        state = run.state.pop(self, None)
        if state is not None:
            remove_hooks(state.handles)

    def install(self, unet: Any, handles: list[Any]) -> None:
        """Register the hooks on ``unet``, appending each handle to ``handles`` as it is
        made (so a failure part-way still leaves them all removable)."""
        for stage, block in freeu_blocks(unet):
            b, s = self.b[stage], self.s[stage]
            #: channel count of each ResNet's skip, in the order the block consumes them
            skips: list[int] = []
            handles.append(block.register_forward_pre_hook(
                _SkipFilter(s, skips), with_kwargs=True))
            if b == 1:
                continue  # the backbone stays as it is (v1 and v2 alike)
            for j, resnet in enumerate(block.resnets):
                handles.append(resnet.register_forward_pre_hook(
                    _BackboneScale(b, self.adaptive, skips, j), with_kwargs=True))


def remove_hooks(handles: list[Any]) -> None:
    while handles:
        handles.pop().remove()


@dataclass(eq=False)
class _SkipFilter:
    """Up-block pre-hook: low frequencies of every skip tensor × ``s``; notes their
    channel counts for the ResNets' hooks (the skip of ResNet ``j`` is the ``j``-th
    from the end of ``res_hidden_states_tuple``)."""

    s: float
    skips: list[int]

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        from diffusers.utils.torch_utils import fourier_filter

        # UNet2DConditionModel passes them by keyword; the block's signature allows both
        positional = "res_hidden_states_tuple" not in kwargs
        tensors = args[1] if positional else kwargs["res_hidden_states_tuple"]
        self.skips[:] = [t.shape[1] for t in reversed(tensors)]
        if self.s == 1:
            return args, kwargs
        filtered = tuple(fourier_filter(t, threshold=1, scale=self.s) for t in tensors)
        if positional:
            return (args[0], filtered, *args[2:]), kwargs
        return args, {**kwargs, "res_hidden_states_tuple": filtered}


@dataclass(eq=False)
class _BackboneScale:
    """ResNet pre-hook: its input is ``cat([h, skip])``; the first half of ``h``'s
    channels × :func:`backbone_scale`."""

    b: float
    adaptive: bool
    skips: list[int]
    index: int

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        import torch

        positional = bool(args)
        x = args[0] if positional else kwargs["input_tensor"]
        channels = x.shape[1] - self.skips[self.index]
        if channels <= 0:
            raise RuntimeError("FreeU: an up block's ResNet input is not cat([backbone, "
                               "skip]) as in diffusers' UpBlock2D / CrossAttnUpBlock2D")
        half = channels // 2
        scale = backbone_scale(x[:, :channels], self.b, self.adaptive)
        x = torch.cat([x[:, :half] * scale, x[:, half:]], dim=1)
        if positional:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "input_tensor": x}
