"""Deep Shrink (Kohya's "PatchModelAddDownscale") as a sampler extension.

Early in sampling, while the composition is decided, the UNet's hidden state is shrunk
by ``downscale_factor`` after one of its input blocks, so the deeper layers see the
image at the size they were trained on; on the way up each hidden state is resized back
to the skip connection it is joined with. Images larger than the model's native size
then keep one subject instead of repeating it, and the later steps (full size) add the
detail. Outside ``[start_percent, end_percent]`` of the schedule the UNet runs as it is.

Block numbers are ComfyUI's input blocks of the original UNet layout: 0 is ``conv_in``;
then each down block's layers (a ResNet with its attention), then its downsampler. On
SD 1.x: 1-2 the first level, 3 its downsampler, 4-5, 6, 7-8, 9, 10-11; on SDXL 1-2, 3,
4-5, 6, 7-8. ``downscale_after_skip`` (the default) shrinks only what flows on, keeping
that block's own skip connection at full size.

How the UNet is changed, for one run only: forward hooks, removed in ``teardown`` (as
FreeU's). The hooks that resize on the way up act only where sizes differ, so they are
idle in the steps outside the range. A ControlNet's residuals are made for the full-size
skips: while shrinking they are added by the hooks instead, each resized to the skip it
belongs to (ComfyUI drops the ones that no longer fit); a T2I-Adapter's likewise. Inside
MultiDiffusion's windows and area regions the same hooks resize the window's residuals.

Every UNet pass decides from its own timestep whether it shrinks, so an extension's
own pass (Attend-and-Excite's before the step, SAG's degraded one) runs as the step's
main pass does; the shrunk sizes are taught to the attention store, so readers of
attention maps (SAG, Attend-and-Excite) know their grids. A latent the shrink makes
too small for the UNet's group norms is refused before the first step.

Importing this module does not import torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from nodes.diffusion.extensions import Denoise, SamplerExtension, Step, UNetCall
from nodes.diffusion.freeu import remove_hooks

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")


def input_blocks(unet: Any) -> list[tuple[int, int | None]]:
    """ComfyUI's input blocks 1, 2, ... as ``(down block, layer)``; layer None is the
    block's downsampler."""
    blocks: list[tuple[int, int | None]] = []
    for i, block in enumerate(unet.down_blocks):
        blocks.extend((i, j) for j in range(len(block.resnets)))
        if getattr(block, "downsamplers", None):
            blocks.append((i, None))
    return blocks


def resize(x: torch.Tensor, size: tuple[int, int], method: str) -> torch.Tensor:
    from nodes.diffusion.resize import common_upscale

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return common_upscale(x, int(size[1]), int(size[0]), method)


def fit(ext: DeepShrink, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A residual ``x`` resized to ``size``, the hidden state it is added to."""
    smaller = size[0] * size[1] < x.shape[-2] * x.shape[-1]
    return resize(x, size, ext.downscale_method if smaller else ext.upscale_method)


def _small_size(height: int, width: int, factor: float) -> tuple[int, int]:
    return (max(round(height / factor), 1), max(round(width / factor), 1))


def _first(output: Any) -> torch.Tensor:
    return output if not isinstance(output, tuple) else output[0]


def _with_first(output: Any, value: torch.Tensor) -> Any:
    return value if not isinstance(output, tuple) else (value, *output[1:])


@dataclass
class _State:
    #: MultiDiffusion's windows and area regions see this one object, not a copy each:
    #: the hooks hold it, so a window pass's residuals (set in ``unet_inputs``) must
    #: reach them here
    shared_by_windows: ClassVar[bool] = True
    handles: list[Any] = field(default_factory=list)
    active: bool = False
    #: a ControlNet's residuals taken from this pass's call, added by the hooks instead
    down_residuals: list[torch.Tensor] | None = None
    mid_residual: torch.Tensor | None = None
    #: a T2I-Adapter's residual list of this pass (the UNet pops it block by block)
    intrablock: list[torch.Tensor] | None = None
    #: skip tensors the up blocks have consumed in this pass (from the end)
    consumed: int = 0
    #: the scheduler's training timesteps: each pass sets ``active`` from its own
    #: timestep (None: ``active`` is left as set, e.g. by a test)
    train_timesteps: int | None = None
    #: the run's attention store, taught the shrunk sizes (None: none to teach)
    store: Any = None


class DeepShrink(SamplerExtension):
    """Shrink the hidden state after input block ``block_number`` by ``factor`` while
    the step's noise level lies in ``[start_percent, end_percent]`` of the schedule."""

    priority = 950  # its unet_inputs runs after a ControlNet's has set the residuals
    handles_large_latents = True

    def __init__(self, block_number: int, factor: float, start_percent: float,
                 end_percent: float, after_skip: bool = True,
                 downscale_method: str = "bicubic", upscale_method: str = "bicubic"):
        self.block_number = int(block_number)
        self.factor = float(factor)
        self.span = (float(start_percent), float(end_percent))
        self.after_skip = bool(after_skip)
        self.downscale_method, self.upscale_method = downscale_method, upscale_method

    def setup(self, run: SamplingRun) -> None:
        unet = run.model.unet
        blocks = input_blocks(unet)
        if self.block_number > len(blocks):
            raise ValueError(f"block_number {self.block_number} is past this UNet's "
                             f"{len(blocks)} input blocks (1-{len(blocks)})")
        if self.factor < 1:  # a factor below 1 enlarges the deeper levels: will they fit?
            self._check_enlarged(run, sum(j is None for _, j in blocks[:self.block_number]))
        from nodes.diffusion.combine import active  # imports torch

        train = int(run.scheduler.config.num_train_timesteps)
        if any(active(self.span, float(t), train) for t in run.timesteps):
            self._check_normalisable(unet, tuple(int(s) for s in run.init_latents.shape[-2:]))
        run.state[self] = _State(train_timesteps=train, store=run.attention)

    def shrink_level(self, unet: Any) -> tuple[int, bool]:
        """The UNet level whose hidden state is shrunk, and whether the shrink comes
        after that level's first ResNet (inside the level) rather than at its input."""
        blocks = input_blocks(unet)
        level = sum(j is None for _, j in blocks[:self.block_number])
        return level, blocks[self.block_number - 1][1] is not None

    def shrunk_sizes(self, unet: Any, height: int, width: int) -> list[tuple[int, int]]:
        """The hidden state's (h, w) while shrinking, from the shrunk level down (each
        downsampler halves it, rounding up)."""
        level, _ = self.shrink_level(unet)
        for _ in range(level):
            height, width = -(-height // 2), -(-width // 2)
        sizes = [_small_size(height, width, self.factor)]
        for _ in range(len(unet.down_blocks) - 1 - level):
            h, w = sizes[-1]
            sizes.append((-(-h // 2), -(-w // 2)))
        return sizes

    def _check_normalisable(self, unet: Any, latent: tuple[int, int]) -> None:
        """Refuse a shrink that leaves one pixel at a level whose group norm has one
        channel per group (the rule of ``sampling.check_latent_size``): torch would stop
        there with "Expected more than 1 value per channel", or, with guidance's batch
        of two, normalise each value to nothing."""
        config = unet.config
        channels = list(getattr(config, "block_out_channels", ()) or ())
        groups = int(getattr(config, "norm_num_groups", 0) or 0)
        if not groups or not channels:
            return
        level, inside = self.shrink_level(unet)
        for offset, size in enumerate(self.shrunk_sizes(unet, *latent)):
            here = level + offset
            # a level's first ResNet normalises what the level above handed down,
            # unless the shrink comes after it
            above = channels[here] if offset == 0 and inside else channels[max(here - 1, 0)]
            if min(channels[here], above) // groups <= 1 and size == (1, 1):
                raise ValueError(
                    f"Deep Shrink's downscale_factor {self.factor:g} at block_number "
                    f"{self.block_number} shrinks the {latent[1]}x{latent[0]} latent to "
                    f"{size[1]}x{size[0]} at the UNet's level {here}, one pixel this model "
                    "cannot normalise; use a smaller downscale_factor or make the "
                    "image larger")

    def _check_enlarged(self, run: SamplingRun, level: int) -> None:
        from nodes.diffusion.sampling import unet_activation_bytes
        from nodes.limits import check_fits

        batch, _, height, width = run.init_latents.shape
        rows = batch * (2 if run.do_cfg else 1)
        size = (height / 2 ** level / self.factor, width / 2 ** level / self.factor)
        check_fits(unet_activation_bytes(run.model.unet, rows, round(size[0]), round(size[1])),
                   run.init_latents.device,
                   f"Deep Shrink's downscale_factor {self.factor:g} (the UNet's level "
                   f"{level} at {size[1]:.0f}x{size[0]:.0f} latent pixels)",
                   "use a downscale_factor of 1 or more")

    def denoise(self, run: SamplingRun, denoise: Denoise) -> Denoise:
        # hooks go on here, inside the sampler's try (see FreeU): teardown removes them
        self.install(run.model.unet, run.state[self])
        return denoise

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        from nodes.diffusion.combine import active  # imports torch

        state = run.state[self]
        state.active = active(self.span, float(step.timestep),
                              int(run.scheduler.config.num_train_timesteps))
        state.intrablock = call.down_intrablock_additional_residuals
        if state.active and call.down_block_additional_residuals is not None:
            state.down_residuals = list(call.down_block_additional_residuals)
            state.mid_residual = call.mid_block_additional_residual
            call.down_block_additional_residuals = call.mid_block_additional_residual = None

    def teardown(self, run: SamplingRun) -> None:
        state = run.state.pop(self, None)
        if state is not None:
            remove_hooks(state.handles)

    # --- the hooks ----------------------------------------------------------------------

    def install(self, unet: Any, state: _State) -> None:
        i, j = input_blocks(unet)[self.block_number - 1]
        down = unet.down_blocks[i]
        # a shrink inside block i before its last layer's output: the block's own
        # T2I-Adapter residual (added to that output) meets the shrunk h
        inside = j is not None and (j < len(down.resnets) - 1 or not self.after_skip)
        shrink = _Shrink(self, state, i if inside else None)
        add = state.handles.append
        if j is None and self.after_skip:  # the block's output h, not its skips
            add(down.register_forward_hook(shrink.block_output))
        elif j is None:
            add(down.downsamplers[0].register_forward_hook(shrink.module_output))
        elif not self.after_skip:
            layer = down.attentions[j] if getattr(down, "attentions", None) else down.resnets[j]
            add(layer.register_forward_hook(shrink.module_output))
        else:  # the next module that reads h after this layer's skip was taken
            if j + 1 < len(down.resnets):
                target = down.resnets[j + 1]
            elif getattr(down, "downsamplers", None):
                target = down.downsamplers[0]
            elif i + 1 < len(unet.down_blocks):
                target = unet.down_blocks[i + 1]
            else:
                target = unet.mid_block
            add(target.register_forward_pre_hook(shrink.module_input, with_kwargs=True))
        for k, block in enumerate(unet.down_blocks):  # T2I-Adapter residuals: to h's size
            if getattr(block, "attentions", None):  # handed to the block
                add(block.register_forward_pre_hook(functools.partial(shrink.intrablock, k),
                                                    with_kwargs=True))
            else:  # added by the UNet to the block's output, popped from the list after
                add(block.register_forward_hook(shrink.intrablock_after))
        if unet.mid_block is not None:
            add(unet.mid_block.register_forward_hook(shrink.mid_output))
        add(unet.register_forward_pre_hook(shrink.new_pass, with_kwargs=True))
        for block in unet.up_blocks:
            _UpBlockHooks(self, state, block).install()


@dataclass(eq=False)
class _Shrink:
    """The down-path hooks of one run."""

    ext: DeepShrink
    state: _State
    #: the down block that shrinks h before its last layer's output, if one does
    inside: int | None = None

    def small_size(self, height: int, width: int) -> tuple[int, int]:
        return _small_size(height, width, self.ext.factor)

    def small(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, self.small_size(*x.shape[-2:]), self.ext.downscale_method)

    def new_pass(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A UNet pass begins: whether it shrinks follows its own timestep, so a pass an
        extension makes outside the sampler's (Attend-and-Excite's, before the step's
        ``unet_inputs``) shrinks exactly when the step's main pass does."""
        from nodes.diffusion.combine import active  # imports torch

        state = self.state
        state.consumed = 0
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        if state.train_timesteps is not None and t is not None:
            t = float(t.flatten()[0]) if hasattr(t, "flatten") else float(t)
            state.active = active(self.ext.span, t, state.train_timesteps)
        sample = args[0] if args else kwargs.get("sample")
        if state.active and state.store is not None and sample is not None:
            # the attention store's grids for this pass's shrunk token counts
            for h, w in self.ext.shrunk_sizes(module, *sample.shape[-2:]):
                state.store.sizes.setdefault(h * w, (h, w))

    def block_output(self, module: Any, args: Any, output: Any) -> Any:
        if not self.state.active:
            return output
        return (self.small(output[0]), *output[1:])

    def module_output(self, module: Any, args: Any, output: Any) -> Any:
        if not self.state.active:
            return output
        return _with_first(output, self.small(_first(output)))

    def module_input(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                     ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not self.state.active:
            return args, kwargs
        if args:
            return (self.small(args[0]), *args[1:]), kwargs
        name = "input_tensor" if "input_tensor" in kwargs else "hidden_states"
        return args, {**kwargs, name: self.small(kwargs[name])}

    def intrablock(self, index: int, module: Any, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        extra = kwargs.get("additional_residuals")
        if extra is None:
            return args, kwargs
        h = args[0] if args else kwargs["hidden_states"]
        size = tuple(h.shape[-2:])
        if self.state.active and index == self.inside:
            size = self.small_size(*size)
        return args, {**kwargs, "additional_residuals": fit(self.ext, extra, size)}

    def intrablock_after(self, module: Any, args: Any, output: Any) -> None:
        pending = self.state.intrablock
        if pending:
            pending[0] = fit(self.ext, pending[0], tuple(output[0].shape[-2:]))

    def mid_output(self, module: Any, args: Any, output: Any) -> Any:
        residual, self.state.mid_residual = self.state.mid_residual, None
        if residual is None:
            return output
        h = _first(output)
        return _with_first(output, h + fit(self.ext, residual, tuple(h.shape[-2:])))


@dataclass(eq=False)
class _UpBlockHooks:
    """An up block joins ``cat([h, skip_j])`` before ResNet ``j``: h is resized to skip
    ``j``'s size where they differ (at the block's input for j = 0, at the output of
    layer j − 1 after), and a ControlNet's residuals taken while shrinking are added to
    the skips, each resized to its skip."""

    ext: DeepShrink
    state: _State
    block: Any
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def install(self) -> None:
        add = self.state.handles.append
        add(self.block.register_forward_pre_hook(self.block_input, with_kwargs=True))
        layers = (self.block.attentions if getattr(self.block, "attentions", None)
                  else self.block.resnets)
        for j, layer in enumerate(layers[:-1]):
            add(layer.register_forward_hook(self._to_skip(j + 1)))

    def block_input(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        positional = "res_hidden_states_tuple" not in kwargs
        skips = args[1] if positional else kwargs["res_hidden_states_tuple"]
        skips = self._with_residuals(tuple(skips))
        self.sizes[:] = [tuple(t.shape[-2:]) for t in reversed(skips)]
        h = args[0] if args else kwargs["hidden_states"]
        h = resize(h, self.sizes[0], self.ext.upscale_method)
        if positional:
            return (h, skips, *args[2:]), kwargs
        if args:
            return (h, *args[1:]), {**kwargs, "res_hidden_states_tuple": skips}
        return args, {**kwargs, "hidden_states": h, "res_hidden_states_tuple": skips}

    def _with_residuals(self, skips: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        residuals = self.state.down_residuals
        end = len(residuals) - self.state.consumed if residuals is not None else 0
        self.state.consumed += len(skips)
        if residuals is None:
            return skips
        mine = residuals[end - len(skips):end]
        if end - len(skips) <= 0:
            self.state.down_residuals = None  # all added: none for a later pass (SAG's)
        return tuple(s + fit(self.ext, r, tuple(s.shape[-2:]))
                     for s, r in zip(skips, mine, strict=True))

    def _to_skip(self, j: int) -> Any:
        def hook(module: Any, args: Any, output: Any) -> Any:
            h = _first(output)
            if j >= len(self.sizes) or tuple(h.shape[-2:]) == self.sizes[j]:
                return output
            return _with_first(output, resize(h, self.sizes[j], self.ext.upscale_method))
        return hook
