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
"""

from __future__ import annotations

from dataclasses import replace

from engine import ExecutionContext, Input, Node, Output
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
        config = dict(self.model.scheduler_config)
        config["prediction_type"] = PREDICTION_TYPES[self.sampling]
        if self.zsnr or "rescale_betas_zero_snr" in config:
            config["rescale_betas_zero_snr"] = bool(self.zsnr)
        if self.sampling == "lcm":
            config["original_inference_steps"] = LCM_ORIGINAL_STEPS
        return (replace(self.model, scheduler_config=config),)


NODE_CLASSES = (ModelSamplingDiscrete,)
