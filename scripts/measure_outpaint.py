"""Outpainting on steerflow-shapes, measured with the analytic judge: extend 64x64 shapes
pictures by 32 px on the right (the example's graph: Pad Image for Outpainting → VAE Encode
(for Inpainting) → Sample (euler 25, cfg 7.5) → paste back through the feathered mask) and
read the new strip: does its background continue the picture's (luma step, 0..255), and
does a new shape appear in it (the prompt's shapes re-placed on the wider canvas)?

    .venv/bin/python /tmp/measure_outpaint.py --world 77 --n 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, "/work/main")

import numpy as np
import torch
from scipy import ndimage

from training.evaluate import GraphRunner
from training.judge import blobs, foreground
from training.shapes import generate

PAD = 32


def graph(image: str, text: str, seed: int) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-shapes"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "11": {"class_type": "ImagePadForOutpaint", "inputs": {
            "image": ["10", 0], "left": 0, "top": 0, "right": PAD, "bottom": 0,
            "feathering": 8}},
        "12": {"class_type": "VAEEncodeForInpaint", "inputs": {
            "pixels": ["11", 0], "vae": ["4", 2], "mask": ["11", 1], "grow_mask_by": 6}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": 25, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["12", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "15": {"class_type": "ImageCompositeMasked", "inputs": {
            "destination": ["11", 0], "source": ["8", 0], "x": 0, "y": 0,
            "resize_source": False, "mask": ["11", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["15", 0],
                                                    "filename_prefix": "outpaint"}},
    }


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def background_mean(image: np.ndarray) -> float:
    away = ~ndimage.binary_dilation(foreground(image), iterations=2)
    values = luma(image)[away]
    return float(values.mean()) if values.size else float("nan")


def new_shape(out: np.ndarray) -> bool:
    """A shape blob centred in the new strip."""
    for blob in blobs(foreground(out)):
        _, xs = np.nonzero(blob)
        if xs.mean() >= 64:
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, default=77)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--base", default="/tmp/gligen_outpaint_measure")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = Path(args.base)
    runner = GraphRunner(base / "models", base / "work")
    prompts = {"caption": lambda s: s.caption,
               "background only": lambda s: f"a {s.background} background"}
    results = {k: {"step": [], "new": []} for k in prompts}
    own = []  # the picture's own background step between its right and left halves
    for i in range(args.n):
        sample = generate(args.world, i, size=64)
        name = runner.put_image(f"pic_{i}.png", sample.image)
        picture_bg = background_mean(sample.image)
        own.append(abs(background_mean(sample.image[:, 32:])
                       - background_mean(sample.image[:, :32])))
        for key, make in prompts.items():
            out = runner.image(graph(name, make(sample), seed=i))
            strip = out[:, 64:]
            results[key]["step"].append(abs(background_mean(strip) - picture_bg))
            results[key]["new"].append(new_shape(out))
    print(f"world {args.world}, {args.n} pictures, right +{PAD} px; the pictures' own "
          f"half-to-half background step: median {statistics.median(own):.1f}")
    for key, r in results.items():
        print(f"  prompt = {key:<16} background step median {statistics.median(r['step']):5.1f} "
              f"(mean {np.mean(r['step']):5.1f}) luma; new shape in the strip "
              f"{100 * np.mean(r['new']):.0f}%")


if __name__ == "__main__":
    main()
