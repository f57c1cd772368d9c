"""The GPU path (run where CUDA is available; skipped elsewhere, CI stays CPU-only).

- float16 on CUDA matches diffusers' pipelines loaded in float16 on CUDA (SD 1.x and
  SDXL, tiny weights, a non-square size), the VAE in float32 on both sides as
  ``force_upcast`` asks;
- a re-run that changes only the seed finds the loaded model and the encoded prompts
  in the cache, still on the device: nothing is loaded again and no weight crosses
  the bus (the host-to-device bytes the profiler records are a small fraction of the
  weights' bytes).

The measured differences are printed (``-s``), so a GPU visit records them.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from engine.session import Session
from tests.graph_nodes import CAPTURED, registry_with_capture
from tests.test_sdxl import HEIGHT, NEGATIVE, PROMPT, WIDTH, graph_image, txt2img_prompt

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.slow]

FP16_PIXEL_TOLERANCE = 5e-3  # both sides run the same float16 kernels; the rest is rounding


def _session(models_dir: Path, home: Path) -> Session:
    session = Session(home, models_dir=models_dir, device="cuda",
                      registry=registry_with_capture())
    session.env.options["dtype"] = "fp16"
    return session


def _txt2img(ckpt: str, seed: int, *, sdxl: bool = False) -> dict:
    return txt2img_prompt(ckpt, "euler", "normal", steps=6, cfg=6.0, seed=seed, plain=not sdxl)


def _reference(pipe: diffusers.DiffusionPipeline, seed: int, steps: int = 6) -> np.ndarray:
    """The pipeline in float16 up to the latents, decoded by its float32 VAE."""
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    latents = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                   guidance_scale=6.0, height=HEIGHT, width=WIDTH, output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(seed)).images
    vae = pipe.vae
    with torch.no_grad():
        image = vae.decode(latents.to(torch.float32) / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


def _fp16_pipe(cls: type, folder: Path, **kwargs) -> diffusers.DiffusionPipeline:
    pipe = cls.from_pretrained(folder, local_files_only=True, dtype=torch.float16,
                               **kwargs).to("cuda")
    pipe.vae.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_cuda_fp16_txt2img_matches_the_pipeline(models_dir, tiny_model_paths, tmp_path):
    session = _session(models_dir, tmp_path)
    ours = graph_image(session, _txt2img(tiny_model_paths["diffusers"].name, seed=5))
    pipe = _fp16_pipe(diffusers.StableDiffusionPipeline, tiny_model_paths["diffusers"],
                      safety_checker=None, requires_safety_checker=False)
    ref = _reference(pipe, seed=5)
    diff = float(np.abs(ours - ref).max())
    print(f"\nSD 1.x fp16 on {torch.cuda.get_device_name()}: max abs pixel diff {diff:.2e}")
    assert ours.shape == ref.shape == (1, HEIGHT, WIDTH, 3)
    assert np.isfinite(ours).all()
    assert diff <= FP16_PIXEL_TOLERANCE


def test_cuda_fp16_sdxl_matches_the_pipeline(tmp_path_factory, tmp_path):
    from nodes.diffusion.tiny_sdxl import TINY_SDXL_NAME, ensure_tiny_sdxl

    models = tmp_path_factory.mktemp("sdxl_models")
    ensure_tiny_sdxl(models)
    session = _session(models, tmp_path)
    ours = graph_image(session, _txt2img(TINY_SDXL_NAME, seed=3, sdxl=True))
    pipe = _fp16_pipe(diffusers.StableDiffusionXLPipeline,
                      models / "checkpoints" / TINY_SDXL_NAME)
    ref = _reference(pipe, seed=3)
    diff = float(np.abs(ours - ref).max())
    print(f"\nSDXL fp16 on {torch.cuda.get_device_name()}: max abs pixel diff {diff:.2e}")
    assert np.isfinite(ours).all()
    assert diff <= FP16_PIXEL_TOLERANCE


def _host_to_device_bytes(trace: Path) -> tuple[int, int]:
    """(events, bytes) of host-to-device copies in a chrome trace of the profiler."""
    events = json.loads(trace.read_text())["traceEvents"]
    copies = [e for e in events if "HtoD" in str(e.get("name", ""))]
    return len(copies), sum(int((e.get("args") or {}).get("bytes", 0)) for e in copies)


def test_cuda_cache_hits_stay_on_the_device(models_dir, tiny_model_paths, tmp_path):
    from torch.profiler import ProfilerActivity, profile

    session = Session(tmp_path, models_dir=models_dir, device="cuda",
                      registry=registry_with_capture())
    ckpt = tiny_model_paths["diffusers"].name

    def prompt(seed: int, key: str) -> dict:
        graph = _txt2img(ckpt, seed=seed)
        graph["10"]["inputs"]["key"] = uuid.uuid4().hex
        graph["11"] = {"class_type": "TestCapture", "inputs": {"value": ["4", 0], "key": key}}
        return graph

    first = session.run(prompt(1, "model"))
    assert first.ok, first.run.error
    unet = CAPTURED.pop("model").unet
    weight_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    assert all(p.device.type == "cuda" for p in unet.parameters())

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        second = session.run(prompt(2, "model again"))
        torch.cuda.synchronize()
    assert second.ok, second.run.error
    assert not {"4", "6", "7"} & set(second.run.executed)  # loader and prompts: cache hits
    assert CAPTURED.pop("model again").unet is unet
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    count, nbytes = _host_to_device_bytes(trace)
    print(f"\nseed-only re-run: {count} host-to-device copies, {nbytes} bytes "
          f"(UNet weights: {weight_bytes} bytes)")
    assert all(p.device.type == "cuda" for p in unet.parameters())
    assert nbytes < weight_bytes // 20
