"""FABRIC through the graph equals an independent implementation of the method, and
combines with the other techniques.

diffusers ships FABRIC only as a community pipeline (``examples/community/
pipeline_fabric.py``), not in the installed package; :func:`reference_fabric` writes its
math out plainly over diffusers' UNet, VAE and scheduler, with attention processors of
its own: the pipeline's batch order ``[cond, uncond]``, a recording pass over the
feedback images with the empty prompt, then per self-attention layer the conditional
rows attending to ``[own, liked]`` and the unconditional rows to ``[own, disliked]``
(each in a separate attention call), the feedback's probabilities multiplied by the
block's weight and renormalised. Feedback latents are the VAE's mode and the feedback
noise comes from its own generator, as ``nodes.diffusion.fabric`` documents.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine import PromptValidationError
from engine.session import Session, Workflow
from nodes.diffusion.attention import AttentionCall, AttentionLayer, AttentionRecorder
from nodes.diffusion.fabric import NOISE_SEED_OFFSET
from nodes.diffusion.schedulers import SAMPLERS
from tests.graph_nodes import CAPTURED, registry_with_capture, run_error, run_graph

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 6
DEFAULTS = {"min_weight": 0.05, "max_weight": 0.8, "neg_scale": 0.5,
            "feedback_start_ratio": 0.33, "feedback_end_ratio": 0.66,
            "pos_bottleneck_scale": 1.0, "neg_bottleneck_scale": 1.0}


# --- inputs ---------------------------------------------------------------------------------

def put_images(session, name: str, count: int, width: int, height: int, seed: int
               ) -> list[str]:
    """``count`` random RGB PNGs in the session's input folder; their names."""
    rng = np.random.default_rng(seed)
    folder = session.env.folder("input", create=True)
    names = []
    for k in range(count):
        # smooth blobs, not per-pixel noise: something a VAE encodes like an image
        small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
        file = f"{name}_{seed}_{k}_{width}x{height}.png"
        img.save(folder / file)
        names.append(file)
    return names


def load_batch(session, files: list[str]) -> torch.Tensor:
    folder = session.env.folder("input")
    if not files:
        return torch.zeros(0, 1, 1, 3)
    return torch.stack([torch.from_numpy(np.asarray(Image.open(folder / f).convert("RGB"),
                                                    np.float32) / 255.0) for f in files])


def batch_nodes(prompt: dict, name: str, files: list[str]) -> list:
    """LoadImage per file, chained by ImageBatch; the link to the batch."""
    link = None
    for k, file in enumerate(files):
        prompt[f"{name}{k}"] = {"class_type": "LoadImage", "inputs": {"image": file}}
        if link is None:
            link = [f"{name}{k}", 0]
        else:
            prompt[f"{name}b{k}"] = {"class_type": "ImageBatch", "inputs": {
                "image1": link, "image2": [f"{name}{k}", 0]}}
            link = [f"{name}b{k}", 0]
    return link


def fabric_prompt(*, ckpt="steerflow-tiny", sampler="ddim", width=64, height=64, cfg=7.5,
                  seed=3, batch=1, liked=(), disliked=(), fabric: dict | None = None,
                  sega=False, sag=False, steps=STEPS) -> dict:
    """txt2img on the tiny model, optionally through FABRICFeedback, SEGA and SAG."""
    model: list = ["4", 0]
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                           "batch_size": batch}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    if fabric is not None:
        inputs = {"model": model, "clip": ["4", 1], "vae": ["4", 2], **fabric}
        if liked:
            inputs["liked"] = batch_nodes(prompt, "liked", list(liked))
        if disliked:
            inputs["disliked"] = batch_nodes(prompt, "disliked", list(disliked))
        prompt["20"] = {"class_type": "FABRICFeedback", "inputs": inputs}
        model = ["20", 0]
    if sega:
        prompt["c0"] = {"class_type": "SEGAConcept", "inputs": {
            "clip": ["4", 1], "text": "a blue square", "scale": 6.0, "warmup_steps": 1}}
        prompt["21"] = {"class_type": "ApplySEGA", "inputs": {"model": model,
                                                              "concepts": ["c0", 0]}}
        model = ["21", 0]
    if sag:
        prompt["22"] = {"class_type": "SelfAttentionGuidance", "inputs": {
            "model": model, "scale": 0.75, "blur_sigma": 1.0}}
        model = ["22", 0]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0]}}
    return prompt


# --- the independent implementation ---------------------------------------------------------

def _encode(c, text: str) -> torch.Tensor:
    ids = c.tokenizer(text, padding="max_length", max_length=c.tokenizer.model_max_length,
                      truncation=True, return_tensors="pt").input_ids
    return c.text_encoder(ids)[0]


def _classic_attention(attn, hidden, context, weights=None):
    """Attention of ``hidden`` over ``context`` (diffusers' classic math); ``weights``
    ``[B, keys]`` multiply the probabilities, which are then renormalised."""
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    k = attn.head_to_batch_dim(attn.to_k(context))
    v = attn.head_to_batch_dim(attn.to_v(context))
    probs = attn.get_attention_scores(q, k, None)
    if weights is not None:
        probs = probs * weights.repeat_interleave(attn.heads, dim=0)[:, None]
        probs = probs / probs.sum(dim=-1, keepdim=True)
    out = attn.batch_to_head_dim(torch.bmm(probs, v))
    return attn.to_out[1](attn.to_out[0](out))


class RecordInputs:
    """The feedback pass: keeps one self-attention layer's input hidden states."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 **kwargs):
        self.store[self.name] = hidden_states.detach()
        return _classic_attention(attn, hidden_states, hidden_states)


class FeedbackProcessor:
    """The main pass, batch [cond, uncond]: cond rows see [own, liked] with the liked
    weight, uncond rows [own, disliked] with the disliked weight."""

    def __init__(self, liked, disliked, pos_weight, neg_weight):
        self.liked, self.disliked = liked, disliked
        self.pos_weight, self.neg_weight = pos_weight, neg_weight

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 **kwargs):
        cond, uncond = hidden_states.chunk(2)
        outs = []
        for part, feedback, weight in ((cond, self.liked, self.pos_weight),
                                       (uncond, self.disliked, self.neg_weight)):
            if feedback is None or feedback.shape[0] == 0:
                outs.append(_classic_attention(attn, part, part))
                continue
            b, tokens = part.shape[:2]
            extra = feedback.reshape(1, -1, feedback.shape[-1]).expand(b, -1, -1)
            weights = torch.ones(b, tokens + extra.shape[1])
            weights[:, tokens:] = weight
            outs.append(_classic_attention(attn, part, torch.cat([part, extra], dim=1),
                                           weights))
        return torch.cat(outs)


def _self_attention_names(unet) -> list[str]:
    """Every transformer block's attn1 whose keys are the image (not an
    ``only_cross_attention`` block's, which reads the text)."""
    return [n for n in unet.attn_processors if n.endswith("attn1.processor")
            and not unet.get_submodule(n.removesuffix(".processor")).is_cross_attention]


def _block_weight(name: str, w0: float, w1: float, n_down: int) -> float:
    local = torch.linspace(w0, w1, n_down + 1)[:-1].tolist()
    parts = name.split(".")
    if parts[0] == "mid_block":
        return w1
    if parts[0] == "down_blocks":
        return local[int(parts[1])]
    return local[::-1][int(parts[1])]


@torch.no_grad()
def reference_fabric(folder, *, liked: torch.Tensor, disliked: torch.Tensor,
                     sampler="ddim", width=64, height=64, cfg=7.5, seed=3, batch=1,
                     steps=STEPS, **settings) -> np.ndarray:
    from nodes.diffusion.loading import load_components

    s = {**DEFAULTS, **settings}
    c = load_components(folder)
    unet, vae = c.unet, c.vae
    class_name, extra = SAMPLERS[sampler]
    scheduler = getattr(diffusers, class_name).from_config(c.scheduler_config, **extra)
    cond, uncond, null = _encode(c, PROMPT), _encode(c, NEGATIVE), _encode(c, "")
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = diffusers.utils.torch_utils.randn_tensor(
        (batch, unet.config.in_channels, height // down, width // down), generator=generator)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma

    def to_latents(images):
        if images.shape[0] == 0:
            return images.new_zeros(0, 4, height // down, width // down)
        x = images.permute(0, 3, 1, 2)
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 1)
        return vae.encode(x * 2 - 1).latent_dist.mode() * vae.config.scaling_factor

    pos_latents, neg_latents = to_latents(liked), to_latents(disliked)
    z_ref = torch.cat([pos_latents, neg_latents])
    n_pos, n_neg = pos_latents.shape[0], neg_latents.shape[0]
    fb_generator = torch.Generator("cpu").manual_seed(seed + NOISE_SEED_OFFSET)
    timesteps = scheduler.timesteps
    start, end = (round(len(timesteps) * s["feedback_start_ratio"]),
                  round(len(timesteps) * s["feedback_end_ratio"]))
    names = _self_attention_names(unet)
    n_down = len(unet.config.down_block_types)
    original = dict(unet.attn_processors)
    embeds = torch.cat([cond.repeat(batch, 1, 1), uncond.repeat(batch, 1, 1)])
    try:
        for i, t in enumerate(timesteps):
            factor = s["max_weight"] if start <= i <= end else s["min_weight"]
            z = scheduler.scale_model_input(latents, t)
            cached: dict[str, torch.Tensor] = {}
            if factor > 0:
                noise = torch.randn(tuple(z_ref.shape), generator=fb_generator)
                if hasattr(scheduler, "sigmas") and scheduler.init_noise_sigma != 1:
                    sigma = scheduler.sigmas[scheduler.step_index or 0]
                    alpha_hat = 1 / (sigma ** 2 + 1)
                else:
                    alpha_hat = scheduler.alphas_cumprod[int(t)]
                noised = alpha_hat ** 0.5 * z_ref + (1 - alpha_hat) ** 0.5 * noise
                unet.set_attn_processor({**original, **{n: RecordInputs(cached, n)
                                                        for n in names}})
                unet(noised, t, encoder_hidden_states=null.repeat(len(z_ref), 1, 1))
                processors = {}
                for name in names:
                    pos_hs, neg_hs = cached[name].split([n_pos, n_neg])
                    processors[name] = FeedbackProcessor(
                        pos_hs, neg_hs,
                        _block_weight(name, factor, factor * s["pos_bottleneck_scale"], n_down),
                        _block_weight(name, factor * s["neg_scale"],
                                      factor * s["neg_scale"] * s["neg_bottleneck_scale"],
                                      n_down))
                unet.set_attn_processor({**original, **processors})
            else:
                unet.set_attn_processor(dict(original))
            noise_cond, noise_uncond = unet(torch.cat([z, z]), t,
                                            encoder_hidden_states=embeds)[0].chunk(2)
            pred = noise_uncond + cfg * (noise_cond - noise_uncond)
            kwargs = {"generator": generator} if sampler == "euler_ancestral" else {}
            latents = scheduler.step(pred, t, latents, **kwargs).prev_sample
    finally:
        unet.set_attn_processor(dict(original))
    image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# --- parity ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("ckpt", "sampler", "width", "height", "n_liked", "n_disliked",
                          "settings", "batch"), [
    ("steerflow-tiny", "ddim", 64, 64, 2, 1, {}, 1),
    ("steerflow-tiny.safetensors", "ddim", 64, 40, 1, 2,
     {"min_weight": 0.3, "max_weight": 1.5, "feedback_start_ratio": 0.0}, 2),
    ("steerflow-tiny", "dpmpp_2m", 40, 64, 2, 0,
     {"pos_bottleneck_scale": 2.0, "max_weight": 1.2}, 1),
    ("steerflow-tiny.safetensors", "euler_ancestral", 64, 40, 1, 1,
     {"neg_scale": 1.0, "neg_bottleneck_scale": 0.5, "min_weight": 0.0}, 1),
    ("steerflow-tiny", "ddim", 64, 64, 0, 2, {"max_weight": 2.0}, 1),
])
def test_matches_the_independent_implementation(session, tiny_model_paths, ckpt, sampler,
                                                width, height, n_liked, n_disliked, settings,
                                                batch):
    liked = put_images(session, "liked", n_liked, width, height, seed=1)
    disliked = put_images(session, "disliked", n_disliked, width, height, seed=2)
    fabric = {**DEFAULTS, **settings}
    ours = run_graph(session, fabric_prompt(ckpt=ckpt, sampler=sampler, width=width,
                                            height=height, batch=batch, liked=liked,
                                            disliked=disliked, fabric=fabric))
    ref = reference_fabric(tiny_model_paths["diffusers"], liked=load_batch(session, liked),
                           disliked=load_batch(session, disliked), sampler=sampler,
                           width=width, height=height, batch=batch, **settings)
    assert ours.shape == ref.shape == (batch, height, width, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = run_graph(session, fabric_prompt(ckpt=ckpt, sampler=sampler, width=width,
                                             height=height, batch=batch))
    assert np.abs(ours - plain).max() > 1e-3  # FABRIC acts


def test_feedback_of_another_size_is_resized(session, tiny_model_paths):
    """Liked images of 48x48 for a 64x40 generation are resized to 64x40 first."""
    liked = put_images(session, "odd", 2, 48, 48, seed=5)
    ours = run_graph(session, fabric_prompt(width=64, height=40, liked=liked,
                                            fabric=dict(DEFAULTS)))
    ref = reference_fabric(tiny_model_paths["diffusers"], liked=load_batch(session, liked),
                           disliked=torch.zeros(0, 1, 1, 3), width=64, height=40)
    assert np.abs(ours - ref).max() <= 1e-4


def test_a_run_split_in_two_samplers_draws_the_one_run(session):
    """KSamplerAdvanced 0-3 then 3-STEPS equal one KSampler: the feedback window is a
    fraction of the whole schedule and the second half's feedback noise goes on from
    where the first half's left off (it started again from the seed)."""
    liked = put_images(session, "liked", 2, 64, 64, seed=1)
    fabric = {**DEFAULTS, "feedback_start_ratio": 0.0, "feedback_end_ratio": 0.5}
    whole = run_graph(session, fabric_prompt(liked=liked, fabric=fabric))
    prompt = fabric_prompt(liked=liked, fabric=fabric)
    k = prompt.pop("3")["inputs"]
    common = {key: k[key] for key in ("model", "steps", "cfg", "sampler_name", "scheduler",
                                      "positive", "negative")}
    prompt["30"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "enable", "noise_seed": k["seed"], "latent_image": ["5", 0],
        "start_at_step": 0, "end_at_step": 3, "return_with_leftover_noise": "enable"}}
    prompt["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        **common, "add_noise": "disable", "noise_seed": k["seed"], "latent_image": ["30", 0],
        "start_at_step": 3, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}
    assert np.abs(run_graph(session, prompt) - whole).max() <= 1e-5


def test_weights_zero_is_exactly_the_plain_model(session):
    liked = put_images(session, "liked", 1, 64, 64, seed=1)
    off = run_graph(session, fabric_prompt(liked=liked, fabric={
        **DEFAULTS, "min_weight": 0.0, "max_weight": 0.0}))
    assert np.array_equal(off, run_graph(session, fabric_prompt()))


def test_feedback_pass_runs_once_per_weighted_step(session, tiny_model_paths):
    """One extra UNet pass over the feedback batch per step with a weight above 0; the
    UNet's processors are restored after the run."""
    from nodes.diffusion.extensions import SamplerExtension
    from nodes.diffusion.fabric import FABRIC
    from nodes.diffusion.handles import Vae
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.sampling import SamplingParams, sample
    from nodes.diffusion.schedulers import make_scheduler

    c = load_components(tiny_model_paths["diffusers"])
    key = uuid.uuid4().hex
    prompt = fabric_prompt()
    for node in ("4", "6", "7", "5"):
        prompt[f"c{node}"] = {"class_type": "TestCapture",
                              "inputs": {"value": [node, 0], "key": key + node}}
    del prompt["10"], prompt["8"], prompt["3"]
    assert session.run(prompt).ok
    model, pos, neg, latent = (CAPTURED.pop(key + n) for n in "4675")
    calls: list[tuple[int, tuple[str, ...]]] = []

    class Spy(SamplerExtension):
        def setup(self, run):
            unet = run.model.unet
            original = unet.forward

            def forward(sample, *args, **kwargs):
                calls.append((sample.shape[0], run.attention.roles))
                return original(sample, *args, **kwargs)

            unet.forward = forward

        def teardown(self, run):
            del run.model.unet.forward

    images = torch.rand(3, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    fabric = FABRIC(Vae(c.vae), _encode(c, ""), images[:2], images[2:], min_weight=0.0,
                    max_weight=0.8, feedback_start_ratio=0.5, feedback_end_ratio=1.0)
    before = dict(model.unet.attn_processors)
    scheduler = make_scheduler("ddim", "normal", model.scheduler_config)
    sample(model.with_extension(fabric).with_extension(Spy()), scheduler, pos, neg, latent,
           SamplingParams(seed=1, steps=4, cfg=7.5))
    main, feedback = (2, ("uncond", "cond")), (3, ("fabric",))
    assert calls == [main, main, feedback, main, feedback, main]  # window: steps 2..3
    assert dict(model.unet.attn_processors) == before


# --- the attention store's additions --------------------------------------------------------

def test_feedback_goes_to_self_attention_only():
    """An ``only_cross_attention`` block's attn1 reads the text: FABRIC's feedback images
    were appended to those keys too (the techniques drill's unseen config)."""
    from nodes.diffusion.fabric import FABRIC, FeedbackAttention

    hook = FeedbackAttention(FABRIC.__new__(FABRIC))
    attn1 = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
    assert hook.selects(AttentionLayer.parse(attn1))
    assert not hook.selects(AttentionLayer.parse(attn1, text=True))
    assert not hook.selects(AttentionLayer.parse(attn1.replace("attn1", "attn2")))


def test_recorders_and_on_output_see_the_layers_own_tokens_only():
    """With key tokens appended by an on_kv hook, a recorder keeps the maps over the
    layer's own keys and on_output gets its own values (PAG's identity attention)."""
    from diffusers.models.attention_processor import Attention

    from nodes.diffusion.attention import AttentionHook, AttentionStore, HookedAttnProcessor

    torch.manual_seed(0)
    attn = Attention(8, heads=2, dim_head=4)
    layer = AttentionLayer.parse("mid_block.attentions.0.transformer_blocks.0.attn1.processor")
    seen: dict[str, object] = {}

    class Append(AttentionHook):
        def on_kv(self, call: AttentionCall, key, value):
            seen["key_tokens"] = call.key_tokens
            return torch.cat([key, key], dim=1), torch.cat([value, value], dim=1)

    class Output(AttentionHook):
        def on_output(self, call, attended, value):
            seen["value"] = value.shape
            return attended

    recorder = AttentionRecorder(places=("mid",), cross=False)
    run = SimpleNamespace(state={})
    processor = HookedAttnProcessor(layer, [Append(), recorder, Output()], AttentionStore(),
                                    run)
    attn.set_processor(processor)
    attn(torch.randn(1, 6, 8))
    assert seen == {"key_tokens": 6, "value": torch.Size([2, 6, 4])}
    (_, maps, heads), = recorder.maps(run, "cond")
    assert maps.shape == (1, 6, 6) and heads == 2


# --- bad input ------------------------------------------------------------------------------

def test_the_first_round_without_feedback_samples_as_without_fabric_and_says_so(session):
    """Nothing liked yet (FABRIC added before the first images exist): the round samples
    as plain, with a warning saying how to steer the next; before, it failed."""
    prompt = fabric_prompt(fabric=dict(DEFAULTS))
    result = session.run(prompt, keep_events=True)
    assert result.ok, result.run.error
    image = CAPTURED.pop(prompt["10"]["inputs"]["key"])
    warnings = [d["message"] for e, d in result.events if e == "node_warning"]
    assert any("no feedback yet" in w and "Like" in w for w in warnings)
    plain = fabric_prompt()
    assert session.run(plain).ok
    assert torch.equal(image, CAPTURED.pop(plain["10"]["inputs"]["key"]))


@pytest.mark.parametrize(("change", "field"), [
    ({"min_weight": 1.0, "max_weight": 0.5}, "min_weight"),
    ({"feedback_start_ratio": 0.8, "feedback_end_ratio": 0.2}, "feedback_start_ratio"),
    ({"max_weight": 11.0}, "max_weight"),
    ({"neg_scale": -1.0}, "neg_scale"),
    ({"feedback_end_ratio": 1.5}, "feedback_end_ratio"),
])
def test_weights_out_of_range_are_validation_errors(session, change, field):
    liked = put_images(session, "liked", 1, 64, 64, seed=1)
    with pytest.raises(PromptValidationError, match=field):
        session.run(fabric_prompt(liked=liked, fabric={**DEFAULTS, **change}))


def test_bad_feedback_images_are_clear_errors(session, tiny_model_paths):
    from nodes.diffusion.fabric import FABRIC
    from nodes.diffusion.handles import Vae
    from nodes.diffusion.loading import load_components

    c = load_components(tiny_model_paths["diffusers"])
    vae, null = Vae(c.vae), torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match="both batches are empty"):
        FABRIC(vae, null, torch.zeros(0, 64, 64, 3), None)
    with pytest.raises(ValueError, match="4 channels; they must be RGB"):
        FABRIC(vae, null, torch.zeros(1, 64, 64, 4), None)
    with pytest.raises(ValueError, match=r"IMAGE batch \[B, H, W, 3\]"):
        FABRIC(vae, null, torch.zeros(64, 64, 3), None)
    with pytest.raises(ValueError, match="NaN"):
        FABRIC(vae, null, torch.full((1, 8, 8, 3), float("nan")), None)


def test_disliked_without_cfg_is_an_error(session):
    disliked = put_images(session, "disliked", 1, 64, 64, seed=2)
    message = run_error(session, fabric_prompt(cfg=1.0, disliked=disliked,
                                               fabric=dict(DEFAULTS)))
    assert "raise cfg above 1" in message


def test_liked_without_cfg_acts(session):
    liked = put_images(session, "liked", 1, 64, 64, seed=1)
    ours = run_graph(session, fabric_prompt(cfg=1.0, liked=liked, fabric={
        **DEFAULTS, "max_weight": 5.0, "feedback_start_ratio": 0.0}))
    # no CFG amplifies the change here: it is small on the tiny random model
    assert np.abs(ours - run_graph(session, fabric_prompt(cfg=1.0))).max() > 1e-4


# --- combinations ---------------------------------------------------------------------------

def test_fabric_with_sega_and_sag_in_one_run(session):
    liked = put_images(session, "liked", 2, 64, 64, seed=1)
    disliked = put_images(session, "disliked", 1, 64, 64, seed=2)
    fab = {**DEFAULTS, "max_weight": 2.0}

    def run(**kw):
        return run_graph(session, fabric_prompt(liked=liked, disliked=disliked, **kw))

    everything = run(fabric=fab, sega=True, sag=True)
    assert np.isfinite(everything).all()
    assert np.abs(everything - run(sega=True, sag=True)).max() > 1e-3  # FABRIC acts
    assert np.abs(everything - run(fabric=fab, sag=True)).max() > 1e-3  # SEGA acts
    assert np.abs(everything - run(fabric=fab, sega=True)).max() > 1e-3  # SAG acts


def test_fabric_in_the_combined_workflow(tmp_path_factory):
    """FABRIC + SAG + SEGA + ControlNet + LoRA + an inpainting mask on the default model,
    one run: each still acts, and the mask still keeps its region."""
    session = Session(tmp_path_factory.mktemp("fabric_combined"), device="cpu",
                      registry=registry_with_capture())

    def run(fabric=True, sag=True, sega=True, control=True, lora=True):
        wf = Workflow.load("workflows/combined.json").set("3.steps", 6)
        prompt = wf.prompt
        model = prompt["3"]["inputs"]["model"]
        if not sega:
            model = prompt[model[0]]["inputs"]["model"]  # ApplySEGA's input
        if not lora:  # the checkpoint's model and clip instead of the LoRA's
            prompt["30"]["inputs"]["strength_model"] = 0.0
            prompt["30"]["inputs"]["strength_clip"] = 0.0
        if not control:
            prompt["13"]["inputs"]["strength"] = 0.0
        if fabric:
            prompt["fl"] = {"class_type": "LoadImage",
                            "inputs": {"image": "steerflow_example.png"}}
            prompt["fab"] = {"class_type": "FABRICFeedback", "inputs": {
                "model": model, "clip": ["30", 1], "vae": ["4", 2], "liked": ["fl", 0],
                **DEFAULTS, "max_weight": 3.0, "feedback_start_ratio": 0.0}}
            model = ["fab", 0]
        if sag:
            prompt["sag"] = {"class_type": "SelfAttentionGuidance",
                             "inputs": {"model": model, "scale": 0.75, "blur_sigma": 1.0}}
            model = ["sag", 0]
        prompt["3"]["inputs"]["model"] = model
        key = uuid.uuid4().hex
        prompt["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["3", 0],
                                                                 "key": key}}
        result = session.run(wf)
        assert result.ok, result.run.error
        return CAPTURED.pop(key).samples

    everything = run()
    assert torch.isfinite(everything).all()
    without_fabric = run(fabric=False)
    assert (everything - without_fabric).abs().max() > 1e-3  # FABRIC acts
    assert ((everything - without_fabric).abs() == 0).any()  # the mask keeps its region
    for off in ("sag", "sega", "control", "lora"):
        assert (everything - run(**{off: False})).abs().max() > 1e-3, off


def test_the_example_workflow_runs(tmp_path_factory):
    session = Session(tmp_path_factory.mktemp("fabric_wf"), device="cpu",
                      registry=registry_with_capture())
    wf = Workflow.load("workflows/fabric.json")
    prompt = wf.prompt
    for node in prompt.values():
        if node["class_type"] in ("KSampler",):
            node["inputs"]["steps"] = 3
    result = session.run(wf)
    assert result.ok, result.run.error
    assert result.image_paths
