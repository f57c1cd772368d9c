"""ComfyUI's sampler nodes with options, for SamplerCustom: SamplerEulerAncestral,
SamplerEulerAncestralCFGPP, SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE, SamplerDPMPP_SDE,
SamplerDPMPP_2S_Ancestral and SamplerLMS.

Each gives the SAMPLER of KSampler's sampler of that name. At their defaults they are
exactly KSamplerSelect's choice; ``noise_device`` changes nothing (the noise always
comes from a CPU generator, so a seed gives one image on any device). Euler ancestral
and its CFG++ form take any eta (0: the deterministic sampler; below 1 less fresh noise
per step) and s_noise, as does DPM++ 2M SDE (through its σ-space twin); the other
diffusers-backed SDE samplers take their defaults only (eta 1, s_noise 1, r 0.5), and
another value is an error that says so.
"""

from __future__ import annotations

from engine import ExecutionContext, Input, Node, Output
from nodes.custom_sampling import SamplerChoice

CATEGORY = "sampling/custom_sampling/samplers"
DEVICES = ("gpu", "cpu")


def _eta(default: float = 1.0, top: float = 100.0) -> float:
    return Input(default, min=0.0, max=top, step=0.01,
                 description="Fresh noise per step (1: ancestral, 0: deterministic)")


def _s_noise(top: float = 100.0) -> float:
    return Input(1.0, min=0.0, max=top, step=0.01, description="Factor on the fresh noise")


def _defaults_only(name: str, **values: float) -> SamplerChoice:
    """KSampler's ``name`` (a diffusers scheduler with fixed noise settings): the node's
    options must be at their defaults."""
    defaults = {"eta": 1.0, "s_noise": 1.0, "r": 0.5}
    changed = {k: v for k, v in values.items() if v != defaults[k]}
    if changed:
        shown = ", ".join(f"{k} {v:g}" for k, v in changed.items())
        raise ValueError(f"{name} runs diffusers' scheduler, whose noise settings are fixed "
                         f"({shown} asked; only eta 1, s_noise 1, r 0.5): use those, or "
                         f"SamplerEulerAncestral for a tunable ancestral sampler")
    return SamplerChoice(name)


class SamplerEulerAncestral(Node):
    """Euler ancestral: each step lands on the model's prediction at a lower noise level,
    then tops the noise up with fresh noise; eta 0 is plain Euler, s_noise scales the
    fresh noise (above 1 adds grain, below 1 smooths)."""

    TYPE = "SamplerEulerAncestral"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    eta: float = _eta()
    s_noise: float = _s_noise()

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (SamplerChoice("euler_ancestral", self.eta, self.s_noise),)


class SamplerEulerAncestralCFGPP(Node):
    """Euler ancestral with CFG++ (guided x0, renoised with the unconditional
    prediction): use a low cfg, about 0.5-2."""

    TYPE = "SamplerEulerAncestralCFGPP"
    DISPLAY_NAME = "SamplerEulerAncestralCFG++"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    eta: float = _eta(top=1.0)
    s_noise: float = _s_noise(top=10.0)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (SamplerChoice("euler_ancestral_cfg_pp", self.eta, self.s_noise),)


class SamplerDPMPP_2M_SDE(Node):
    """DPM-Solver++(2M) SDE, midpoint or Heun correction: at eta 1 and s_noise 1 diffusers'
    ``DPMSolverMultistepScheduler`` (sde-dpmsolver++); other values run its σ-space twin
    (equal to it at 1 and 1): eta 0 is the deterministic DPM++ 2M, between them less fresh
    noise a step; s_noise scales that noise."""

    TYPE = "SamplerDPMPP_2M_SDE"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    solver_type: str = Input("midpoint", choices=("midpoint", "heun"))
    eta: float = _eta()
    s_noise: float = _s_noise()
    noise_device: str = Input("gpu", choices=DEVICES)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        name = "dpmpp_2m_sde" if self.solver_type == "midpoint" else "dpmpp_2m_sde_heun"
        return (SamplerChoice(name, self.eta, self.s_noise),)


class SamplerDPMPP_3M_SDE(Node):
    """DPM-Solver++(3M) SDE (diffusers' ``DPMSolverMultistepScheduler``, third order)."""

    TYPE = "SamplerDPMPP_3M_SDE"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    eta: float = _eta()
    s_noise: float = _s_noise()
    noise_device: str = Input("gpu", choices=DEVICES)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (_defaults_only("dpmpp_3m_sde", eta=self.eta, s_noise=self.s_noise),)


class SamplerDPMPP_SDE(Node):
    """DPM-Solver++ SDE (diffusers' ``DPMSolverSDEScheduler``: two model calls a step,
    Brownian-tree noise seeded by the sampler's seed)."""

    TYPE = "SamplerDPMPP_SDE"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    eta: float = _eta()
    s_noise: float = _s_noise()
    r: float = Input(0.5, min=0.0, max=100.0, step=0.01)
    noise_device: str = Input("gpu", choices=DEVICES)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (_defaults_only("dpmpp_sde", eta=self.eta, s_noise=self.s_noise, r=self.r),)


class SamplerDPMPP_2S_Ancestral(Node):
    """DPM-Solver++(2S) ancestral: two model calls a step (to the midpoint, then the
    second-order step), then fresh noise; eta and s_noise are fixed at 1 here."""

    TYPE = "SamplerDPMPP_2S_Ancestral"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    eta: float = _eta()
    s_noise: float = _s_noise()

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (_defaults_only("dpmpp_2s_ancestral", eta=self.eta, s_noise=self.s_noise),)


class SamplerLMS(Node):
    """Linear multistep (diffusers' ``LMSDiscreteScheduler``) of the given order: the
    slope is extrapolated from the last ``order`` steps (4 is the usual)."""

    TYPE = "SamplerLMS"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    order: int = Input(4, min=1, max=100)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (SamplerChoice("lms", order=self.order),)


NODE_CLASSES = (SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerDPMPP_2M_SDE,
                SamplerDPMPP_3M_SDE, SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerLMS)
