"""ComfyUI's sampler nodes with options, for SamplerCustom: SamplerEulerCFGpp,
SamplerEulerAncestral, SamplerEulerAncestralCFGPP, SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE,
SamplerDPMPP_SDE, SamplerDPMPP_2S_Ancestral, SamplerLMS, SamplerER_SDE, SamplerSASolver and
SamplerSEEDS2.

Each gives the SAMPLER of KSampler's sampler of that name. At their defaults they are
exactly KSamplerSelect's choice; ``noise_device`` changes nothing (the noise always
comes from a CPU generator, so a seed gives one image on any device). Euler ancestral
and its CFG++ form take any eta (0: the deterministic sampler; below 1 less fresh noise
per step) and s_noise, as does DPM++ 2M SDE (through its σ-space twin); the other
diffusers-backed SDE samplers take their defaults only (eta 1, s_noise 1, r 0.5), and
another value is an error that says so.
"""

from __future__ import annotations

from typing import Any

from engine import ExecutionContext, Input, Node, Output
from nodes.custom_sampling import SamplerChoice
from nodes.diffusion.handles import DiffusionModel

CATEGORY = "sampling/custom_sampling/samplers"
DEVICES = ("gpu", "cpu")


def _eta(default: float = 1.0, top: float = 100.0) -> float:
    return Input(default, min=0.0, max=top, step=0.01,
                 description="Fresh noise per step (1: ancestral, 0: deterministic)")


def _s_noise(top: float = 100.0) -> float:
    return Input(1.0, min=0.0, max=top, step=0.01, description="Factor on the fresh noise")


def _defaults_only(name: str, **values: float) -> SamplerChoice:
    """KSampler's ``name`` (a sampler with fixed noise settings): the node's options must
    be at their defaults."""
    defaults = {"eta": 1.0, "s_noise": 1.0, "r": 0.5}
    changed = {k: v for k, v in values.items() if v != defaults[k]}
    if changed:
        shown = ", ".join(f"{k} {v:g}" for k, v in changed.items())
        fixed = ", ".join(f"{k} {defaults[k]:g}" for k in values)
        raise ValueError(f"{name}'s noise settings are fixed here ({shown} asked; only "
                         f"{fixed}): use those, or SamplerEulerAncestral for a tunable "
                         "ancestral sampler")
    return SamplerChoice(name)


def _tuned(name: str, eta: float, s_noise: float, **options: Any) -> SamplerChoice:
    """KSampler's ``name`` (a sampler of nodes.diffusion.stage_samplers) with a node's
    options, which SamplerChoice's ``options`` carries (as name/value pairs) to the
    sampler's ``configure``; at the defaults it is KSamplerSelect's choice."""
    return SamplerChoice(name, eta, s_noise, options=tuple(sorted(options.items())))


def _percent(default: float) -> float:
    return Input(default, min=0.0, max=1.0, step=0.001)


class SamplerER_SDE(Node):
    """ER-SDE-Solver (``er_sde``): each step decays toward the model's prediction by
    ER-SDE's noise scale function, with up to ``max_stage`` - 1 correction terms from
    earlier steps, then fresh noise. ``Reverse-time SDE`` uses λ^(1 + eta) instead (eta 0:
    the ODE); ``ODE`` adds no noise. eta applies to the reverse-time SDE only."""

    TYPE = "SamplerER_SDE"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    solver_type: str = Input("ER-SDE", choices=("ER-SDE", "Reverse-time SDE", "ODE"))
    max_stage: int = Input(3, min=1, max=3)
    eta: float = Input(1.0, min=0.0, max=100.0, step=0.01,
                       description="Stochastic strength of the reverse-time SDE (0: the ODE)")
    s_noise: float = _s_noise()

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        eta = self.eta if self.solver_type == "Reverse-time SDE" else 1.0  # unused otherwise
        return (_tuned("er_sde", eta, self.s_noise, solver_type=self.solver_type,
                       max_stage=self.max_stage),)


class SamplerSASolver(Node):
    """SA-Solver (``sa_solver``): stochastic Adams predictor-corrector; fresh noise (eta)
    only between ``sde_start_percent`` and ``sde_end_percent`` of the model's schedule.
    ``use_pece`` evaluates the corrected state too (``sa_solver_pece``, two model calls a
    step); ``simple_order_2`` uses the paper's simpler second-order weights."""

    TYPE = "SamplerSASolver"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    model: DiffusionModel = Input(type="MODEL")
    eta: float = Input(1.0, min=0.0, max=10.0, step=0.01,
                       description="Stochastic strength inside the SDE window (0: the ODE)")
    sde_start_percent: float = _percent(0.2)
    sde_end_percent: float = _percent(0.8)
    s_noise: float = _s_noise()
    predictor_order: int = Input(3, min=1, max=6)
    corrector_order: int = Input(4, min=0, max=6)
    use_pece: bool = Input(False)
    simple_order_2: bool = Input(False)

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        from nodes.diffusion.schedulers import make_scheduler, training_sigmas
        from nodes.diffusion.stage_samplers import percent_to_sigma

        if self.sde_start_percent > self.sde_end_percent:
            raise ValueError(f"SamplerSASolver: sde_start_percent {self.sde_start_percent:g} "
                             f"is after sde_end_percent {self.sde_end_percent:g}, so the SDE "
                             f"window is empty: swap them, or set eta 0 for the ODE")
        model_sigmas = training_sigmas(make_scheduler("euler", "normal",
                                                       dict(self.model.scheduler_config)))
        window = (percent_to_sigma(model_sigmas, self.sde_start_percent),
                  percent_to_sigma(model_sigmas, self.sde_end_percent))
        pece = self.use_pece and self.corrector_order > 0  # no corrector: nothing to evaluate
        return (_tuned("sa_solver_pece" if pece else "sa_solver", self.eta, self.s_noise,
                       sde_sigmas=window, predictor_order=self.predictor_order,
                       corrector_order=self.corrector_order, use_pece=pece,
                       simple_order_2=self.simple_order_2),)


class SamplerSEEDS2(Node):
    """SEEDS-2 (``seeds_2``): two model calls a step, the second at fraction ``r`` of the
    step (in log σ), with fresh noise along one Brownian path (eta 0: deterministic).
    ``phi_2`` with r 1 is the exponential Heun method (eta 0: ComfyUI's exp_heun_2_x0)."""

    TYPE = "SamplerSEEDS2"
    CATEGORY = CATEGORY
    OUTPUTS = (Output("SAMPLER"),)

    solver_type: str = Input("phi_1", choices=("phi_1", "phi_2"))
    eta: float = _eta()
    s_noise: float = _s_noise()
    r: float = Input(0.5, min=0.01, max=1.0, step=0.01,
                     description="Where the second model call is, as a fraction of the step")

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (_tuned("seeds_2", self.eta, self.s_noise, solver_type=self.solver_type,
                       r=self.r),)


class SamplerEulerCFGpp(Node):
    """Euler with CFG++ (Chung et al. 2024): ``regular`` is KSampler's euler_cfg_pp (the
    step lands on the guided x0 and renoises with the unconditional prediction's noise);
    ``alternative`` is ComfyUI's other form, Euler from x along the slope
    ``(x − 2·x0_guided + x0_uncond)/σ`` (euler_pp). Both want a low cfg, about 0.5-2."""

    TYPE = "SamplerEulerCFGpp"
    DISPLAY_NAME = "SamplerEulerCFG++"
    CATEGORY = "_for_testing"
    OUTPUTS = (Output("SAMPLER"),)

    version: str = Input("regular", choices=("regular", "alternative"))

    def execute(self, ctx: ExecutionContext) -> tuple[SamplerChoice]:
        return (SamplerChoice("euler_cfg_pp" if self.version == "regular" else "euler_pp"),)


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


NODE_CLASSES = (SamplerEulerCFGpp, SamplerEulerAncestral, SamplerEulerAncestralCFGPP,
                SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE, SamplerDPMPP_SDE,
                SamplerDPMPP_2S_Ancestral, SamplerLMS, SamplerER_SDE, SamplerSASolver,
                SamplerSEEDS2)
