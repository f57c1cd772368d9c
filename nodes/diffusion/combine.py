"""Combined conditioning (ComfyUI's Conditioning Combine, composable diffusion's AND) and
region prompts (ConditioningSetArea, ...Percentage, ...Mask: MultiDiffusion's regions).

Every entry of the positive conditioning gets a noise prediction each step and they are
fused per latent pixel by weight: ε = Σ wᵢ εᵢ / Σ wᵢ (the MultiDiffusion step of Bar-Tal
et al. 2023 on the noise; what ComfyUI's ``calc_cond_batch`` does). Without regions wᵢ is
the entry's ``strength`` everywhere and each side is its plain weighted average.

Regions follow ComfyUI's options and rules:

* ``area`` (h, w, y, x) in latent pixels, or ``("percentage", h, w, y, x)``: the entry
  is predicted on the latent *cropped* to its area (the prompt composes a whole
  picture there) and weighs ``strength`` inside it, ramped down over a few latent
  pixels at edges inside the image (ComfyUI's feathering: 8 of SD's 64 latent pixels;
  scaled to the UNet's native size, 2 on steerflow-shapes).
* ``mask`` ``[B, H, W]`` with ``mask_strength``: predicted on the whole canvas and
  weighed by the mask (resized bilinearly to the latent); with ``set_area_to_bounds``
  (ComfyUI's "mask bounds") predicted on the crop to the mask's bounding box instead.
* Each area of one side gets a twin on the other with the same area and weight, made
  from the other side's smallest entry that contains it (ComfyUI's
  ``create_cond_with_same_area_if_none``).
* ``timestep_range`` (start, end) (ConditioningSetTimestepRange): the entry counts only
  on the steps whose noise level lies in that part of the schedule, as ComfyUI's
  ``percent_to_sigma``: timestep t with (1 - end)·(T - 1) ≤ t ≤ (1 - start)·(T - 1), T the
  training timesteps; so ranges that meet (0-0.5, 0.5-1) leave no step without a prompt,
  and a refiner run (KSamplerAdvanced's start_at_step) reads the whole schedule's ranges.
  A step where a side has no active entry is an error before sampling starts.

Guidance pairs each positive region with the negative on the same crop (its twin, or the
negative's whole-canvas prediction for a whole-canvas region) and fuses the pairs with
the positive's weights: the guidance is the weighted mean of each region's own guidance,
MultiDiffusion's region mode. ComfyUI fuses the negative with its own weights instead;
both agree when each side has a whole-image prompt of the same strength, but with areas
alone ComfyUI's mixes the negative's whole-canvas prediction into every region's
guidance, which turns the default model's images to noise. A pixel no positive region
covers takes the negative's prediction (no guidance there: the model draws unprompted) —
ComfyUI leaves a zero prediction, which CFG turns into noise. A pixel neither side covers
is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nodes.diffusion.extensions import Predictions, SamplerExtension, Step, UNetCall
from nodes.diffusion.handles import CondEntry, Conditioning

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

#: (y0, y1, x0, x1) in latent pixels
Box = tuple[int, int, int, int]
#: ComfyUI's feathering width and smallest "mask bounds" side on SD (64-latent images)
COMFY_FEATHER = 8
COMFY_NATIVE = 64
REGION_KEYS = ("area", "mask", "default")
TIMESTEP_RANGE = "timestep_range"
#: the option that marks a default entry (ComfyUI's ``default``)
DEFAULT = "default"
#: (start, end) fractions of the schedule
Span = tuple[float, float]


def _strength(options: dict) -> float:
    return float(options.get("strength", 1.0))


def has_regions(conditioning: Conditioning) -> bool:
    return any(key in e.options for e in conditioning.entries for key in REGION_KEYS)


def _span(options: dict) -> Span | None:
    span = options.get(TIMESTEP_RANGE)
    return None if span is None else (float(span[0]), float(span[1]))


def active(span: Span | None, timestep: float, num_train_timesteps: int) -> bool:
    """Whether an entry with timestep range ``span`` counts at ``timestep`` (ComfyUI's
    ``percent_to_sigma`` bounds, on the timestep: the noise level grows with it)."""
    if span is None:
        return True
    start, end = span
    last = num_train_timesteps - 1
    high = math.inf if start <= 0 else (1 - start) * last
    low = -math.inf if end >= 1 else (1 - end) * last
    return low <= timestep <= high


def active_at(run: SamplingRun, step: Step, span: Span | None) -> float:
    """1.0 when an entry with timestep range ``span`` counts at ``step``, else 0.0."""
    return float(active(span, float(step.timestep),
                        int(run.scheduler.config.num_train_timesteps)))


def combined_extensions(positive: Conditioning, negative: Conditioning
                        ) -> list[SamplerExtension]:
    """The fusion the sampler needs for these conditionings: none for one plain entry each."""
    if (len(positive.entries) > 1 or len(negative.entries) > 1 or has_regions(positive)
            or has_regions(negative)
            or any(TIMESTEP_RANGE in e.options
                   for e in (*positive.entries, *negative.entries))):
        return [CombinedConditioning(positive, negative)]
    return []


def fused_as_cond(run: SamplingRun, step: Step, owner: SamplerExtension,
                  rows: Sequence[torch.Tensor], fallback: torch.Tensor) -> torch.Tensor:
    """``owner``'s rows standing for the positive entries fused as the run's cond is
    (:meth:`CombinedConditioning.fused_as_cond`; the strength-weighted mean without a
    fusion)."""
    fusion = next((e for e in run.extensions if isinstance(e, CombinedConditioning)), None)
    if fusion is None:
        return weighted(run, step, rows, run.positive.entries)
    return fusion.fused_as_cond(run, step, owner, rows, fallback)


# --- regions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """One entry resolved on a latent: its weight map and where it is predicted."""

    embeds: torch.Tensor  # [1, tokens, dim]
    weight: torch.Tensor  # [B, 1, H, W] on the canvas, 0 outside the region
    box: Box | None  # predicted on this crop; None: on the whole canvas
    #: a whole-canvas region's main-batch chunk: "cond", "uncond" or an extra entry's index
    source: str | int | None = None
    #: a positive region's unconditional partner: the negative region on the same crop
    #: (its index), or None for the negative's whole-canvas prediction
    partner: int | None = None
    #: the entry's timestep range (None: every step)
    span: Span | None = None
    #: the conditioning entry it comes from (its hooks act on its rows)
    entry: CondEntry | None = None
    #: a default entry (Cond Set Default Combine): weighs what the others leave uncovered
    default: bool = False


def scaled_pixels(n: int, native: int) -> int:
    """ComfyUI's ``n`` latent pixels (for SD's 64-latent images) at another native size."""
    return max(1, round(n * native / COMFY_NATIVE))


def resolve_area(area: Sequence[Any], size: tuple[int, int], downscale: int = 8) -> Box:
    """An ``area`` option as a box inside the latent (percentages rounded as ComfyUI;
    image pixels divided by ``downscale``, rounded down as ComfyUI's //8; clipped at the
    right and bottom edges as ComfyUI's slicing does)."""
    height, width = size
    if area[0] == "pixels":
        h, w, y, x = (int(v) // downscale for v in area[1:])
    elif area[0] == "percentage":
        _, ph, pw, py, px = area
        h, w = max(1, round(ph * height)), max(1, round(pw * width))
        y, x = round(py * height), round(px * width)
    else:
        h, w, y, x = (int(v) for v in area)
    if h < 1 or w < 1:
        raise ValueError(f"a conditioning area of {w}x{h} latent pixels is empty: make it at "
                         "least one latent pixel (the VAE's downscale in image pixels)")
    if y >= height or x >= width or y < 0 or x < 0:
        raise ValueError(f"a conditioning area at x={x}, y={y} (latent pixels) lies outside "
                         f"the {width}x{height} latent: place it inside the image")
    return (y, min(y + h, height), x, min(x + w, width))


def resize_mask(mask: torch.Tensor, size: tuple[int, int], batch: int,
                warn: Callable[[str], None] | None = None) -> torch.Tensor:
    """A region MASK ``[B, H, W]`` (or ``[H, W]``) at the latent ``size``: ``[B, 1, h, w]``,
    resized bilinearly as ComfyUI; its batch 1 or the latent's. A mask of another aspect
    ratio is stretched over the latent, as ComfyUI does, and ``warn`` is told."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3:
        raise ValueError(f"a region mask must be a MASK [B, H, W], got {tuple(mask.shape)}")
    (mh, mw), (h, w) = mask.shape[-2:], size
    if warn is not None and abs(mh * w - mw * h) > max(h, w, mh, mw):  # > a latent pixel off
        warn(f"the {mw}x{mh} region mask has another aspect ratio than the {w}x{h} latent: "
             "it is stretched over the image, as ComfyUI does (make it at the image size "
             "to place the region exactly)")
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"the region mask has a batch of {mask.shape[0]} but the latent has "
                         f"{batch}: use one mask or one per image")
    mask = mask.float()[:, None]
    if (mh, mw) != (h, w):
        mask = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)
    return mask


def feathered(box: Box, size: tuple[int, int], ramp: int) -> torch.Tensor:
    """``[h, w]`` ones over the box, ramped 1/ramp .. 1 over ``ramp`` pixels at each edge
    inside the image (ComfyUI's ``mult`` for an area without a mask)."""
    y0, y1, x0, x1 = box
    mult = torch.ones(y1 - y0, x1 - x0)
    steps = [(t + 1) / ramp for t in range(ramp)]
    for t, f in enumerate(steps):  # overlapping ramps multiply, as ComfyUI's do
        if y0 != 0:
            mult[t:t + 1] *= f
        if y1 < size[0]:
            mult[max(y1 - y0 - 1 - t, 0):max(y1 - y0 - t, 0)] *= f
        if x0 != 0:
            mult[:, t:t + 1] *= f
        if x1 < size[1]:
            mult[:, max(x1 - x0 - 1 - t, 0):max(x1 - x0 - t, 0)] *= f
    return mult


def resolve_region(entry: CondEntry, size: tuple[int, int], batch: int, native: int,
                   warn: Callable[[str], None] | None = None, downscale: int = 8) -> Region:
    """An entry's weight map on a latent of ``size`` and where it is predicted."""
    options = entry.options
    height, width = size
    weight = torch.zeros(1, 1, height, width)
    box: Box | None = None
    if "area" in options:
        box = resolve_area(options["area"], size, downscale)
    mask = None
    if options.get("mask") is not None:
        mask = resize_mask(options["mask"], size, batch, warn) * float(
            options.get("mask_strength", 1.0))
        if options.get("set_area_to_bounds"):
            box = _mask_bounds(mask, size, scaled_pixels(COMFY_FEATHER, native))
    if box == (0, height, 0, width):
        box = None  # the whole canvas: the same prediction without a crop
    y0, y1, x0, x1 = box or (0, height, 0, width)
    if mask is not None:
        weight = torch.zeros_like(mask)
        weight[..., y0:y1, x0:x1] = mask[..., y0:y1, x0:x1]
    elif box is not None:
        weight[..., y0:y1, x0:x1] = feathered(box, size, scaled_pixels(COMFY_FEATHER, native))
    else:
        weight += 1.0
    weight = (weight * _strength(options)).expand(batch, 1, height, width)
    return Region(entry.embeds, weight, box, span=_span(options), entry=entry,
                  default=bool(options.get(DEFAULT)))


def fill_defaults(regions: list[Region]) -> None:
    """A default entry weighs what the side's other entries leave: 1 − their summed
    weight, at least 0 (ComfyUI's ``finalize_default_conds``); where they cover
    everything it weighs nothing."""
    others = [r.weight for r in regions if not r.default]
    covered = sum(others) if others else torch.zeros_like(regions[0].weight)
    for i, region in enumerate(regions):
        if region.default:
            rest = torch.relu(1 - covered)  # type: ignore[operator]
            regions[i] = replace(region, weight=rest * region.weight)


def _mask_bounds(mask: torch.Tensor, size: tuple[int, int], smallest: int) -> Box | None:
    """The bounding box of a mask's nonzero pixels over its batch, at least ``smallest``
    pixels a side (ComfyUI: 8 on SD); None for an empty mask (it weighs nothing anyway)."""
    ys, xs = torch.nonzero(mask.abs().amax(dim=(0, 1)), as_tuple=True)
    if len(ys) == 0:
        return None
    y0, x0 = int(ys.min()), int(xs.min())
    h = max(smallest, int(ys.max()) - y0 + 1)
    w = max(smallest, int(xs.max()) - x0 + 1)
    return (y0, min(y0 + h, size[0]), x0, min(x0 + w, size[1]))


def _contains(outer: Box | None, inner: Box) -> bool:
    return outer is None or (outer[0] <= inner[0] and outer[2] <= inner[2]
                             and outer[1] >= inner[1] and outer[3] >= inner[3])


def with_twins(regions: list[Region], others: list[Region]) -> list[Region]:
    """``others`` plus, for each cropped region of ``regions``, a twin with its box and
    weight and the embeddings of the smallest of ``others`` containing it (ComfyUI's
    ``create_cond_with_same_area_if_none``)."""
    out = list(others)
    for region in regions:
        if region.box is None:
            continue
        best: Region | None = None
        for other in out:
            if other.box is not None and _contains(other.box, region.box):
                if best is None or best.box is None or _box_area(other.box) < _box_area(best.box):
                    best = other
            elif other.box is None and best is None:
                best = other
        if best is not None and best.box != region.box:
            out.append(replace(region, embeds=best.embeds, entry=best.entry, default=False))
    return out


def _box_area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


# --- the extension ---------------------------------------------------------------------------


@dataclass
class _RegionState:
    size: tuple[int, int]
    positive: list[Region]
    negative: list[Region]
    extras: list[torch.Tensor] = field(default_factory=list)
    extra_entries: list[CondEntry | None] = field(default_factory=list)
    covered_pos: torch.Tensor | None = None  # [B, 1, H, W] bool
    covered_neg: torch.Tensor | None = None
    latents: torch.Tensor | None = None  # this step's scaled latent (for the crops)


class CombinedConditioning(SamplerExtension):
    """Fuse the predictions of every entry of the positive and negative conditioning."""

    priority = 10  # before guidance-changing extensions, which then see the fused ones
    without_cfg = True  # cfg 1: the positive side's entries are fused alone

    def __init__(self, positive: Conditioning, negative: Conditioning):
        self.positive = positive.entries
        self.negative = negative.entries
        self.regions = any(k in e.options for e in (*self.positive, *self.negative)
                           for k in REGION_KEYS)

    def setup(self, run: SamplingRun) -> None:
        # Without CFG (cfg 1, as ComfyUI skips the unconditional pass there) only the
        # positive side is predicted and fused; the negative entries are not used.
        self._check_spans(run)
        if not self.regions:
            return
        batch, _, height, width = run.init_latents.shape
        size = (int(height), int(width))
        native = int(getattr(run.model.unet.config, "sample_size", COMFY_NATIVE))
        from nodes.latent import downscale_of

        factor = downscale_of(run.latent, None, run.model.unet)
        pos = [resolve_region(e, size, batch, native, run.warn, factor) for e in self.positive]
        neg = [resolve_region(e, size, batch, native, run.warn, factor) for e in self.negative
               ] if run.do_cfg else []
        if run.do_cfg:
            neg = with_twins(pos, neg)
            pos = with_twins(neg, pos)
        # The main batch predicts the first entry of each side on the whole canvas; other
        # whole-canvas regions are extra batch entries, cropped ones get their own passes.
        extras: list[torch.Tensor] = []
        extra_entries: list[CondEntry | None] = []
        for regions, main in ((pos, "cond"), (neg, "uncond")):
            for i, region in enumerate(regions):
                if region.box is None:
                    regions[i] = replace(region, source=main if i == 0 else len(extras))
                    if i:
                        extras.append(region.embeds)
                        extra_entries.append(region.entry)
        for i, region in enumerate(pos):
            if region.box is not None:
                same = [j for j, r in enumerate(neg) if r.box == region.box]
                pos[i] = replace(region, partner=same[0] if same else None)
        for regions in (pos, neg):
            if regions:
                fill_defaults(regions)
        state = _RegionState(size, pos, neg, extras, extra_entries)
        state.covered_pos = sum(r.weight for r in pos) > 0  # type: ignore[operator]
        if not run.do_cfg:
            if not bool(state.covered_pos.all()):  # type: ignore[union-attr]
                raise ValueError("some pixels are in no region of the positive conditioning, "
                                 "and at cfg 1 only the positive side is predicted: add a "
                                 "positive prompt without an area (or cover the whole image "
                                 "with regions)")
            run.state[self] = state
            return
        state.covered_neg = sum(r.weight for r in neg) > 0  # type: ignore[operator]
        if not bool((state.covered_pos | state.covered_neg).all()):
            raise ValueError("some pixels are in no region of the positive nor of the "
                             "negative conditioning: add a prompt without an area (or cover "
                             "the whole image with regions)")
        run.state[self] = state

    def _check_spans(self, run: SamplingRun) -> None:
        """Every step needs a prompt on each side: refuse timestep ranges with a gap."""
        total = int(run.scheduler.config.num_train_timesteps)
        sides = [("positive", self.positive), ("negative", self.negative)]
        for side, entries in sides if run.do_cfg else sides[:1]:
            spans = [_span(e.options) for e in entries]
            if all(span is None for span in spans):
                continue
            for i, t in enumerate(run.timesteps.tolist()):
                if not any(active(span, t, total) for span in spans):
                    ranges = ", ".join(f"{a:g}-{b:g}" for a, b in
                                       (span or (0.0, 1.0) for span in spans))
                    raise ValueError(
                        f"at step {i + 1} of {len(run.timesteps)} (timestep {t:g}) no "
                        f"{side} prompt is active: its timestep ranges ({ranges}) leave a "
                        "gap; combine prompts whose ranges meet (e.g. 0-0.5 and 0.5-1)")

    def extra_conditions(self, run: SamplingRun) -> Sequence[torch.Tensor]:
        if self.regions:
            return run.state[self].extras
        return [e.embeds for e in self._extra_entries(run)]

    def extra_entries(self, run: SamplingRun) -> list[CondEntry | None]:
        """The entries :meth:`extra_conditions`' rows stand for."""
        if self.regions:
            return run.state[self].extra_entries
        return list(self._extra_entries(run))

    def _extra_entries(self, run: SamplingRun) -> tuple[CondEntry, ...]:
        return (*self.positive[1:], *(self.negative[1:] if run.do_cfg else ()))

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        if self.regions and run.attention.roles == run.roles:  # the main pass only
            run.state[self].latents = call.latent_input[:run.init_latents.shape[0]]

    def predictions(self, run: SamplingRun, step: Step, preds: Predictions) -> None:
        extra = preds.of(self)
        if not self.regions:
            if not run.do_cfg:  # the positive side only (its first entry is the step's own)
                if len(self.positive) > 1:
                    preds.cond = weighted(run, step, [preds.cond, *extra], self.positive)
                return
            n_pos = len(self.positive) - 1
            preds.cond = weighted(run, step, [preds.cond, *extra[:n_pos]], self.positive)
            preds.uncond = weighted(run, step, [preds.uncond, *extra[n_pos:]], self.negative)
            return
        state: _RegionState = run.state[self]
        crops = self._crop_predictions(run, step, state)
        chunks = {"cond": preds.cond, **({"uncond": preds.uncond} if run.do_cfg else {}),
                  **dict(enumerate(extra))}

        def value(region: Region) -> torch.Tensor:
            if region.source is not None:
                return chunks[region.source]
            assert region.box is not None
            return crops[region.box, id(region.embeds)]

        cond, w_pos = self._fuse(run, step, state.positive, value, preds.cond)
        # Guidance built from whole-canvas rows (SEGA's concepts, SAG's degraded pass) is
        # taken against each side on the whole canvas: against the crops' fusion it would
        # add the difference between a crop's prediction and the canvas' to every step.
        whole, w_whole = self._fuse(run, step, [r for r in state.positive if r.box is None],
                                    value, preds.cond)
        preds.canvas_cond = torch.where(w_whole > 0, whole, chunks["cond"])
        if not run.do_cfg:  # cfg 1: the positive regions' weighted mean alone
            preds.cond = cond
            return
        negative, w_neg = self._fuse(run, step, state.negative, value, preds.cond)
        negative = torch.where(w_neg > 0, negative, cond)  # no negative here: no guidance
        whole, w_whole = self._fuse(run, step, [r for r in state.negative if r.box is None],
                                    value, preds.cond)
        preds.canvas_uncond = torch.where(w_whole > 0, whole, chunks["uncond"])
        whole = torch.where(w_whole > 0, whole, negative)
        # Each positive region against its partner on the same crop, with its own weight:
        # the fused guidance is the weighted mean of the regions' own guidance terms.
        paired = torch.zeros_like(cond)
        for region in state.positive:
            partner = whole if region.partner is None else value(state.negative[region.partner])
            paired = paired + self._weight(run, step, region) * partner
        paired = paired / torch.where(w_pos > 0, w_pos, torch.ones_like(w_pos))
        preds.cond = torch.where(w_pos > 0, cond, negative)
        preds.uncond = torch.where(w_pos > 0, paired, negative)

    def fused_as_cond(self, run: SamplingRun, step: Step, owner: SamplerExtension,
                      rows: Sequence[torch.Tensor], fallback: torch.Tensor) -> torch.Tensor:
        """``owner``'s rows that stand for the positive entries (``rows[i]`` for entry i,
        predicted on the whole canvas, as PAG's perturbed copies), fused as the cond is:
        each cropped region predicted again on its crop, in a pass whose rows carry
        ``owner``'s batch roles so that its attention hooks act there too; ``fallback``
        where no positive region weighs. Without regions: the strength-weighted mean."""
        if not self.regions:
            return weighted(run, step, rows, self.positive)
        state: _RegionState = run.state[self]
        roles = run.roles_of(owner)
        index = {id(entry): i for i, entry in enumerate(self.positive)}

        def row(region: Region) -> int:
            return index.get(id(region.entry), 0)  # a twin carries a positive entry

        crops: dict[int, torch.Tensor] = {}
        boxes: dict[Box, list[Region]] = {}
        for region in state.positive:
            if region.box is not None:
                boxes.setdefault(region.box, []).append(region)
        for box, regions in boxes.items():
            for group in _unique_rows(regions, row):
                placed = self._crop_pass(run, step, state, box, group,
                                         tuple(roles[row(r)] for r in group))
                crops.update({id(r): p for r, p in zip(group, placed, strict=True)})
        fused, weights = self._fuse(run, step, state.positive,
                                    lambda r: crops[id(r)] if r.box is not None
                                    else rows[row(r)], fallback)
        return torch.where(weights > 0, fused, fallback)

    def _weight(self, run: SamplingRun, step: Step, region: Region) -> torch.Tensor:
        return region.weight * active_at(run, step, region.span)

    def _fuse(self, run: SamplingRun, step: Step, regions: Sequence[Region],
              value: Callable[[Region], torch.Tensor], like: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ wᵣ valueᵣ / Σ wᵣ per pixel, and Σ wᵣ (zeros shaped ``like`` for none)."""
        total = torch.zeros_like(like)
        weights = torch.zeros_like(like[:, :1])
        for region in regions:
            w = self._weight(run, step, region)
            total = total + w * value(region)
            weights = weights + w
        return total / torch.where(weights > 0, weights, torch.ones_like(weights)), weights

    def _crop_predictions(self, run: SamplingRun, step: Step, state: _RegionState
                          ) -> dict[tuple[Box, int], torch.Tensor]:
        """Each cropped region's prediction, placed on the canvas (zeros elsewhere): one
        UNet pass per box, its regions' rows as batch roles."""
        boxes: dict[Box, list[Region]] = {}
        for region in (*state.negative, *state.positive):
            if region.box is not None:
                boxes.setdefault(region.box, []).append(region)
        out: dict[tuple[Box, int], torch.Tensor] = {}
        for box, regions in boxes.items():
            negatives = sum(1 for r in regions if any(r is n for n in state.negative))
            roles = (("uncond", "cond") if len(regions) == 2 and negatives == 1
                     else tuple(f"region:{k}" for k in range(len(regions))))
            placed = self._crop_pass(run, step, state, box, regions, roles)
            for region, rows in zip(regions, placed, strict=True):
                out[box, id(region.embeds)] = rows
        return out

    def _crop_pass(self, run: SamplingRun, step: Step, state: _RegionState, box: Box,
                   regions: Sequence[Region], roles: tuple[str, ...]
                   ) -> list[torch.Tensor]:
        """One UNet pass over ``box`` with a row per region (declared as ``roles``),
        other extensions seeing the crop (a ControlNet's image cropped too); each
        region's prediction placed on the canvas, zeros elsewhere."""
        from nodes.diffusion.multidiffusion import windowed_state, windows_of
        from nodes.diffusion.prompt_weighting import match_token_lengths

        if tuple(run.init_latents.shape[-2:]) != state.size:
            raise ValueError("area regions cannot run inside MultiDiffusion panorama windows: "
                             "use Conditioning Set Mask (set_cond_area default) regions there")
        latents = state.latents
        if latents is None:
            raise RuntimeError("the region crops saw no latent this step")
        batch = latents.shape[0]
        view = (box[0], box[1], box[2], box[3])
        embeds = torch.cat([e.repeat(batch, 1, 1) for e in match_token_lengths(
            [r.embeds.to(latents.device, latents.dtype) for r in regions])])
        sample = latents[..., box[0]:box[1], box[2]:box[3]].repeat(len(regions), 1, 1, 1)
        before = dict(run.entries)
        run.entries.update({role: region.entry for role, region in zip(
            roles, regions, strict=True) if region.entry is not None})
        try:
            with windows_of(run, [view], windowed_state(run, [view], exclude=(self,))):
                pred = run.extension_pass(self, step, sample, embeds, roles)
        finally:
            run.entries.clear()
            run.entries.update(before)
        out = []
        for rows in pred.chunk(len(regions)):
            placed = torch.zeros_like(latents)
            placed[..., box[0]:box[1], box[2]:box[3]] = rows
            out.append(placed)
        return out

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)


def _unique_rows(regions: Sequence[Region], row: Callable[[Region], int]
                 ) -> list[list[Region]]:
    """``regions`` in groups whose rows differ (one pass may not carry a role twice)."""
    groups: list[list[Region]] = []
    for region in regions:
        group = next((g for g in groups if all(row(r) != row(region) for r in g)), None)
        if group is None:
            groups.append([region])
        else:
            group.append(region)
    return groups


def weighted(run: SamplingRun, step: Step, preds: Sequence[torch.Tensor],
             entries: Sequence[CondEntry]) -> torch.Tensor:
    """Σ wᵢ predᵢ / Σ wᵢ over one side's entries, wᵢ = strength on the steps in the entry's
    timestep range, else 0."""
    weights = [_strength(e.options) * active_at(run, step, _span(e.options))
               for e in entries]
    if len(preds) == 1 and weights[0] > 0:
        return preds[0]
    total = sum(weights)
    if total <= 0:
        raise ValueError("combined conditioning strengths must sum to more than 0")
    return sum(w * p for w, p in zip(weights, preds, strict=True)) / total
