"""EasyCache, LazyCache, TorchCompileModel and ModelComputeDtype.

The caches equal ComfyUI's rule written out by hand over a plain sampling loop on a tiny
UNet; threshold 0 changes nothing; a large one skips UNet calls; outside the window the
run is untouched; they compose with CFG and SAG and keep no state between runs. Torch
Compile equals eager (or falls back cleanly); the compute dtype runs in bf16 / fp16 /
fp32; neither changes the base handle."""

from __future__ import annotations

import logging
import math
import uuid

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

from engine.validation import PromptValidationError
from nodes.diffusion.extensions import SamplerExtension
from nodes.diffusion.handles import CondEntry, Conditioning, DiffusionModel, Latent
from nodes.diffusion.sampling import SamplingParams, sample
from nodes.diffusion.schedulers import make_scheduler
from nodes.diffusion.speed import TorchCompile, cast_copy
from nodes.diffusion.step_cache import EasyCache, LazyCache
from nodes.diffusion.tiny import SCHEDULER_CONFIG, UNET_CONFIG
from tests.graph_nodes import CAPTURED
from tests.hook_count import added_hooks

STEPS = 12
CFG = 5.0
SHAPE = (1, 4, 16, 24)


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**UNET_CONFIG).eval().requires_grad_(False)
    return DiffusionModel(unet, dict(SCHEDULER_CONFIG))


@pytest.fixture(scope="module")
def compile_model() -> DiffusionModel:
    """The tiny UNet with one layer per block: the compile tests' graph, a third smaller
    than ``model``'s (dynamo's trace and inductor's C++ build scale with it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**{**UNET_CONFIG, "layers_per_block": 1})
    return DiffusionModel(unet.eval().requires_grad_(False), dict(SCHEDULER_CONFIG))


def prompts(seed: int = 1) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    return Conditioning((CondEntry(pos),)), Conditioning((CondEntry(neg),))


class Calls(SamplerExtension):
    """Records the step of every main UNet pass that really runs (inside the caches)."""

    priority = -5000

    def __init__(self) -> None:
        self.steps: list[int] = []

    def unet_forward(self, run, step, call, forward):
        self.steps.append(step.index)
        return forward(call)


def run_ours(model: DiffusionModel, *exts: SamplerExtension, sampler: str = "euler",
             steps: int = STEPS, cfg: float = CFG, seed: int = 1, prompt_seed: int = 1,
             callback=None) -> torch.Tensor:
    for ext in exts:
        model = model.with_extension(ext)
    pos, neg = prompts(prompt_seed)
    scheduler = make_scheduler(sampler, "normal", model.scheduler_config)
    return sample(model, scheduler, pos, neg, Latent(torch.zeros(SHAPE)),
                  SamplingParams(seed=seed, steps=steps, cfg=cfg), callback=callback)


# --- the rule, written out by hand --------------------------------------------------------------

def window(percent: float) -> float:
    """ComfyUI's percent_to_sigma on the timestep axis."""
    return math.inf if percent <= 0 else -math.inf if percent >= 1 else (1 - percent) * 999


def sub(x: torch.Tensor) -> torch.Tensor:
    return x[..., ::8, ::8]


def mabs(x: torch.Tensor) -> torch.Tensor:
    return x.abs().mean()


class HandRule:
    """EasyCache's accumulator: k·|Δx|/|y| summed until the threshold, then a real call."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.k = self.x_prev = self.y_prev = self.norm = None
        self.acc = 0.0

    def decide(self, xs: torch.Tensor, can: bool) -> tuple[bool, torch.Tensor | None]:
        change = None if self.x_prev is None else mabs(xs - self.x_prev)
        if self.norm is not None and self.k is not None:
            self.acc = self.acc + self.k * change / self.norm
            if self.acc < self.threshold and can:
                return True, change
            self.acc = 0.0
        return False, change

    def after(self, xs, ys, y, change) -> None:
        if self.norm is not None and change is not None:
            self.k = mabs(ys - self.y_prev) / change
        self.x_prev, self.y_prev, self.norm = xs, ys, mabs(y)


def plain_loop(model: DiffusionModel, step_fn, *, sampler: str = "euler", seed: int = 1):
    """A plain CFG sampling loop; ``step_fn(scheduler, t, latents, eps_of)`` returns the
    guided prediction (``eps_of(x_in)`` runs the UNet on the scaled CFG batch)."""
    scheduler = make_scheduler(sampler, "normal", model.scheduler_config)
    scheduler.set_timesteps(STEPS)
    gen = torch.Generator("cpu").manual_seed(seed)
    latents = randn_tensor(SHAPE, generator=gen) * scheduler.init_noise_sigma
    pos, neg = prompts()
    embeds = torch.cat([neg.embeds, pos.embeds])
    calls: list[int] = []

    def eps_of(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return model.unet(x_in, t, encoder_hidden_states=embeds, return_dict=False)[0]

    with torch.no_grad():
        for t in scheduler.timesteps:
            guided = step_fn(scheduler, t, latents, eps_of)
            latents = scheduler.step(guided, t, latents, generator=gen,
                                     return_dict=False)[0]
    return latents, len(calls)


def easycache_by_hand(model, threshold, start=0.15, end=0.95):
    rule, state = HandRule(threshold), {"diff": None, "first": False}
    high, low = window(start), window(end)

    def step_fn(scheduler, t, latents, eps_of):
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        if float(t) <= low:
            y = eps_of(x, t)
        else:
            change = None
            if float(t) <= high:
                state["first"] = True
                skip, change = rule.decide(sub(x[:1]), state["diff"] is not None)
                if skip:
                    y = x + state["diff"]
            if not (float(t) <= high and skip):
                y = eps_of(x, t)
                if state["first"]:
                    rule.after(sub(x[:1]), sub(y[:1]), y, change)
                state["diff"] = y - x
        uncond, cond = y.chunk(2)
        return uncond + CFG * (cond - uncond)

    return plain_loop(model, step_fn)


def lazycache_by_hand(model, threshold, sampler, start=0.15, end=0.95):
    """LazyCache on x = the noisy latent in σ space, y = the guided x̂₀."""
    rule, state = HandRule(threshold), {"diff": None}
    high, low = window(start), window(end)

    def step_fn(scheduler, t, latents, eps_of):
        alpha_bar = scheduler.alphas_cumprod[int(t)] if sampler == "ddim" else None
        if alpha_bar is None:  # Euler: the latents are x0 + σ·ε already
            sigma = scheduler.sigmas[scheduler.step_index or 0]
            alpha_bar = 1 / (sigma**2 + 1)
            x = latents
        else:
            x = latents / alpha_bar.sqrt()
        s = ((1 - alpha_bar) / alpha_bar).sqrt()  # σ
        if float(t) <= low:
            change, skip = None, False
        else:
            change, skip = None, False
            if float(t) <= high and rule.x_prev is not None:
                skip, change = rule.decide(sub(x), True)
        if skip:
            return -(state["diff"]) / s  # x̂₀ = x + diff = x − σ·ε
        x_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond, cond = eps_of(x_in, t).chunk(2)
        guided = uncond + CFG * (cond - uncond)
        if float(t) > low:
            y = x - s * guided
            rule.after(sub(x), sub(y), y, change)
            state["diff"] = y - x
        return guided

    return plain_loop(model, step_fn, sampler=sampler)


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.6])
def test_easycache_equals_the_rule_by_hand(model, threshold):
    calls = Calls()
    ours = run_ours(model, EasyCache(threshold, 0.15, 0.95), calls)
    ref, ref_calls = easycache_by_hand(model, threshold)
    assert (ours - ref).abs().max() <= 1e-4
    assert len(calls.steps) == ref_calls
    if threshold >= 0.2:
        assert ref_calls < STEPS  # the rule did skip steps


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
@pytest.mark.parametrize("threshold", [0.1, 0.4])
def test_lazycache_equals_the_rule_by_hand(model, sampler, threshold):
    calls = Calls()
    ours = run_ours(model, LazyCache(threshold, 0.15, 0.95), calls, sampler=sampler)
    ref, ref_calls = lazycache_by_hand(model, threshold, sampler)
    assert (ours - ref).abs().max() <= 1e-4
    assert len(calls.steps) == ref_calls
    if threshold >= 0.4:
        assert ref_calls < STEPS


@pytest.mark.parametrize("cache", [EasyCache, LazyCache])
def test_threshold_zero_is_no_cache_and_a_large_one_skips(model, cache):
    plain_calls, zero_calls, big_calls = Calls(), Calls(), Calls()
    plain = run_ours(model, plain_calls)
    zero = run_ours(model, cache(0.0, 0.0, 1.0), zero_calls)
    assert torch.equal(zero, plain) and zero_calls.steps == plain_calls.steps
    big = run_ours(model, cache(3.0, 0.0, 1.0), big_calls)
    assert len(big_calls.steps) <= STEPS // 2 and torch.isfinite(big).all()


@pytest.mark.parametrize("cache", [EasyCache, LazyCache])
def test_outside_the_window_the_run_is_untouched(model, cache):
    """Steps before start_percent are the plain run's; every step past end_percent
    calls the UNet."""
    start, end = 0.4, 0.7

    def record(into):
        return lambda i, total, latents: into.append(latents.clone())

    plain, cached, calls = [], [], Calls()
    run_ours(model, callback=record(plain))
    run_ours(model, cache(3.0, start, end), calls, callback=record(cached))
    scheduler = make_scheduler("euler", "normal", model.scheduler_config)
    scheduler.set_timesteps(STEPS)
    ts = [float(t) for t in scheduler.timesteps]
    before = [i for i, t in enumerate(ts) if t > window(start)]
    after = [i for i, t in enumerate(ts) if t <= window(end)]
    assert before and after and len(before) + len(after) < STEPS
    for i in before:
        assert torch.equal(cached[i], plain[i]), i
    assert set(after) <= set(calls.steps)
    assert len(calls.steps) < STEPS  # it did skip inside the window


@pytest.mark.parametrize("cache", [EasyCache, LazyCache])
def test_no_state_leaks_from_one_run_to_the_next(model, cache):
    ext = cache(0.4, 0.0, 1.0)
    first = run_ours(model, ext, prompt_seed=1)
    second = run_ours(model, ext, prompt_seed=2)
    fresh = run_ours(model, cache(0.4, 0.0, 1.0), prompt_seed=2)
    assert torch.equal(second, fresh)
    assert torch.equal(first, run_ours(model, ext, prompt_seed=1))
    assert (first - second).abs().max() > 1e-3


class TwicePerStep(SamplerExtension):
    """Denoises each step twice (as MultiDiffusion's windows call the UNet)."""

    priority = 1

    def denoise(self, run, denoise):
        def twice(run, step, latents):
            scheduler_state = dict(run.scheduler.__dict__)
            denoise(run, step, latents)
            run.scheduler.__dict__.update(scheduler_state)
            return denoise(run, step, latents)

        return twice


@pytest.mark.parametrize("cache", [EasyCache, LazyCache])
def test_a_unet_called_twice_per_step_turns_the_cache_off(model, cache, caplog):
    plain = run_ours(model, TwicePerStep(), steps=5)
    with caplog.at_level(logging.WARNING):
        cached = run_ours(model, TwicePerStep(), cache(3.0, 0.0, 1.0), steps=5)
    assert torch.equal(cached, plain)
    assert "more than once per step" in caplog.text


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="reuse_threshold"):
        EasyCache(-1.0)
    with pytest.raises(ValueError, match="start_percent"):
        LazyCache(0.2, float("nan"))


# --- through the graph: with CFG and SAG ----------------------------------------------------

def graph(patches: list[tuple[str, dict]], *, steps: int = 10, cfg: float = 6.0) -> dict:
    key = uuid.uuid4().hex
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 128, "height": 96, "batch_size": 1}},
    }
    model = ["ckpt", 0]
    for n, (node_type, inputs) in enumerate(patches):
        prompt[f"p{n}"] = {"class_type": node_type, "inputs": {"model": model, **inputs}}
        model = [f"p{n}", 0]
    prompt["k"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 3, "steps": steps, "cfg": cfg, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": ["lat", 0], "denoise": 1.0}}
    prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["k", 0], "key": key}}
    return prompt


def run_graph(session, prompt: dict) -> torch.Tensor:
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples


CACHE = {"reuse_threshold": 0.0, "start_percent": 0.15, "end_percent": 0.95,
         "verbose": False}
SAG = ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0})


@pytest.mark.parametrize("node", ["EasyCache", "LazyCache"])
def test_the_caches_compose_with_cfg_and_sag(session, node, caplog):
    sag = run_graph(session, graph([SAG]))
    zero = run_graph(session, graph([SAG, (node, CACHE)]))
    assert torch.equal(zero, sag)
    with caplog.at_level(logging.INFO, logger="nodes.diffusion.step_cache"):
        cached = run_graph(session, graph([(node, {**CACHE, "reuse_threshold": 3.0,
                                                   "verbose": True}), SAG]))
    assert torch.isfinite(cached).all() and not torch.equal(cached, sag)
    skipped = [r.getMessage() for r in caplog.records if "steps (" in r.getMessage()]
    assert skipped and not skipped[-1].startswith(f"{node} - skipped 0/")


def test_the_nodes_validate_comfyuis_ranges(session):
    with pytest.raises(PromptValidationError, match="reuse_threshold"):
        session.validate(graph([("EasyCache", {**CACHE, "reuse_threshold": 3.5})]))
    with pytest.raises(PromptValidationError, match="backend"):
        session.validate(graph([("TorchCompileModel", {"backend": "tensorrt"})]))
    with pytest.raises(PromptValidationError, match="dtype"):
        session.validate(graph([("ModelComputeDtype", {"dtype": "fp8"})]))


# --- TorchCompileModel ----------------------------------------------------------------------

def test_compile_failure_falls_back_to_eager(model, monkeypatch, caplog):
    class Broken(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda module, backend=None: Broken())
    plain = run_ours(model)
    ext = TorchCompile("inductor")
    with caplog.at_level(logging.WARNING):
        ours = run_ours(model, ext)
    assert torch.equal(ours, plain) and ext.failed
    assert "running the UNet uncompiled" in caplog.text
    assert torch.equal(run_ours(model, ext), plain)  # later runs: eager at once


def test_compile_keeps_out_of_memory_errors(model, monkeypatch):
    class Full(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(torch, "compile", lambda module, backend=None: Full())
    with pytest.raises(ValueError, match="ran out of memory"):
        run_ours(model, TorchCompile("cudagraphs"))


def _compiled_equals_eager(model, backend: str, tol: float) -> None:
    plain = run_ours(model, steps=3)
    ext = TorchCompile(backend)
    ours = run_ours(model, ext, steps=3)
    assert not ext.failed
    assert (ours - plain).abs().max() <= tol
    compiled = ext.compiled(model.unet)
    assert torch.equal(run_ours(model, ext, steps=3), ours)
    assert ext.compiled(model.unet) is compiled  # compiled once per handle
    assert type(model.unet) is UNet2DConditionModel  # the base handle as it was
    assert added_hooks(model.unet) == 0


@pytest.mark.slow
def test_compiled_with_cudagraphs_equals_eager(compile_model):
    _compiled_equals_eager(compile_model, "cudagraphs", 1e-5)


@pytest.mark.slow
def test_compiled_with_inductor_equals_eager(compile_model):
    _compiled_equals_eager(compile_model, "inductor", 1e-3)


def test_torch_compile_node_leaves_the_base_handle(model):
    from nodes.speed_patches import TorchCompileModel

    (patched,) = TorchCompileModel(model=model, backend="cudagraphs").execute(None)
    assert patched.unet is model.unet and model.extensions == ()
    assert isinstance(patched.extensions[-1], TorchCompile)


# --- ModelComputeDtype ----------------------------------------------------------------------

def compute_dtype(model: DiffusionModel, dtype: str) -> DiffusionModel:
    from nodes.speed_patches import ModelComputeDtype

    return ModelComputeDtype(model=model, dtype=dtype).execute(None)[0]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_compute_dtype_runs_the_unet_in_that_dtype(model, dtype):
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    plain = run_ours(model, steps=4)
    patched = compute_dtype(model, dtype)
    target = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert patched.unet.dtype == target and patched.unet is not model.unet
    ours = run_ours(patched, steps=4)
    assert ours.dtype == target and torch.isfinite(ours).all()
    error = (ours.float() - plain).abs().max() / plain.abs().max()
    assert 0 < error < 0.1
    # the base handle is as it was: float32, the same weights
    assert model.unet.dtype == torch.float32
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())
    # back to fp32 from the copy: a new fp32 copy, equal to the cast weights
    back = compute_dtype(patched, "fp32")
    assert back.unet.dtype == torch.float32 and back.unet is not patched.unet


def test_an_operation_missing_in_that_dtype_is_a_clear_error(model):
    class Missing(SamplerExtension):
        priority = -3000  # inside the guard: as the UNet itself would fail

        def unet_forward(self, run, step, call, forward):
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')

    patched = compute_dtype(model, "fp16")
    with pytest.raises(ValueError, match="dtype fp16: cpu cannot run this UNet in fp16"):
        run_ours(patched, Missing(), steps=2)


def test_compute_dtype_default_and_same_dtype_keep_the_handle(model):
    assert compute_dtype(model, "default") is model
    assert compute_dtype(model, "fp32") is model
    assert torch.equal(run_ours(compute_dtype(model, "fp32"), steps=2),
                       run_ours(model, steps=2))


def test_cast_copy_shares_nothing_with_the_original(model):
    copy = cast_copy(model.unet, torch.bfloat16)
    originals = {p.data_ptr() for p in model.unet.parameters()}
    assert not originals & {p.data_ptr() for p in copy.parameters()}
    assert all(not p.requires_grad for p in copy.parameters())


def test_compute_dtype_that_does_not_fit_is_refused(model, monkeypatch):
    from nodes.diffusion import vae_codec

    monkeypatch.setattr(vae_codec, "available_bytes", lambda device: 1000)
    with pytest.raises(ValueError, match="bf16 copy of the UNet"):
        compute_dtype(model, "bf16")


def test_compute_dtype_through_the_graph(session):
    plain = run_graph(session, graph([], steps=4))
    bf16 = run_graph(session, graph([("ModelComputeDtype", {"dtype": "bf16"})], steps=4))
    fp32 = run_graph(session, graph([("ModelComputeDtype", {"dtype": "fp32"})], steps=4))
    assert torch.equal(fp32, plain)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
    assert (bf16.float() - plain).abs().max() / plain.abs().max() < 0.1
