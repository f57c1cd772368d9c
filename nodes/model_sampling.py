"""Model Sampling Discrete: ComfyUI's node that says how a model's output is read and
how its noise schedule ends — the scheduler config a MODEL carries, changed on a new
handle (the loaded model is never touched).

``sampling``:

* ``eps`` / ``v_prediction`` / ``x0``: the UNet predicts the noise, the velocity or the
  clean latent (diffusers' ``prediction_type`` epsilon / v_prediction / sample): for a
  v-prediction fine-tune of an SD 1.x base, or a checkpoint whose file does not say.
* ``lcm``: a latent consistency model (an LCM-LoRA on the base, or an LCM-distilled
  checkpoint): sample with the ``lcm`` sampler (diffusers' ``LCMScheduler``: 2-8 steps,
  cfg 1-2, each step to x0 with LCM's boundary condition, then re-noised), whose
  timesteps come from the 50-step grid the LCM was distilled on. Other samplers run
  the model as a plain epsilon model (ComfyUI applies the boundary condition to every
  sampler; at LCM's timesteps it is within a few parts in a thousand of 1).
* ``img_to_img``: ComfyUI's mode for image-to-image-trained models (Lotus); not
  supported here: an error that says so.

``zsnr`` rescales the betas to zero terminal SNR (Lin et al. 2023, diffusers'
``rescale_betas_zero_snr``), for models trained that way; the samplers whose diffusers
scheduler has the option take it, the others refuse it when the run starts.

Model Sampling Continuous EDM / V say that a model was trained on continuous noise levels
(CosXL, Playground v2.5, EDM fine-tunes): see :mod:`nodes.diffusion.continuous`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.continuous import (
    DISCRETE_KEY,
    PLAYGROUND_LATENT_FORMAT,
    check_range,
    is_continuous,
    replace_sampling,
)
from nodes.diffusion.handles import DiffusionModel

SAMPLING = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
PREDICTION_TYPES = {"eps": "epsilon", "v_prediction": "v_prediction", "lcm": "epsilon",
                    "x0": "sample"}
#: LCM's distillation grid: the timesteps LCMScheduler picks its steps from
LCM_ORIGINAL_STEPS = 50


class ModelSamplingDiscrete(Node):
    """Say how this model's output is read (noise, velocity, clean latent, or a latent
    consistency model) and whether its schedule ends at zero SNR; the loaded model is
    unchanged, the output is a new MODEL.

    Typical uses: ``lcm`` after Load LoRA with an LCM-LoRA, then KSampler with sampler
    ``lcm``, 4-8 steps and cfg 1-2; ``v_prediction`` (+ ``zsnr`` if it was trained so) for
    v-prediction fine-tunes of SD 1.x.
    """

    TYPE = "ModelSamplingDiscrete"
    DISPLAY_NAME = "Model Sampling Discrete"
    CATEGORY = "advanced/model"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    sampling: str = Input("eps", choices=SAMPLING,
                          description="What the UNet predicts: eps (noise), v_prediction, "
                          "lcm (a latent consistency model: use the lcm sampler), x0")
    zsnr: bool = Input(False, description="Rescale the betas to zero terminal SNR (for "
                       "models trained so)")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        if self.sampling == "img_to_img":
            raise ValueError("Model Sampling Discrete: 'img_to_img' (ComfyUI's mode for "
                             "image-to-image-trained models such as Lotus) is not supported; "
                             "use eps, v_prediction, lcm or x0")
        config = discrete_config(self.model)
        config["prediction_type"] = PREDICTION_TYPES[self.sampling]
        if self.zsnr or "rescale_betas_zero_snr" in config:
            config["rescale_betas_zero_snr"] = bool(self.zsnr)
        if self.sampling == "lcm":
            config["original_inference_steps"] = LCM_ORIGINAL_STEPS
        return (replace(self.model, scheduler_config=config),)


def discrete_config(model: DiffusionModel) -> dict[str, Any]:
    """The model's discrete scheduler config: its own, or the one a continuous model
    sampling (below) kept when it replaced it."""
    config = dict(model.scheduler_config)
    if not is_continuous(config):
        return config
    kept = config.get(DISCRETE_KEY)
    if not kept:
        raise ValueError("Model Sampling Discrete: this model was loaded as a continuous-σ "
                         "model (CosXL, Playground v2.5, EDM) and has no discrete noise "
                         "schedule to go back to; use Model Sampling Continuous EDM / V")
    return dict(kept)


EDM_SAMPLING = ("v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow")
#: ComfyUI's choice -> (how the output is read, σ_data, Playground's latent format)
EDM_CHOICES = {"v_prediction": ("v_prediction", 1.0, False), "edm": ("edm", 0.5, False),
               "edm_playground_v2.5": ("edm", 0.5, True), "eps": ("eps", 1.0, False)}


def continuous_model(model: DiffusionModel, sampling: str, sigma_min: float,
                     sigma_max: float, sigma_data: float, timestep_form: str,
                     playground: bool, node: str) -> DiffusionModel:
    """``model`` on a new handle whose scheduler config is a continuous model sampling."""
    check_range(sigma_min, sigma_max, node)
    config = replace_sampling(dict(model.scheduler_config), sampling, sigma_min, sigma_max,
                              sigma_data, timestep_form,
                              PLAYGROUND_LATENT_FORMAT if playground else None)
    return replace(model, scheduler_config=config)


class ModelSamplingContinuousEDM(Node):
    """Sample a model trained on continuous noise levels with EDM's preconditioning: the
    UNet gets 0.25·log σ as its timestep and its input scaled by 1/√(σ² + σ_data²). The
    loaded model is unchanged, the output is a new MODEL.

    Pick what the checkpoint was trained as: ``v_prediction`` for CosXL / CosXL Edit
    (σ 0.002-120, the defaults), ``edm_playground_v2.5`` for Playground v2.5 (σ_data 0.5,
    its latent statistics; set sigma_max 80), ``edm`` for other EDM fine-tunes (σ_data 0.5),
    ``eps`` for noise-predicting ones. Sample with euler, dpmpp_2m, dpmpp_2m_sde, heun, ...
    and karras, exponential or normal (the discrete-only samplers such as ddpm, pndm or
    uni_pc say so). Checkpoints that carry the keys (CosXL's ``edm_vpred``, Playground's
    ``edm_mean``) are detected on load without this node.
    """

    TYPE = "ModelSamplingContinuousEDM"
    DISPLAY_NAME = "Model Sampling Continuous EDM"
    CATEGORY = "advanced/model"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    sampling: str = Input("v_prediction", choices=EDM_SAMPLING,
                          description="How the UNet's output is read: v_prediction (CosXL), "
                          "edm (σ_data 0.5), edm_playground_v2.5 (also its latent format), "
                          "eps; cosmos_rflow is not supported")
    sigma_max: float = Input(120.0, min=0.0, max=1000.0, step=0.001,
                             description="The largest noise level the model was trained on")
    sigma_min: float = Input(0.002, min=0.0, max=1000.0, step=0.001,
                             description="The smallest noise level the model was trained on")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        if self.sampling not in EDM_CHOICES:
            raise ValueError("Model Sampling Continuous EDM: 'cosmos_rflow' (ComfyUI's "
                             "rectified-flow mode for Cosmos video models) is not supported; "
                             f"use one of {', '.join(EDM_CHOICES)}")
        kind, sigma_data, playground = EDM_CHOICES[self.sampling]
        return (continuous_model(self.model, kind, self.sigma_min, self.sigma_max, sigma_data,
                                 "log", playground, "Model Sampling Continuous EDM"),)


class ModelSamplingContinuousV(Node):
    """Sample a v-prediction model trained on continuous noise levels whose timestep is
    atan(σ)·2/π (Imagen-style continuous time, e.g. some v-prediction fine-tunes); the
    loaded model is unchanged, the output is a new MODEL. σ_data is 1. For CosXL use Model
    Sampling Continuous EDM (v_prediction) instead."""

    TYPE = "ModelSamplingContinuousV"
    DISPLAY_NAME = "Model Sampling Continuous V"
    CATEGORY = "advanced/model"
    OUTPUTS = (Output("MODEL"),)

    model: DiffusionModel = Input(type="MODEL")
    sampling: str = Input("v_prediction", choices=("v_prediction",),
                          description="How the UNet's output is read (velocity)")
    sigma_max: float = Input(500.0, min=0.0, max=1000.0, step=0.001,
                             description="The largest noise level the model was trained on")
    sigma_min: float = Input(0.03, min=0.0, max=1000.0, step=0.001,
                             description="The smallest noise level the model was trained on")

    def execute(self, ctx: ExecutionContext) -> tuple[DiffusionModel]:
        return (continuous_model(self.model, "v_prediction", self.sigma_min, self.sigma_max,
                                 1.0, "atan", False, "Model Sampling Continuous V"),)


NODE_CLASSES = (ModelSamplingDiscrete, ModelSamplingContinuousEDM, ModelSamplingContinuousV)
