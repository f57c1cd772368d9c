"""Colour spaces of IMAGE tensors: ComfyUI's ``ImageColorSpace`` (Convert Image Color
Space) and the transfer functions Save Image (Advanced) uses for EXR.

Three encodings, as ComfyUI names them:

* ``sRGB``: BT.709 primaries, the sRGB curve (IEC 61966-2-1); 1.0 is SDR reference
  white, taken as 203 cd/m² (ITU-R BT.2408) when mixing with HDR.
* ``HDR``: BT.2020 primaries, Hybrid Log-Gamma (ITU-R BT.2100), on a 1000 cd/m²
  reference display (system gamma 1.2).
* ``HDR PQ``: BT.2020 primaries, the Perceptual Quantizer (SMPTE ST 2084 / BT.2100),
  absolute: 1.0 is 10000 cd/m².

A conversion goes through display light in BT.2020 (cd/m²). Narrowing to sRGB tone-maps
luminance above SDR white (extended Reinhard with one white point for the whole batch,
so frames do not change exposure one by one) and pulls colours outside BT.709 towards
their luminance; PQ → HLG does the same against the HLG display's peak. Alpha (a 4th
channel) is passed through untouched.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Tensor

if TYPE_CHECKING:
    import torch

SPACES = ("sRGB", "HDR", "HDR PQ")

# ITU-R BT.2100 Table 5 (HLG): a, b = 1 - 4a, c = 0.5 - a·ln(4a).
HLG_A = 0.17883277
HLG_B = 1.0 - 4.0 * HLG_A
HLG_C = 0.5 - HLG_A * math.log(4.0 * HLG_A)
HLG_PEAK_NITS = 1000.0  # nominal peak of the HLG reference display (L_W)
HLG_GAMMA = 1.2  # system gamma at 1000 cd/m²
# SMPTE ST 2084 (PQ) constants, exactly as the standard gives them.
PQ_M1 = 2610.0 / 16384.0
PQ_M2 = 2523.0 / 4096.0 * 128.0
PQ_C1 = 3424.0 / 4096.0
PQ_C2 = 2413.0 / 4096.0 * 32.0
PQ_C3 = 2392.0 / 4096.0 * 32.0
PQ_PEAK_NITS = 10000.0
SDR_WHITE_NITS = 203.0  # ITU-R BT.2408 reference white

# Luminance weights (the Y row of RGB → XYZ) and the D65 BT.709 ↔ BT.2020 matrices
# (ITU-R BT.2087 gives the first; the second is its inverse).
BT709_LUMA = (0.2126390058715103, 0.7151686787677559, 0.0721923153607337)
BT2020_LUMA = (0.2627, 0.6780, 0.0593)
BT709_TO_BT2020 = (
    (0.6274038959346991, 0.3292830383778837, 0.0433130656874172),
    (0.0690972893582320, 0.9195403950754587, 0.0113623155663092),
    (0.0163914388751503, 0.0880133078772259, 0.8955952532476238),
)
BT2020_TO_BT709 = (
    (1.6604910021084338, -0.5876411387885494, -0.0728498633198846),
    (-0.1245504745215905, 1.1328998971259600, -0.0083494226043695),
    (-0.0181507633549053, -0.1005788980080076, 1.1187296613629125),
)


# --- transfer functions (per channel) -------------------------------------------------------

def srgb_decode(v: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values → linear light (the inverse of :func:`srgb_encode`); values
    above 1 follow the curve on, below 0 the linear toe."""
    import torch

    curve = ((v.clamp_min(0.0) + 0.055) / 1.055).pow(2.4)
    return torch.where(v <= 0.04045, v / 12.92, curve)


def srgb_encode(v: torch.Tensor) -> torch.Tensor:
    """Linear light → sRGB-encoded values (IEC 61966-2-1)."""
    import torch

    curve = 1.055 * v.clamp_min(0.0031308).pow(1.0 / 2.4) - 0.055
    return torch.where(v <= 0.0031308, v * 12.92, curve)


def hlg_decode(v: torch.Tensor) -> torch.Tensor:
    """HLG signal → scene-linear light in [0, 1] (the inverse HLG OETF, BT.2100)."""
    import torch

    log_branch = (torch.exp((v.clamp_min(0.5) - HLG_C) / HLG_A) + HLG_B) / 12.0
    return torch.where(v <= 0.5, v * v / 3.0, log_branch)


def hlg_encode(e: torch.Tensor) -> torch.Tensor:
    """Scene-linear light in [0, 1] → HLG signal (the HLG OETF, BT.2100): 1/12 → 0.5."""
    import torch

    low = (3.0 * e.clamp_min(0.0)).sqrt()
    high = HLG_A * torch.log(12.0 * e.clamp_min(1.0 / 12.0) - HLG_B) + HLG_C
    return torch.where(e <= 1.0 / 12.0, low, high)


def pq_decode(v: torch.Tensor) -> torch.Tensor:
    """PQ signal → display light in cd/m² (the ST 2084 EOTF): 1.0 → 10000."""
    # E^(1/m2) - c1 cancels near black: write E^(1/m2) = 1 + t with t = expm1(ln E / m2).
    t = (v.clamp_min(0.0).log() / PQ_M2).expm1()
    ratio = (t + (1.0 - PQ_C1)).clamp_min(0.0) / ((PQ_C2 - PQ_C3) - PQ_C3 * t)
    return ratio.pow(1.0 / PQ_M1) * PQ_PEAK_NITS


def pq_encode(nits: torch.Tensor) -> torch.Tensor:
    """Display light in cd/m² → PQ signal (the inverse ST 2084 EOTF): 100 → ≈0.508."""
    y = (nits.clamp_min(0.0) / PQ_PEAK_NITS).pow(PQ_M1)
    # (c1 + c2·y) / (1 + c3·y) = 1 + u, so the power is exp(m2·log1p(u)).
    u = ((PQ_C1 - 1.0) + (PQ_C2 - PQ_C3) * y) / (1.0 + PQ_C3 * y)
    return (u.log1p() * PQ_M2).exp()


# --- primaries, luminance, tone and gamut mapping (RGB, last dimension) --------------------

def convert_primaries(rgb: torch.Tensor, matrix: tuple[tuple[float, ...], ...]
                      ) -> torch.Tensor:
    return rgb @ rgb.new_tensor(matrix).T


def luminance(rgb: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    return (rgb * rgb.new_tensor(weights)).sum(dim=-1, keepdim=True)


def tone_map(rgb: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """Scale colours so no luminance exceeds 1: extended Reinhard on luminance, its white
    point the brightest pixel of the whole batch (no change when that is at most 1)."""
    y = luminance(rgb, weights).clamp_min(0.0)
    peak = float(y.max()) if y.numel() else 0.0
    if not math.isfinite(peak) or peak <= 1.0001:  # transfer-curve round-off at white
        return rgb
    return rgb * ((1.0 + y / (peak * peak)) / (1.0 + y))


def compress_gamut(rgb: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """Colours outside [0, 1] moved towards their (clamped) luminance just enough to fit;
    colours inside are kept."""
    import torch

    y = luminance(rgb, weights).clamp(0.0, 1.0)
    lowest = rgb.amin(dim=-1, keepdim=True)
    highest = rgb.amax(dim=-1, keepdim=True)
    tiny = torch.finfo(rgb.dtype).tiny
    room_up = (1.0 - y) / (highest - y).clamp_min(tiny)
    room_down = y / (y - lowest).clamp_min(tiny)
    saturation = torch.minimum(room_up, room_down).clamp(0.0, 1.0)
    inside = (lowest >= -1e-5) & (highest <= 1.00001)
    return torch.where(inside, rgb, y + (rgb - y) * saturation).clamp(0.0, 1.0)


def to_display_nits(rgb: torch.Tensor, source: str) -> torch.Tensor:
    """Encoded RGB in ``source`` → display light in BT.2020, cd/m²."""
    if source == "sRGB":
        return convert_primaries(srgb_decode(rgb), BT709_TO_BT2020) * SDR_WHITE_NITS
    if source == "HDR":  # inverse OETF, then the HLG OOTF on a 1000-nit display
        scene = hlg_decode(rgb)
        y = luminance(scene, BT2020_LUMA).clamp_min(0.0)
        return scene * (y.pow(HLG_GAMMA - 1.0) * HLG_PEAK_NITS)
    if source == "HDR PQ":
        return pq_decode(rgb)
    raise ValueError(f"source {source!r} is not a colour space: choose one of "
                     f"{', '.join(SPACES)}")


def from_display_nits(nits: torch.Tensor, destination: str, source: str) -> torch.Tensor:
    """Display light in BT.2020 cd/m² → encoded RGB in ``destination`` (tone and gamut
    mapped where the destination is narrower, as the module docstring says)."""
    if destination == "sRGB":
        rgb = convert_primaries(nits / SDR_WHITE_NITS, BT2020_TO_BT709)
        rgb = compress_gamut(tone_map(rgb, BT709_LUMA), BT709_LUMA)
        return srgb_encode(rgb)
    if destination == "HDR":
        rgb = nits / HLG_PEAK_NITS
        from_pq = source == "HDR PQ"
        if from_pq:
            rgb = tone_map(rgb, BT2020_LUMA)
        import torch

        y = luminance(rgb, BT2020_LUMA).clamp_min(torch.finfo(rgb.dtype).tiny)
        rgb = rgb * y.pow(1.0 / HLG_GAMMA - 1.0)  # the inverse OOTF
        if from_pq:
            rgb = compress_gamut(rgb, BT2020_LUMA)
        return hlg_encode(rgb)
    if destination == "HDR PQ":
        return pq_encode(nits)
    raise ValueError(f"destination {destination!r} is not a colour space: choose one of "
                     f"{', '.join(SPACES)}")


def convert_color_space(image: torch.Tensor, source: str, destination: str) -> torch.Tensor:
    """IMAGE ``[B, H, W, 3|4]`` from ``source`` to ``destination`` (float32 math; alpha
    kept)."""
    import torch

    from nodes.limits import check_image

    check_image(image, "image", channels=(3, 4))
    for name, value in (("source", source), ("destination", destination)):
        if value not in SPACES:
            raise ValueError(f"{name} {value!r} is not a colour space: choose one of "
                             f"{', '.join(SPACES)}")
    if source == destination:
        return image
    rgb = image[..., :3].float()  # PQ's constants need more than half precision
    if not bool(rgb.isfinite().all()):
        raise ValueError("image holds NaN or infinite values; a colour conversion needs "
                         "finite pixels (check the node that made it)")
    # every transfer curve's signal is 0..1: outside it (an unscaled 0..255 image, say) one
    # pixel would set the whole batch's tone-mapping white point
    rgb = rgb.clamp(0.0, 1.0)
    out = from_display_nits(to_display_nits(rgb, source), destination, source)
    if image.shape[-1] == 4:
        out = torch.cat((out, image[..., 3:].float()), dim=-1)
    return out.to(image.dtype if image.dtype.is_floating_point else torch.float32)


class ImageColorSpace(Node):
    """Convert an image between sRGB, HDR (BT.2020 HLG) and HDR PQ (BT.2020 PQ).

    Use it before Save Image (Advanced) to write HDR (set the save node's colour space
    to the same one), or after loading an HDR frame to view or process it as sRGB.
    sRGB white sits at 203 nits; HLG assumes a 1000-nit display. Converting to sRGB
    tone-maps highlights over white (one curve for the whole batch) and pulls colours
    outside sRGB's gamut in; alpha is kept as it is. The result is float and may hold
    values HDR encodings need — do not clamp it before saving."""

    TYPE = "ImageColorSpace"
    DISPLAY_NAME = "Convert Image Color Space"
    CATEGORY = "image/color"
    OUTPUTS = (Output("IMAGE"),)

    image: Tensor = Input(type="IMAGE")
    source: str = Input("sRGB", choices=list(SPACES),
                        description="Color space of the input pixels.")
    destination: str = Input("sRGB", choices=list(SPACES), description=(
        "Color space of the output pixels. Set the save node to this same color space."))

    def execute(self, ctx: ExecutionContext) -> tuple[torch.Tensor]:
        return (convert_color_space(self.image, self.source, self.destination),)


NODE_CLASSES = (ImageColorSpace,)
