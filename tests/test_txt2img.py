"""Text-to-image through the graph equals diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import json
import uuid

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.schedulers import (
    SAMPLERS,
    SCHEDULES,
    unsupported_combination,
    validation_problem,
)
from tests.graph_nodes import CAPTURED

PROMPT = "a red circle at the top left on a white background"
NEGATIVE = "blurry"
SIZE = 64


def txt2img_prompt(ckpt: str, sampler: str, schedule: str = "normal", *, seed: int = 7,
                   steps: int = 6, cfg: float = 7.5, capture: bool = True) -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler, "scheduler": schedule, "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t"}},
    }
    if capture:
        prompt["10"] = {"class_type": "TestCapture", "inputs": {"value": ["8", 0]}}
    return prompt


@pytest.fixture(scope="module")
def reference_pipe(tiny_model_paths):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_scheduler_config = dict(pipe.scheduler.config)  # schedulers carry options over
    return pipe


def reference_image(pipe, sampler: str, schedule: str = "normal", *, seed: int = 7,
                    steps: int = 6, cfg: float = 7.5) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(
        pipe.base_scheduler_config, **extra, **SCHEDULES[schedule])
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
               guidance_scale=cfg, height=SIZE, width=SIZE, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images


def graph_image(session, prompt) -> np.ndarray:
    # A fresh key per call: an identical earlier prompt would otherwise be served
    # whole from the cache and the capture node would not run again.
    key = uuid.uuid4().hex
    prompt["10"]["inputs"]["key"] = key
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).cpu().numpy()


@pytest.mark.parametrize(("sampler", "schedule"), [
    ("ddim", "normal"), ("euler", "normal"), ("dpmpp_2m", "normal"), ("dpmpp_2m", "karras"),
    ("euler_ancestral", "normal"), ("uni_pc", "normal"), ("pndm", "normal"), ("lms", "normal"),
    ("heun", "normal"), ("dpmpp_3m_sde", "karras"), ("dpmpp_2m_sde_heun", "exponential"),
])
def test_matches_stable_diffusion_pipeline(session, reference_pipe, sampler, schedule):
    ours = graph_image(session, txt2img_prompt("steerflow-tiny", sampler, schedule))
    ref = reference_image(reference_pipe, sampler, schedule)
    assert ours.shape == ref.shape == (1, SIZE, SIZE, 3)
    assert np.abs(ours - ref).max() <= 1e-4


def test_single_file_equals_diffusers_folder(session):
    a = graph_image(session, txt2img_prompt("steerflow-tiny", "euler"))
    b = graph_image(session, txt2img_prompt("steerflow-tiny.safetensors", "euler"))
    assert np.array_equal(a, b)


def test_every_sampler_and_schedule_runs_or_is_refused(session):
    ran = refused = 0
    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            # the sampler alone, on a 4x4 latent: no decode, no file (360 runs)
            prompt = txt2img_prompt("steerflow-tiny", sampler, schedule, steps=3)
            prompt["5"]["inputs"].update(width=32, height=32)
            del prompt["8"], prompt["9"]
            prompt["10"]["inputs"]["value"] = ["3", 0]
            if unsupported_combination(sampler, schedule):
                if validation_problem(sampler, schedule):
                    with pytest.raises(Exception, match="does not support"):
                        session.validate(prompt)
                else:  # continuous-σ models run it: this discrete one refuses at run time
                    result = session.run(prompt)
                    assert not result.ok
                    assert "does not support" in str(result.run.error["exception_message"])
                refused += 1
                continue
            key = prompt["10"]["inputs"]["key"] = uuid.uuid4().hex
            result = session.run(prompt)
            assert result.ok, (sampler, schedule, result.run.error)
            assert torch.isfinite(CAPTURED.pop(key).samples).all(), (sampler, schedule)
            ran += 1
    assert ran >= 40 and refused >= 1


def test_seed_change_reruns_only_sampler_and_downstream(session):
    session.run(txt2img_prompt("steerflow-tiny", "euler", seed=1))
    result = session.run(txt2img_prompt("steerflow-tiny", "euler", seed=2))
    assert sorted(result.run.executed) == ["10", "3", "8", "9"]  # not loader, encoders
    assert session.run(txt2img_prompt("steerflow-tiny", "euler", seed=2)).run.executed == []


def test_saved_png_reruns_to_the_same_image(session, models_dir, tmp_path):
    first = session.run(txt2img_prompt("steerflow-tiny", "dpmpp_2m", seed=11, capture=False))
    (png,) = first.image_paths
    wf = Workflow.load(png)
    assert wf.prompt["3"]["inputs"]["seed"] == 11
    assert wf.document is not None and wf.document["format"] == "steerflow.workflow"
    other = Session(tmp_path, models_dir=models_dir, device="cpu")  # a fresh cache
    (again,) = other.run(wf).image_paths
    a, b = np.asarray(Image.open(png)), np.asarray(Image.open(again))
    assert np.array_equal(a, b)


def test_pickle_checkpoint_refused_unless_opted_in(session, models_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from nodes.diffusion.original_layout import CONFIG_METADATA_KEY

    single = models_dir / "checkpoints" / "steerflow-tiny.safetensors"
    with safe_open(str(single), "pt") as fh:
        config = fh.metadata()[CONFIG_METADATA_KEY]
    pickled = models_dir / "checkpoints" / "pickled.ckpt"
    torch.save({"state_dict": load_file(single), CONFIG_METADATA_KEY: config}, pickled)
    try:
        # refused at validation, before anything loads (load_components refuses it too)
        with pytest.raises(PromptValidationError, match=r"pickled\.ckpt is a pickle file"):
            session.run(txt2img_prompt("pickled.ckpt", "euler", capture=False))
        opted = Session(tmp_path, models_dir=models_dir, device="cpu", allow_pickle=True)
        result = opted.run(txt2img_prompt("pickled.ckpt", "euler", capture=False))
        assert result.ok, result.run.error
    finally:
        pickled.unlink()


def test_example_workflow_validates(session):
    wf = Workflow.load("workflows/txt2img.json")
    session.validate(wf)
    assert json.loads(json.dumps(wf.prompt)) == wf.prompt


def test_interrupt_stops_the_sampler_within_one_step(session):
    import threading

    prompt = txt2img_prompt("steerflow-tiny", "euler", steps=10000, capture=False)
    prompt["3"]["inputs"]["seed"] = 4242  # not cached
    prompt["3"]["inputs"]["scheduler"] = "karras"  # 10000 steps: a σ schedule takes them
    progress: list[int] = []
    started = threading.Event()

    def on_event(name, data):
        if name == "progress":
            progress.append(data["value"])
            started.set()

    results = []
    worker = threading.Thread(target=lambda: results.append(
        session.run(prompt, on_event=on_event, prompt_id="long")))
    worker.start()
    assert started.wait(60)
    seen = len(progress)
    assert session.executor.interrupt("long")
    worker.join(60)
    assert results[0].run.status == "interrupted"
    # the step running when we read `seen` may finish, then the one running at the
    # interrupt finishes and reports; nothing after that
    assert len(progress) <= seen + 2
    assert session.run(txt2img_prompt("steerflow-tiny", "euler", steps=2)).ok


def test_live_latent_previews_when_asked(session):
    prompt = txt2img_prompt("steerflow-tiny", "euler", steps=3, seed=77)
    events = []
    result = session.run(prompt, on_event=lambda n, d: events.append((n, d)),
                         extra={"preview": True})
    assert result.ok
    previews = [d["image"] for n, d in events if n == "preview"]
    assert len(previews) == 3 and previews[0].mode == "RGB" and previews[0].size[0] >= 8
    quiet = []
    session.run(txt2img_prompt("steerflow-tiny", "euler", steps=3, seed=78),
                on_event=lambda n, d: quiet.append(n))
    assert "preview" not in quiet


@pytest.mark.parametrize("sampler", ["dpmpp_sde", "dpmpp_sde_gpu"])
def test_sde_samplers_give_the_same_image_for_a_seed(models_dir, tmp_path, sampler):
    """diffusers' DPMSolverSDEScheduler seeds its Brownian tree from the global RNG unless
    told a seed: the sampler's seed must fix it, whatever ran before."""
    from engine.session import Session
    from tests.graph_nodes import registry_with_capture

    images = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # another process, another history
        session = Session(tmp_path / str(run), models_dir=models_dir, device="cpu",
                          registry=registry_with_capture())
        images.append(graph_image(session, txt2img_prompt("steerflow-tiny", sampler)))
    assert np.array_equal(images[0], images[1])
    other = graph_image(session, txt2img_prompt("steerflow-tiny", sampler, seed=8))
    assert np.abs(other - images[0]).max() > 1e-3
