"""Model Sampling Discrete and the lcm sampler: the graph equals diffusers'
StableDiffusionPipeline with the scheduler config the node describes."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from nodes.diffusion.schedulers import SAMPLERS
from tests.test_txt2img import (  # noqa: F401
    NEGATIVE,
    PROMPT,
    SIZE,
    graph_image,
    reference_pipe,
    txt2img_prompt,
)


def with_model_sampling(prompt: dict, sampling: str, zsnr: bool = False) -> dict:
    prompt["11"] = {"class_type": "ModelSamplingDiscrete",
                    "inputs": {"model": ["4", 0], "sampling": sampling, "zsnr": zsnr}}
    prompt["3"]["inputs"]["model"] = ["11", 0]
    return prompt


def pipeline_image(pipe, sampler: str, *, steps: int, cfg: float, **config) -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(
        {**pipe.base_scheduler_config, **config}, **extra)
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                guidance_scale=cfg, height=SIZE, width=SIZE, output_type="np",
                generator=torch.Generator("cpu").manual_seed(7)).images


@pytest.mark.parametrize(("cfg", "sampling"), [(1.0, None), (1.5, "lcm")])
def test_lcm_sampler_matches_the_pipeline_with_lcm_scheduler(session, reference_pipe, cfg,  # noqa: F811
                                                             sampling):
    prompt = txt2img_prompt("steerflow-tiny", "lcm", steps=4, cfg=cfg)
    if sampling:
        prompt = with_model_sampling(prompt, sampling)
    ours = graph_image(session, prompt)
    ref = pipeline_image(reference_pipe, "lcm", steps=4, cfg=cfg)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize(("sampling", "zsnr", "sampler", "config"), [
    ("v_prediction", False, "euler", {"prediction_type": "v_prediction"}),
    ("v_prediction", True, "ddim", {"prediction_type": "v_prediction",
                                    "rescale_betas_zero_snr": True}),
    ("x0", False, "dpmpp_2m", {"prediction_type": "sample"}),
    ("eps", True, "euler", {"prediction_type": "epsilon", "rescale_betas_zero_snr": True}),
])
def test_model_sampling_reads_the_output_as_told(session, reference_pipe, sampling, zsnr,  # noqa: F811
                                                 sampler, config):
    plain = graph_image(session, txt2img_prompt("steerflow-tiny", sampler, steps=5))
    prompt = with_model_sampling(txt2img_prompt("steerflow-tiny", sampler, steps=5),
                                 sampling, zsnr)
    ours = graph_image(session, prompt)
    ref = pipeline_image(reference_pipe, sampler, steps=5, cfg=7.5, **config)
    assert np.abs(ours - ref).max() <= 1e-4
    assert np.abs(ours - plain).max() > 1e-3  # it changed something


def test_unsupported_modes_are_refused_clearly(session):
    prompt = with_model_sampling(txt2img_prompt("steerflow-tiny", "euler", steps=2),
                                 "img_to_img")
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "img_to_img" in result.run.error["exception_message"]
    prompt = with_model_sampling(txt2img_prompt("steerflow-tiny", "heun", steps=2), "eps",
                                 zsnr=True)
    result = session.run(prompt)
    assert result.run.status == "error"
    message = result.run.error["exception_message"]
    assert "zero-terminal-SNR" in message and "euler" in message


def test_the_loaded_model_is_unchanged(session):
    from nodes.diffusion.handles import DiffusionModel
    from nodes.model_sampling import ModelSamplingDiscrete

    base = DiffusionModel(object(), {"prediction_type": "epsilon"})
    (out,) = ModelSamplingDiscrete(model=base, sampling="v_prediction", zsnr=True).execute(None)
    assert base.scheduler_config == {"prediction_type": "epsilon"}
    assert out.scheduler_config == {"prediction_type": "v_prediction",
                                    "rescale_betas_zero_snr": True}
