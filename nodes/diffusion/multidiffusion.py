"""MultiDiffusion (Bar-Tal et al. 2023): one denoising step made of many windows.

Each step every window (view) of the latent is denoised on its own — the UNet pass
with every other extension's phases, guidance, then the scheduler step, each window
batch with its own scheduler state (so multistep schedulers keep one history per
window; DPM++ SDE's Brownian noise is the whole latent's, cropped: :class:`CanvasNoise`)
— and the overlapping results are averaged per latent pixel (the paper's
equation 5). The math is diffusers' ``StableDiffusionPanoramaPipeline`` step for step
(``get_views``, ``view_batch_size``, ``views_scheduler_status``, the count/value
average, ``circular_padding``), so results match it. ``view_weights`` "gaussian" weighs
each window by a Gaussian bump instead (Mixture of Diffusers, Jiménez 2023), so the
average changes smoothly where a window starts or ends. Two differences where the
pipeline misbehaves: a grid that does not reach the last rows or columns gets
one more window flush with the edge (the pipeline leaves that strip at zero), and
circular windows of a panorama more than one window high are placed correctly (the
pipeline's indexing fails there).

Other extensions act inside each window: while a window batch runs, the run's
``init_latents``, ``noise`` and per-run state are that window's (:func:`windows_of`):
state tensors laid out on the canvas (a ControlNet's control image, an inpainting
UNet's channels, a T2I-Adapter's features on their own grid, region weights) are
cropped to it (area regions reuse this for their crops), and
each window batch keeps its own copy of mutable state (SEGA's momentum). Phases that
run on the whole canvas (``pre_step``, ``post_step``: a noise mask's blend) see the
whole canvas; state an extension first makes during the window passes goes back to the
canvas for them, window tensors averaged onto it (KSamplerAdvanced's early end on x̂₀).
Extensions that change the whole latent with their own UNet passes in ``pre_step``
(Attend-and-Excite, Pix2Pix-Zero, LEDITS++) are refused.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from nodes.diffusion.extensions import Denoise, SamplerExtension, Step
from nodes.diffusion.vae_codec import check_latents, decode_raw

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

#: (h_start, h_end, w_start, w_end) in latent pixels; w_end may pass the width (circular)
View = tuple[int, int, int, int]
#: the pipeline's stride (latent pixels)
DEFAULT_STRIDE = 8
#: "uniform": every window counts the same (MultiDiffusion, the pipeline); "gaussian": a
#: window counts less towards its edges (Mixture of Diffusers), so the average changes
#: smoothly where a window starts or ends
VIEW_WEIGHTS = ("uniform", "gaussian")


def gaussian_weight(height: int, width: int) -> torch.Tensor:
    """``[1, 1, height, width]``: a Gaussian bump over the window, σ a tenth of each side
    (Mixture of Diffusers' tile weights: variance 0.01 in units of the side)."""
    def bump(n: int) -> torch.Tensor:
        u = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) / n
        return torch.exp(-(u ** 2) / (2 * 0.01))

    return (bump(height)[:, None] * bump(width)[None, :])[None, None]


def get_views(height: int, width: int, window_size: int, stride: int,
              circular_padding: bool = False) -> list[View]:
    """The windows covering a ``height`` x ``width`` latent, row by row (diffusers'
    ``get_views`` in latent units), plus one window flush with the bottom or right edge
    where the stride grid stops short of it. A window larger than the latent shrinks to
    it; with ``circular_padding`` windows wrap around the right edge."""
    if window_size < 1 or stride < 1:
        raise ValueError(f"window_size ({window_size}) and stride ({stride}) must be at least 1")
    if stride > window_size:
        raise ValueError(f"a stride of {stride} over windows of {window_size} leaves gaps "
                         "between them: use a stride at most the window size")
    win_h, win_w = min(window_size, height), min(window_size, width)
    rows = _starts(height, win_h, stride)
    if circular_padding and width > win_w:
        count = width // stride
        if (count - 1) * stride + win_w < width:  # the last window stops short of the edge
            count += 1
        cols = [k * stride for k in range(count)]
    else:
        cols = _starts(width, win_w, stride)
    return [(h, h + win_h, w, w + win_w) for h in rows for w in cols]


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = [k * stride for k in range((size - window) // stride + 1)]
    if starts[-1] + window < size:
        starts.append(size - window)  # the pipeline leaves this strip uncovered
    return starts


def crop(x: torch.Tensor, view: View, scale: int = 1) -> torch.Tensor:
    """The window ``view`` (latent pixels, times ``scale``) of ``[..., H, W]``, wrapping
    around the right edge when it passes it."""
    h0, h1, w0, w1 = (v * scale for v in view)
    width = x.shape[-1]
    if w1 > width:
        return torch.cat((x[..., h0:h1, w0:], x[..., h0:h1, : w1 - width]), dim=-1)
    return x[..., h0:h1, w0:w1]


def paste_add(target: torch.Tensor, view: View, value: torch.Tensor | float) -> None:
    """``target[view] += value`` in place, wrapping around the right edge."""
    h0, h1, w0, w1 = view
    width = target.shape[-1]
    if w1 > width:
        if isinstance(value, torch.Tensor):
            target[..., h0:h1, w0:] += value[..., : width - w0]
            target[..., h0:h1, : w1 - width] += value[..., width - w0:]
        else:
            target[..., h0:h1, w0:] += value
            target[..., h0:h1, : w1 - width] += value
    else:
        target[..., h0:h1, w0:w1] += value


def stack_crops(x: torch.Tensor, views: Sequence[View], scale: int = 1) -> torch.Tensor:
    """The windows of ``x`` stacked on the batch axis, window by window."""
    return torch.cat([crop(x, v, scale) for v in views])


# --- other extensions' state, seen through windows --------------------------------------


def _crop_tensor(t: torch.Tensor, views: Sequence[View], size: tuple[int, int]) -> torch.Tensor:
    """A ``[B, C, H·f, W·f]`` tensor (or a UNet level's ``[B, C, ⌈H/d⌉, ⌈W/d⌉]``: a
    T2I-Adapter's features) laid out on the canvas ``size`` = (H, W): its windows
    stacked (see :func:`feature_view`); any other tensor as it is."""
    if t.dim() != 4:
        return t
    (height, width), (h, w) = size, tuple(t.shape[-2:])
    if h >= height and h % height == 0 and w % width == 0 and h // height == w // width:
        return stack_crops(t, views, h // height)
    for d in (2, 4, 8):
        if h < height and (h, w) == (-(-height // d), -(-width // d)):
            return stack_crops(t, [feature_view(view, d, size) for view in views])
    return t


def feature_view(view: View, d: int, size: tuple[int, int]) -> View:
    """``view`` on the 1/``d``-size level of the canvas ``size``: as many cells as a UNet
    pass over the view makes there (``⌈side/d⌉``), the ones nearest the view's centre
    (its pixels over ``d`` exactly when it falls on the grid; an area or window off the
    grid is a fraction of a cell away), kept inside the map unless the view wraps around
    the right edge (circular windows)."""
    h0, h1, w0, w1 = view
    rows, cols = -(-size[0] // d), -(-size[1] // d)
    n_h, n_w = -(-(h1 - h0) // d), -(-(w1 - w0) // d)

    def start(lo: int, hi: int, n: int) -> int:
        return math.floor((lo + hi - n * d) / (2 * d) + 0.5)

    top = min(max(start(h0, h1, n_h), 0), rows - n_h)
    left = start(w0, w1, n_w)
    if w1 <= size[1]:
        left = min(max(left, 0), cols - n_w)
    else:  # a circular window: it wraps on the feature map too
        left %= cols
    return (top, top + n_h, left, left + n_w)


def _crop_value(value: Any, views: Sequence[View], size: tuple[int, int]) -> Any:
    """A copy of one extension's per-run state for windows: canvas tensors cropped,
    containers and dataclasses copied (so the windows' changes stay theirs). State with
    a true ``shared_by_windows`` (what the extension's UNet hooks hold, e.g. Deep
    Shrink's) is the same object in every window, as the hooks see only that one."""
    if getattr(value, "shared_by_windows", False):
        return value
    if isinstance(value, torch.Tensor):
        return _crop_tensor(value, views, size)
    if isinstance(value, list):
        return [_crop_value(v, views, size) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_crop_value(v, views, size) for v in value)
    if isinstance(value, dict):
        return {k: _crop_value(v, views, size) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = copy.copy(value)
        for f in dataclasses.fields(value):
            object.__setattr__(out, f.name, _crop_value(getattr(value, f.name), views, size))
        return out
    return value


def windowed_state(run: SamplingRun, views: Sequence[View],
                   exclude: Sequence[Any] = ()) -> dict[Any, Any]:
    """The run's per-run state as the windows ``views`` see it (see :func:`_crop_value`)."""
    size = tuple(run.init_latents.shape[-2:])
    return {key: _crop_value(value, views, size) for key, value in run.state.items()
            if not any(key is e for e in exclude)}


def _uncrop_value(values: Sequence[Any], batches: Sequence[Sequence[View]], batch: int,
                  size: tuple[int, int]) -> Any:
    """One value from each window batch's state put back on the canvas: ``[windows·B, C,
    h, w]`` tensors averaged onto ``[B, C, H, W]`` where windows overlap (tuples and lists
    element by element); anything else is the first batch's."""
    first = values[0]
    if isinstance(first, tuple | list) and not hasattr(first, "_fields"):
        return type(first)(_uncrop_value([v[i] for v in values], batches, batch, size)
                           for i in range(len(first)))
    views = [view for views in batches for view in views]
    window = (views[0][1] - views[0][0], views[0][3] - views[0][2])
    if not (isinstance(first, torch.Tensor) and first.dim() == 4
            and tuple(first.shape[-2:]) == window
            and all(v.shape[0] == len(vs) * batch for v, vs in zip(values, batches, strict=True))):
        return first
    total = first.new_zeros((batch, first.shape[1], *size))
    count = first.new_zeros((1, 1, *size))
    for value, views_of_batch in zip(values, batches, strict=True):
        for k, view in enumerate(views_of_batch):
            paste_add(total, view, value[k * batch:(k + 1) * batch])
            paste_add(count, view, 1.0)
    return total / count.clamp(min=1)


@contextlib.contextmanager
def windows_of(run: SamplingRun, views: Sequence[View], state: dict[Any, Any],
               crops: tuple[torch.Tensor, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block the run is its windows ``views`` stacked on the batch axis:
    ``init_latents`` and ``noise`` are cropped (or ``crops``, those two made before) and
    ``run.state`` holds ``state`` (made by :func:`windowed_state`), which keeps what the
    extensions change in it."""
    saved = run.init_latents, run.noise, dict(run.state)
    run.init_latents, run.noise = crops or (stack_crops(saved[0], views),
                                            stack_crops(saved[1], views))
    run.state.clear()
    run.state.update(state)
    try:
        yield
    finally:
        state.clear()
        state.update(run.state)
        run.init_latents, run.noise = saved[0], saved[1]
        run.state.clear()
        run.state.update(saved[2])


# --- the scheduler's state per window batch ------------------------------------------------

#: scheduler attributes the window batches share instead of each keeping a copy
SHARED_SCHEDULER_STATE = ("noise_sampler",)


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """A copy of the scheduler's state for one window batch (the pipeline's
    ``views_scheduler_status``), less :data:`SHARED_SCHEDULER_STATE`."""
    return copy.deepcopy({key: value for key, value in scheduler.__dict__.items()
                          if key not in SHARED_SCHEDULER_STATE})


class CanvasNoise:
    """DPM++ SDE's Brownian-tree noise (diffusers' ``BrownianTreeNoiseSampler``) over the
    whole latent, built as the scheduler's first step builds it: every window batch reads
    its crop of the increment the whole-latent step would add, so overlapping windows
    agree and one window over the whole latent is the plain run. (A copy per window
    batch would give each its own path, and torchsde's interval cache does not survive
    a deep copy: a later step fails with a raw KeyError.)"""

    def __init__(self, scheduler: Any, latents: torch.Tensor):
        from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

        sigmas = scheduler.sigmas
        self.whole = scheduler.noise_sampler or BrownianTreeNoiseSampler(
            latents, sigmas[sigmas > 0].min().item(), sigmas.max().item(),
            scheduler.noise_sampler_seed)
        self._last: tuple[tuple[float, float], torch.Tensor] | None = None

    @staticmethod
    def wanted(scheduler: Any) -> bool:
        return hasattr(scheduler, "noise_sampler") and hasattr(scheduler, "noise_sampler_seed")

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        key = (float(sigma), float(sigma_next))
        if self._last is None or self._last[0] != key:  # each window batch asks alike
            self._last = key, self.whole(sigma, sigma_next)
        return self._last[1]

    def of(self, views: Sequence[View]) -> Any:
        """The noise sampler the window batch ``views`` steps with."""
        return lambda sigma, sigma_next: stack_crops(self(sigma, sigma_next), views)


# --- the panorama extension ----------------------------------------------------------------


@dataclass
class _PanoramaState:
    batches: list[list[View]]
    #: each window batch's scheduler ``__dict__`` (the pipeline's ``views_scheduler_status``)
    schedulers: list[dict[str, Any]] = field(default_factory=list)
    #: each window batch's view of the other extensions' state
    states: list[dict[Any, Any]] = field(default_factory=list)
    #: each window batch's crops of the run's ``init_latents`` and ``noise``
    crops: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    count: torch.Tensor | None = None
    #: each window's weight ``[1, 1, h, w]`` (None: 1 everywhere, the pipeline's average)
    weight: torch.Tensor | None = None
    #: DPM++ SDE's Brownian tree over the whole latent (None: another sampler)
    noise: CanvasNoise | None = None


class MultiDiffusionPanorama(SamplerExtension):
    """Denoise windows of the latent each step and average them (MultiDiffusion)."""

    priority = 5  # wraps the step first; the wrapping order matters only among wrappers
    handles_large_latents = True

    def __init__(self, window_size: int = 0, stride: int = DEFAULT_STRIDE,
                 circular_padding: bool = False, view_batch_size: int = 1,
                 view_weights: str = "uniform"):
        if window_size < 0 or stride < 1 or view_batch_size < 1:
            raise ValueError("MultiDiffusion needs window_size >= 0 (0: the model's native "
                             "size), stride >= 1 and view_batch_size >= 1")
        if view_weights not in VIEW_WEIGHTS:
            raise ValueError(f"view_weights must be one of {VIEW_WEIGHTS}, got {view_weights!r}")
        self.window_size = int(window_size)
        self.stride = int(stride)
        self.circular_padding = bool(circular_padding)
        self.view_batch_size = int(view_batch_size)
        self.view_weights = view_weights

    def window(self, run: SamplingRun) -> int:
        """The window side in latent pixels (0: the UNet's native ``sample_size``)."""
        return self.window_size or int(run.model.unet.config.sample_size)

    def setup(self, run: SamplingRun) -> None:
        whole_canvas = [e.label or type(e).__name__ for e in run.extensions
                        if type(e).pre_step is not SamplerExtension.pre_step
                        and not e.step_state_only]
        if whole_canvas:
            raise ValueError(f"MultiDiffusion cannot run with {', '.join(whole_canvas)}: it "
                             "works on the whole latent before each step (its own UNet "
                             "passes, or LEDITS++'s replayed noise), which windows cannot "
                             "split; remove the panorama or that technique")
        masked = [e.label or type(e).__name__ for e in run.extensions if e.canvas_masks]
        if masked:
            raise ValueError(f"MultiDiffusion cannot run with {', '.join(masked)} given "
                             "attention masks: the masks cover the whole image, and each "
                             "window would take them as its own; remove the masks or the "
                             "panorama")
        height, width = (int(s) for s in run.init_latents.shape[-2:])
        window = self.window(run)
        views = get_views(height, width, window, self.stride, self.circular_padding)
        batches = [views[i:i + self.view_batch_size]
                   for i in range(0, len(views), self.view_batch_size)]
        # Every UNet pass now sees windows: attention hooks must read their token grids
        # (learnt before the sampler learns the whole latent's, so they win any clash).
        unet = run.model.unet
        levels = len(getattr(unet.config, "block_out_channels", ())) or 4
        run.attention.learn_sizes(views[0][1] - views[0][0], views[0][3] - views[0][2],
                                  levels=levels)
        run.state[self] = _PanoramaState(batches)

    def denoise(self, run: SamplingRun, denoise: Denoise) -> Denoise:
        return partial(self._windowed_step, denoise)

    def _windowed_step(self, denoise: Denoise, run: SamplingRun, step: Step,
                       latents: torch.Tensor) -> torch.Tensor:
        state: _PanoramaState = run.state[self]
        if not state.schedulers:  # the first step: after every setup and set_timesteps
            if CanvasNoise.wanted(run.scheduler):
                state.noise = CanvasNoise(run.scheduler, latents)
            state.schedulers = [scheduler_state(run.scheduler) for _ in state.batches]
            state.states = [windowed_state(run, views, exclude=(self,))
                            for views in state.batches]
            state.crops = [(stack_crops(run.init_latents, views), stack_crops(run.noise, views))
                           for views in state.batches]
            state.count = torch.zeros_like(latents[:1, :1])
            first = state.batches[0][0]
            if self.view_weights == "gaussian":
                state.weight = gaussian_weight(first[1] - first[0], first[3] - first[2]).to(
                    latents.device, latents.dtype)
            for views in state.batches:
                for view in views:
                    paste_add(state.count, view, 1.0 if state.weight is None else state.weight)
        batch = run.init_latents.shape[0]
        value = torch.zeros_like(latents)
        prediction: torch.Tensor | None = None
        known = set(run.state)
        for j, views in enumerate(state.batches):
            # the window batch's own scheduler state (multistep history, step index)
            run.scheduler.__dict__.update(state.schedulers[j])
            if state.noise is not None:
                run.scheduler.noise_sampler = state.noise.of(views)
            with windows_of(run, views, state.states[j], state.crops[j]):
                denoised = denoise(run, step, stack_crops(latents, views))
            state.schedulers[j] = scheduler_state(run.scheduler)
            if prediction is None and step.prediction is not None:
                prediction = latents.new_zeros((batch, step.prediction.shape[1],
                                                *latents.shape[-2:]))
            weight = state.weight if state.weight is not None else 1.0
            for k, view in enumerate(views):
                rows = slice(k * batch, (k + 1) * batch)
                paste_add(value, view, denoised[rows] * weight)
                if prediction is not None and step.prediction is not None:
                    paste_add(prediction, view, step.prediction[rows] * weight)
        if state.noise is not None:  # the whole latent's, for anything after the step
            run.scheduler.noise_sampler = state.noise.whole
        # State an extension made during this step's window passes (e.g. what a post-step
        # phase reads back) goes to the whole canvas: window tensors averaged onto it.
        for key in [k for k in state.states[0]
                    if k not in known and all(k in st for st in state.states)]:
            run.state[key] = _uncrop_value([st[key] for st in state.states], state.batches,
                                           batch, tuple(latents.shape[-2:]))
        count = state.count
        assert count is not None
        safe = torch.where(count > 0, count, torch.ones_like(count))
        if prediction is not None:
            step.prediction = prediction / safe
        return torch.where(count > 0, value / safe, value)

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


def decode_circular(vae: Any, latents: torch.Tensor, padding: int = 8) -> torch.Tensor:
    """Decode with ``padding`` latent columns wrapped around each side, then cut them off
    (the pipeline's ``decode_latents_with_padding``): the left and right edges of a
    360° panorama then meet without a seam. Returns IMAGE ``[B, H, W, C]`` in 0..1."""
    check_latents(vae, latents)  # before the wrap changes its shape
    padding = min(padding, latents.shape[-1])
    x = latents / vae.scaling_factor
    if padding:
        x = torch.cat((x[..., -padding:], x, x[..., :padding]), dim=-1)
    image = decode_raw(vae, x)
    if padding:
        pixels = vae.downscale * padding
        image = image[..., pixels:-pixels]
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()
