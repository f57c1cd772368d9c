"""Continuous-σ models (EDM, CosXL, Playground v2.5): what a MODEL's scheduler config says
about them, and their σ schedules as ComfyUI computes them. No torch here.

A continuous model is trained on any σ in ``[σ_min, σ_max]`` rather than on 1000 discrete
timesteps. With ``x = x0 + σ·ε`` the UNet sees ``c_in·x``, ``c_in = 1/√(σ² + σ_data²)``,
and the timestep ``c_noise``: ``0.25·log σ`` (EDM, ComfyUI's ModelSamplingContinuousEDM)
or ``atan(σ)·2/π`` (ModelSamplingContinuousV). Its output F is read as x0 by ``sampling``:

* ``edm``: ``x0 = c_skip·x + c_out·F``, ``c_skip = σ_d²/(σ² + σ_d²)``,
  ``c_out = σ·σ_d/√(σ² + σ_d²)`` (diffusers' EDM schedulers' ``epsilon``; Playground v2.5);
* ``v_prediction``: the same with ``−c_out`` (diffusers' EDM ``v_prediction``; CosXL);
* ``eps``: ``x0 = x − σ·F``.

The MODEL carries this as an EDM scheduler config: diffusers' own keys (``sigma_min``,
``sigma_max``, ``sigma_data``, ``prediction_type``, ``_class_name`` EDM...; a diffusers
folder's EDM scheduler config is read as it is) plus :data:`SAMPLING_KEY` and
:data:`TIMESTEP_KEY` for what diffusers cannot say, and :data:`LATENT_FORMAT_KEY` for
Playground v2.5's latent statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SAMPLING_KEY = "model_sampling"
TIMESTEP_KEY = "timestep_form"
LATENT_FORMAT_KEY = "latent_format"
#: how the UNet's output is read (ComfyUI's EDM / V_PREDICTION / EPS)
SAMPLINGS = ("edm", "v_prediction", "eps")
#: the UNet's timestep: 0.25·log σ (ModelSamplingContinuousEDM) or atan σ·2/π (ContinuousV)
TIMESTEP_FORMS = ("log", "atan")
#: ComfyUI's model σ table: this many σs, log-spaced from σ_min to σ_max
TABLE_SIZE = 1000
#: the EDM config keys of :class:`~nodes.diffusion.continuous_samplers.ContinuousBase`
CONFIG_KEYS = ("sigma_min", "sigma_max", "sigma_data", "sigma_schedule",
               "num_train_timesteps", "prediction_type", "rho", "final_sigmas_type",
               SAMPLING_KEY, TIMESTEP_KEY)

#: Playground v2.5's latent statistics (its VAE config's latents_mean / latents_std, ComfyUI's
#: SDXL_Playground_2_5 latent format): model latents are ``(z − mean)·scale/std``
PLAYGROUND_LATENT_FORMAT = {
    "mean": [-1.6574, 1.886, -1.383, 2.5155],
    "std": [8.4927, 5.9022, 6.5498, 5.2299],
    "scale": 0.5,
}


@dataclass(frozen=True)
class ContinuousSpec:
    """How a continuous model is sampled (see the module)."""

    sampling: str
    timestep_form: str
    sigma_min: float
    sigma_max: float
    sigma_data: float

    def timestep(self, sigma: float) -> float:
        """The UNet's timestep at σ (ComfyUI's ``model_sampling.timestep``)."""
        if self.timestep_form == "atan":
            return math.atan(sigma) / math.pi * 2
        return 0.25 * math.log(sigma)

    def sigma(self, timestep: float) -> float:
        """σ at a UNet timestep (the inverse of :meth:`timestep`)."""
        if self.timestep_form == "atan":
            return math.tan(timestep * math.pi / 2)
        return math.exp(timestep / 0.25)

    def table(self) -> list[float]:
        """ComfyUI's ``model_sampling.sigmas``: σ_min to σ_max, log-spaced, lowest first."""
        low, high = math.log(self.sigma_min), math.log(self.sigma_max)
        last = TABLE_SIZE - 1
        return [math.exp(low + (high - low) * i / last) for i in range(TABLE_SIZE)]


def check_range(sigma_min: float, sigma_max: float, node: str) -> None:
    """A usable σ range, else a ValueError naming the inputs."""
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"{node}: sigma_min ({sigma_min}) must be above 0 and below "
                         f"sigma_max ({sigma_max}); e.g. 0.002 and 120 (CosXL), 0.002 and 80 "
                         "(Playground v2.5)")


def continuous_config(sampling: str, sigma_min: float, sigma_max: float,
                      sigma_data: float = 1.0, timestep_form: str = "log",
                      latent_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scheduler config a MODEL carries for a continuous model."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")
    if timestep_form not in TIMESTEP_FORMS:
        raise ValueError(f"timestep form {timestep_form!r} is not log or atan")
    config: dict[str, Any] = {
        "_class_name": "EDMEulerScheduler",
        "sigma_min": float(sigma_min), "sigma_max": float(sigma_max),
        "sigma_data": float(sigma_data), "sigma_schedule": "karras",
        "num_train_timesteps": TABLE_SIZE, "rho": 7.0, "final_sigmas_type": "zero",
        "prediction_type": "v_prediction" if sampling == "v_prediction" else "epsilon",
        SAMPLING_KEY: sampling, TIMESTEP_KEY: timestep_form,
    }
    if latent_format is not None:
        config[LATENT_FORMAT_KEY] = dict(latent_format)
    return config


#: where a continuous model sampling keeps the discrete config it replaced (Model Sampling
#: Discrete goes back to it)
DISCRETE_KEY = "discrete_config"


def replace_sampling(old: dict[str, Any], sampling: str, sigma_min: float, sigma_max: float,
                     sigma_data: float = 1.0, timestep_form: str = "log",
                     latent_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`continuous_config` for a model whose scheduler config was ``old``, keeping
    the discrete one under :data:`DISCRETE_KEY`."""
    kept = old.get(DISCRETE_KEY) if is_continuous(old) else old
    config = continuous_config(sampling, sigma_min, sigma_max, sigma_data, timestep_form,
                               latent_format)
    if kept:
        config[DISCRETE_KEY] = dict(kept)
    return config


def sampling_from_keys(keys: Any, read: Any, config: dict[str, Any]) -> dict[str, Any]:
    """A single-file checkpoint's scheduler config from the marker keys ComfyUI reads
    (``keys``: the file's tensor names; ``read(name)``: a scalar tensor's value): Playground
    v2.5's ``edm_mean`` + ``edm_std`` (EDM, σ_data 0.5, σ 0.002-80, its latent format),
    CosXL's ``edm_vpred.sigma_max`` (+ ``edm_vpred.sigma_min``; v-prediction on EDM's σs),
    ``v_pred`` (+ ``ztsnr``: zero terminal SNR) for discrete v-prediction; else ``config``."""
    keys = set(keys)
    if "edm_mean" in keys and "edm_std" in keys:
        return replace_sampling(config, "edm", 0.002, 80.0, 0.5,
                                latent_format=PLAYGROUND_LATENT_FORMAT)
    if "edm_vpred.sigma_max" in keys:
        sigma_max = float(read("edm_vpred.sigma_max"))
        sigma_min = float(read("edm_vpred.sigma_min")) if "edm_vpred.sigma_min" in keys \
            else 0.002
        check_range(sigma_min, sigma_max, "the checkpoint's edm_vpred keys")
        return replace_sampling(config, "v_prediction", sigma_min, sigma_max, 1.0)
    if "v_pred" in keys and not is_continuous(config):
        config = {**config, "prediction_type": "v_prediction"}
        if "ztsnr" in keys:
            config["rescale_betas_zero_snr"] = True
    return config


def continuous_spec(config: dict[str, Any] | Any) -> ContinuousSpec | None:
    """The continuous sampling a scheduler config describes, or None for a discrete model.

    Ours (:func:`continuous_config`) or a diffusers EDM scheduler's (``_class_name``
    EDM...: its ``epsilon`` is EDM's preconditioning, ``v_prediction`` CosXL's; the
    defaults are diffusers', σ_data 0.5 and σ_max 80)."""
    get = config.get
    sampling = get(SAMPLING_KEY)
    if sampling is None:
        if not str(get("_class_name") or "").startswith("EDM"):
            return None
        sampling = "v_prediction" if get("prediction_type") == "v_prediction" else "edm"
    return ContinuousSpec(str(sampling), str(get(TIMESTEP_KEY) or "log"),
                          float(get("sigma_min", 0.002)), float(get("sigma_max", 80.0)),
                          float(get("sigma_data", 0.5)))


def is_continuous(config: dict[str, Any] | Any) -> bool:
    return continuous_spec(config) is not None


def latent_format(config: dict[str, Any] | Any) -> dict[str, Any] | None:
    """The latent statistics a continuous model's latents are normalised with, or None."""
    value = config.get(LATENT_FORMAT_KEY)
    return dict(value) if value else None


# --- σ schedules (ComfyUI's, on the continuous model's σ table) ---------------------------


def _normal(spec: ContinuousSpec, steps: int, sgm: bool = False) -> list[float]:
    start, end = spec.timestep(spec.sigma_max), spec.timestep(spec.sigma_min)
    count = steps + 1 if sgm else steps
    if count == 1:
        points = [start]
    else:
        points = [start + (end - start) * i / (count - 1) for i in range(count)]
    if sgm:
        points = points[:-1]
    return [spec.sigma(t) for t in points] + [0.0]


def _simple(spec: ContinuousSpec, steps: int) -> list[float]:
    table = spec.table()
    stride = len(table) / steps
    return [table[-(1 + int(i * stride))] for i in range(steps)] + [0.0]


def _ddim_uniform(spec: ContinuousSpec, steps: int) -> list[float]:
    table = spec.table()
    stride = max(len(table) // steps, 1)
    levels = [0.0] + [table[i] for i in range(1, len(table), stride)]
    return levels[::-1]


def _karras(spec: ContinuousSpec, steps: int, rho: float = 7.0) -> list[float]:
    low, high = spec.sigma_min ** (1 / rho), spec.sigma_max ** (1 / rho)
    ramp = [i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
    return [(high + r * (low - high)) ** rho for r in ramp] + [0.0]


def _exponential(spec: ContinuousSpec, steps: int) -> list[float]:
    high, low = math.log(spec.sigma_max), math.log(spec.sigma_min)
    if steps == 1:
        return [spec.sigma_max, 0.0]
    return [math.exp(high + (low - high) * i / (steps - 1)) for i in range(steps)] + [0.0]


def _beta(spec: ContinuousSpec, steps: int, alpha: float = 0.6, beta: float = 0.6) -> list[float]:
    import numpy as np
    from scipy.stats import beta as beta_dist

    table = spec.table()
    total = len(table) - 1
    places = np.rint(beta_dist.ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta)
                     * total)
    levels: list[float] = []
    last = -1.0
    for t in places:
        if t != last:
            levels.append(table[int(t)])
        last = float(t)
    return [*levels, 0.0]


#: KSampler's schedules that have a meaning on a continuous-σ model
CONTINUOUS_SCHEDULES = ("normal", "sgm_uniform", "simple", "ddim_uniform", "karras",
                        "exponential", "beta", "kl_optimal", "linear_quadratic")


def continuous_sigmas(schedule: str, steps: int, spec: ContinuousSpec) -> list[float]:
    """``steps + 1`` noise levels (the last 0) of KSampler's ``scheduler`` for a continuous
    model, as ComfyUI's ``calculate_sigmas`` gives them."""
    from nodes.diffusion.schedulers import kl_optimal_sigmas, linear_quadratic_sigmas

    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    spacings = {
        "normal": lambda: _normal(spec, steps),
        "sgm_uniform": lambda: _normal(spec, steps, sgm=True),
        "simple": lambda: _simple(spec, steps),
        "ddim_uniform": lambda: _ddim_uniform(spec, steps),
        "karras": lambda: _karras(spec, steps),
        "exponential": lambda: _exponential(spec, steps),
        "beta": lambda: _beta(spec, steps),
        "kl_optimal": lambda: kl_optimal_sigmas(steps, spec.sigma_min, spec.sigma_max),
        "linear_quadratic": lambda: linear_quadratic_sigmas(steps, spec.sigma_min,
                                                            spec.sigma_max),
    }
    assert set(spacings) == set(CONTINUOUS_SCHEDULES)
    if schedule not in spacings:
        raise ValueError(f"scheduler {schedule!r} has no meaning for a continuous-σ model "
                         f"(Model Sampling Continuous EDM / V); use one of: "
                         f"{', '.join(spacings)}")
    return [float(s) for s in spacings[schedule]()]


# --- which samplers run on a continuous model ---------------------------------------------

#: samplers with their own continuous form here (the σ-space samplers of
#: nodes.diffusion.sigma_samplers / stage_samplers run as they are); ``ddim`` is ComfyUI's
#: (Euler), the rest ComfyUI's k-diffusion samplers
OWN_CONTINUOUS = {
    "euler": "EulerSampler", "ddim": "EulerSampler",
    "euler_ancestral": "EulerAncestralSampler",
    "heun": "HeunSampler", "dpm_2": "DPM2Sampler", "dpm_2_ancestral": "DPM2AncestralSampler",
    "dpmpp_2s_ancestral": "DPMPP2SAncestralSampler",
    "dpmpp_2m": "DPMPP2MSampler",
    "dpmpp_2m_sde": "DPMPP2MSDESampler", "dpmpp_2m_sde_gpu": "DPMPP2MSDESampler",
    "dpmpp_2m_sde_heun": "DPMPP2MSDEHeunSampler",
    "dpmpp_2m_sde_heun_gpu": "DPMPP2MSDEHeunSampler",
    "lcm": "LCMSampler",
}


def continuous_samplers() -> list[str]:
    """The sampler names that run on a continuous-σ model."""
    from nodes.diffusion.schedulers import SAMPLERS, SIGMA_SAMPLERS

    return [name for name, (class_name, _) in SAMPLERS.items()
            if name in OWN_CONTINUOUS or class_name in SIGMA_SAMPLERS]


def continuous_sampler_problem(sampler_name: str) -> str | None:
    """Why ``sampler_name`` cannot sample a continuous-σ model, or None."""
    if sampler_name in continuous_samplers():
        return None
    return (f"sampler {sampler_name!r} works on discrete timesteps only and cannot sample a "
            f"continuous-σ model (Model Sampling Continuous EDM / V, CosXL, Playground "
            f"v2.5); use one of: {', '.join(continuous_samplers())}")
