"""Build the example upscale model: a Real-ESRGAN *Compact* (SRVGGNetCompact) network whose
weights are set by hand so that it computes exactly a bilinear x2 upscale.

No super-resolution model can be downloaded here and a random one draws noise, so the
example workflow (workflows/upscale_model.json) gets a model whose output is known: it
equals ``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``, border
pixels included. It is not sharper than bilinear (it is a demonstration of the loader
and tiling, not of learnt super-resolution), but it is a genuine spandrel-detected
Compact file, loaded exactly as a downloaded ``realesr-general-x4v3`` would be.

How the weights compute bilinear (per colour channel; x in 0..1). Compact returns
``nearest_x2(x) + pixel_shuffle(body(x))``, so the body must give, for the output pixel
``(dy, dx)`` of input pixel ``(i, j)``, bilinear − nearest. With ``a = -1 if dy == 0
else +1`` and ``b`` alike for ``dx``, and ``x(p, q)`` the pixel at offset ``(p, q)``:

    residual = T1/4 + T2/4 + (T3 − T4)/16
    T1 = g(a,0)·(x(a,0) − x(0,0))      T2 = g(0,b)·(x(0,b) − x(0,0))
    T3 = g(a,b)·(x(a,b) − x(0,b))      T4 = g(a,b)·(x(a,0) − x(0,0))

where ``g(p, q)`` is 1 when that neighbour lies inside the image, else 0 (bilinear
clamps at the border; the convolution's zero padding would not). A gate times a
difference ``d`` (|d| ≤ 1) is ``relu(d + K·g − K) − relu(−d + K·g − K)`` with K = 2, and
``g`` is a constant-1 feature map seen through the next layer's zero padding. So: layer 1
copies the three colours (PReLU slope 1) and makes the constant map; layer 2 makes the
16 gated ReLU pairs per colour (96 features); the last layer sums them into the 12
pixel-shuffle channels.

Run: ``python -m training.upscaler_x2`` (a second; writes and checks the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

OUT = (Path(__file__).resolve().parents[1] / "workflows" / "assets" / "upscale_models"
       / "steerflow-x2-bilinear.safetensors")
K = 2.0
COLOURS = 3
SCALE = 2
CONST = COLOURS  # layer-1 feature holding the constant 1


def _terms() -> list[tuple[int, int, float, tuple[int, int], tuple[int, int], tuple[int, int]]]:
    """``(dy, dx, coefficient, p, q, gate)``: coefficient · g(gate) · (x(p) − x(q))."""
    terms = []
    for dy in range(SCALE):
        for dx in range(SCALE):
            a, b = (-1 if dy == 0 else 1), (-1 if dx == 0 else 1)
            terms += [(dy, dx, 0.25, (a, 0), (0, 0), (a, 0)),
                      (dy, dx, 0.25, (0, b), (0, 0), (0, b)),
                      (dy, dx, 0.0625, (a, b), (0, b), (a, b)),
                      (dy, dx, -0.0625, (a, 0), (0, 0), (a, b))]
    return terms


def bilinear_state_dict() -> dict[str, torch.Tensor]:
    """The Compact network's state dict (``body.0`` ... ``body.4``)."""
    terms = _terms()
    features = 2 * len(terms) * COLOURS  # 96: a ReLU pair per term and colour
    conv1 = torch.zeros(features, COLOURS, 3, 3)
    bias1 = torch.zeros(features)
    for c in range(COLOURS):
        conv1[c, c, 1, 1] = 1.0
    bias1[CONST] = 1.0
    slope1 = torch.zeros(features)
    slope1[:COLOURS + 1] = 1.0  # identity on the copies (and the constant)
    conv2 = torch.zeros(features, features, 3, 3)
    bias2 = torch.full((features,), -K)
    conv3 = torch.zeros(COLOURS * SCALE * SCALE, features, 3, 3)
    n = 0
    for c in range(COLOURS):
        for dy, dx, coefficient, p, q, gate in terms:
            for sign in (1.0, -1.0):
                conv2[n, c, 1 + p[0], 1 + p[1]] += sign
                conv2[n, c, 1 + q[0], 1 + q[1]] -= sign
                conv2[n, CONST, 1 + gate[0], 1 + gate[1]] += K
                # pixel shuffle: channel c·s² + dy·s + dx becomes (c, 2i + dy, 2j + dx)
                conv3[c * SCALE * SCALE + dy * SCALE + dx, n, 1, 1] = sign * coefficient
                n += 1
    return {"body.0.weight": conv1, "body.0.bias": bias1, "body.1.weight": slope1,
            "body.2.weight": conv2, "body.2.bias": bias2,
            "body.3.weight": torch.zeros(features),
            "body.4.weight": conv3, "body.4.bias": torch.zeros(COLOURS * SCALE * SCALE)}


def check(path: Path) -> float:
    """Load ``path`` as Load Upscale Model does and return its largest difference from
    bilinear on random non-square images."""
    from nodes.diffusion.upscale_model import load_upscale_model

    descriptor = load_upscale_model(path)
    assert descriptor.architecture.id == "Compact" and descriptor.scale == SCALE
    torch.manual_seed(0)
    worst = 0.0
    for h, w in ((17, 30), (64, 64), (5, 3)):
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            got = descriptor(x)
        want = F.interpolate(x, scale_factor=SCALE, mode="bilinear", align_corners=False)
        worst = max(worst, float((got - want).abs().max()))
    return worst


def main() -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    # float16 holds every weight exactly (±1, ±2, 1/4, 1/16): half the file
    weights = {k: v.half() for k, v in bilinear_state_dict().items()}
    save_file(weights, str(tmp), metadata={
        "steerflow.description": "Compact x2 with analytic weights: exactly bilinear x2 "
                                 "(training/upscaler_x2.py)"})
    tmp.replace(args.out)
    worst = check(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB); "
          f"max |model - bilinear| = {worst:.2e}")
    if worst > 1e-5:
        raise SystemExit("the model does not match bilinear")


if __name__ == "__main__":
    main()
