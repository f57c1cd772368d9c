"""OFT, BOFT and GLoRA files (LyCORIS' "diag-oft", "boft", "glora"; kohya's OFT) through
Load LoRA: the weights LyCORIS itself merges, and diffusers' images drawn with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.session import Session
from nodes.diffusion.lora import LoraMismatchError, load_lora, patched
from nodes.diffusion.tiny import build_tiny_pipeline
from tests.graph_nodes import registry_with_capture
from tests.test_lora import (
    CFG,
    NEGATIVE,
    PROMPT,
    SEED,
    STEPS,
    euler_pipeline,
    lora_prompt,
    run_image,
)

lycoris = pytest.importorskip("lycoris")

# (LyCORIS' algo, its arguments, how far its random weights go)
ALGOS = {
    # a constraint that clips the larger layers' rotations and not the smaller ones'
    "oft": ("diag-oft", {"constraint": 0.02, "rescaled": True}, 0.08),
    "boft": ("boft", {"constraint": 0.0, "rescaled": True}, 0.06),
    "glora": ("glora", {}, 0.12),
}
ATTENTION_AND_RESNETS = {"target_module": ["Transformer2DModel", "ResnetBlock2D"],
                         "target_name": []}
EVERY_LAYER = {"target_module": ["Linear", "Conv2d"], "target_name": []}


def lycoris_net(kind: str, preset: dict | None = None, seed: int = 0):
    """The tiny UNet with a LyCORIS network of ``kind`` on it, its weights random."""
    from lycoris import LycorisNetwork, create_lycoris

    algo, kwargs, spread = ALGOS[kind]
    LycorisNetwork.apply_preset(preset or ATTENTION_AND_RESNETS)
    unet = build_tiny_pipeline().unet
    net = create_lycoris(unet, 1.0, linear_dim=4, linear_alpha=2.0, algo=algo, **kwargs)
    net.apply_to()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            noise = torch.randn(param.shape, generator=g) * spread
            param.copy_(1 + noise if name.endswith("rescale") else noise)
    return unet, net


def save_net(path, net, prefix: str = "lora_unet_") -> dict[str, torch.Tensor]:
    """LyCORIS' tensors under kohya's prefix (the files users get), saved; also returned."""
    state = {prefix + k.removeprefix("lycoris_"): v.detach().clone().contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return state


@pytest.fixture(scope="module")
def oft_files(models_dir):
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    for kind in ALGOS:
        save_net(folder / f"lyco_{kind}.safetensors", lycoris_net(kind)[1])
    return folder


@pytest.fixture(scope="module")
def session(models_dir, oft_files, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("home"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def _our_weights(path, strength: float) -> dict[str, torch.Tensor]:
    unet = build_tiny_pipeline().unet
    lora = load_lora(path)
    patch = lora.patch(unet, "unet", strength)
    with patched(unet, [patch]):
        params = dict(unet.named_parameters())
        return {name.removesuffix(".weight"): params[name].detach().clone()
                for name, _ in patch.weights}


def _lycoris_weights(net, strength: float) -> dict[str, torch.Tensor]:
    out = {}
    for lora in net.loras:
        merged, _ = lora.get_merged_weight(multiplier=strength, shape=lora.shape)
        out[lora.lora_name.removeprefix("lycoris_")] = merged.detach()
    return out


@pytest.mark.parametrize("kind", sorted(ALGOS))
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_the_patched_weights_are_lycoris_merged_ones(oft_files, kind, strength):
    _, net = lycoris_net(kind)
    theirs = _lycoris_weights(net, strength)
    ours = _our_weights(oft_files / f"lyco_{kind}.safetensors", strength)
    assert len(ours) == len(theirs) > 40
    ours_by_kohya = {name.replace(".", "_"): w for name, w in ours.items()}
    worst = max(float((ours_by_kohya[k] - v.reshape(ours_by_kohya[k].shape)).abs().max())
                for k, v in theirs.items())
    assert worst <= 1e-5, worst


def _image(pipe, height: int, width: int) -> np.ndarray:
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                height=height, width=width, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED)).images


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "strength", "height", "width"), [
    ("oft", 1.0, 64, 64), ("boft", 0.8, 48, 80), ("glora", 0.7, 80, 48)])
def test_load_lora_draws_what_diffusers_draws_with_lycoris_merged(
        session, tiny_model_paths, kind, strength, height, width):
    prompt = lora_prompt((f"lyco_{kind}.safetensors", strength, strength))
    base_prompt = lora_prompt()
    for p in (prompt, base_prompt):
        p["5"]["inputs"].update(height=height, width=width)
    ours = run_image(session, prompt)
    base = run_image(session, base_prompt)
    merged = _lycoris_weights(lycoris_net(kind)[1], strength)
    unet = build_tiny_pipeline().unet  # the weights LyCORIS merges, in a plain UNet
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.replace(".", "_") in merged:
                module.weight.copy_(merged.pop(name.replace(".", "_")).reshape(module.weight.shape))
    assert not merged
    pipe = euler_pipeline(tiny_model_paths)
    pipe.unet = unet
    ref = _image(pipe, height, width)
    assert np.isfinite(ours).all() and np.abs(ours - base).max() > 1e-2
    assert np.abs(ours - ref).max() <= 1e-4


def test_a_lycoris_file_on_every_layer_loads(tmp_path):
    """LyCORIS on every Linear and Conv2d: conv_in, the time embedding, the 4-row conv_out
    (one butterfly stage of one block), the shortcuts, the up/down samplers."""
    _, net = lycoris_net("boft", EVERY_LAYER)
    save_net(tmp_path / "every.safetensors", net)
    theirs = _lycoris_weights(net, 1.0)
    ours = {k.replace(".", "_"): v for k, v in _our_weights(tmp_path / "every.safetensors",
                                                            1.0).items()}
    assert set(ours) == set(theirs)
    assert max(float((ours[k] - v.reshape(ours[k].shape)).abs().max())
               for k, v in theirs.items()) <= 1e-5


def test_kohya_oft_files_are_read_as_sd_scripts_merges_them(tmp_path):
    """kohya's ``oft_unet_`` files: ``R = (I+Q)(I-Q)⁻¹`` with ‖Q‖ clipped to alpha·out,
    the strength taking each R towards I, ``W'ₖ = Rₖᵀ Wₖ`` (its merge_to)."""
    unet = build_tiny_pipeline().unet
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    weight = dict(unet.named_parameters())[name + ".weight"].detach()
    g = torch.Generator().manual_seed(3)
    blocks = torch.randn(4, weight.shape[0] // 4, weight.shape[0] // 4, generator=g) * 0.2
    alpha = 0.01
    key = "oft_unet_" + name.replace(".", "_")
    save_file({f"{key}.oft_blocks": blocks, f"{key}.alpha": torch.tensor(alpha)},
              str(tmp_path / "kohya_oft.safetensors"))
    q = blocks - blocks.transpose(1, 2)
    limit = alpha * weight.shape[0]
    assert q.norm() > limit  # the clip acts
    q = q * limit / q.norm()
    eye = torch.eye(q.shape[-1])
    r = (eye + q) @ torch.inverse(eye - q)
    strength = 0.7
    r = strength * (r - eye) + eye
    expected = torch.einsum("knm,knp->kmp", r, weight.reshape(4, -1, weight.shape[1]))
    ours = _our_weights(tmp_path / "kohya_oft.safetensors", strength)[name]
    assert (ours - expected.reshape(weight.shape)).abs().max() <= 1e-6


@pytest.mark.parametrize("kind", sorted(ALGOS))
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_the_bypass_loader_and_a_hook_draw_an_oft_as_the_loader_does(session, kind, strength):
    """Load LoRA (Bypass) and a hook LoRA give Load LoRA's image at any strength. A BOFT's
    stages, each taken towards I by the strength, and an OFT's rescale make the change not
    proportional to the strength: at 0.6 the change at 1 scaled by 0.6 was 18/255 off (the
    fault drill); it is now computed at each row's strength."""
    name = f"lyco_{kind}.safetensors"
    merged = run_image(session, lora_prompt((name, strength, 1.0)))
    bypass = lora_prompt((name, strength, 1.0))
    bypass["20"]["class_type"] = "LoraLoaderBypass"
    assert np.abs(run_image(session, bypass) - merged).max() <= 1e-4
    hooked = lora_prompt((name, strength, 1.0), model_only=True)
    hooked["20"] = {"class_type": "CreateHookLora", "inputs": {
        "lora_name": name, "strength_model": strength, "strength_clip": 1.0}}
    hooked["21"] = {"class_type": "PairConditioningSetProperties", "inputs": {
        "positive_NEW": ["6", 0], "negative_NEW": ["7", 0], "strength": 1.0,
        "set_cond_area": "default", "hooks": ["20", 0]}}
    hooked["3"]["inputs"].update(model=["4", 0], positive=["21", 0], negative=["21", 1])
    merged_model_only = run_image(session, lora_prompt((name, strength, 1.0), model_only=True))
    assert np.abs(run_image(session, hooked) - merged_model_only).max() <= 1e-4


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s, k: s.update({f"{k}.oft_blocks": s[f"{k}.oft_blocks"][:, :, :3]}),
     r"oft_blocks \(8, 4, 3\) are not square blocks"),
    (lambda s, k: s.update({f"{k}.oft_blocks": s[f"{k}.oft_blocks"][:6]}),
     r"oft_blocks \(6, 4, 4\) turn 24 rows; the weight has 32"),
    (lambda s, k: s.update({f"{k}.rescale": s[f"{k}.rescale"][:16]}),
     r"rescale of 16 values; the weight has 32 rows"),
    (lambda s, k: s.pop(f"{k}.oft_blocks"), r"OFT layer with a rescale but no oft_blocks"),
    (lambda s, k: s.update({f"{k}.dora_scale": torch.ones(32, 1)}),
     r"a DoRA magnitude on a LyCORIS layer"),
    (lambda s, k: s.update({f"{k}.hada_w1_a": torch.ones(32, 2)}),
     r"layers of two kinds on one module \(LoHa and OFT\)"),
])
def test_oft_layers_that_do_not_fit_are_a_clear_error(tmp_path, edit, message):
    _, net = lycoris_net("oft")
    state = save_net(tmp_path / "ok.safetensors", net)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    edit(state, key)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    unet = build_tiny_pipeline().unet
    with pytest.raises(LoraMismatchError, match=message):
        load_lora(tmp_path / "bad.safetensors").patch(unet, "unet", 1.0)


def test_glora_layers_that_do_not_fit_are_a_clear_error(tmp_path):
    _, net = lycoris_net("glora")
    state = save_net(tmp_path / "ok.safetensors", net)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    unet = build_tiny_pipeline().unet
    del state[f"{key}.b2.weight"]
    save_file(state, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraMismatchError, match=r"GLoRA layer without b2.weight"):
        load_lora(tmp_path / "half.safetensors").patch(unet, "unet", 1.0)
    state[f"{key}.b2.weight"] = torch.zeros(4, 16)
    save_file(state, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(LoraMismatchError, match=r"GLoRA .*b2 \(4, 16\) vs weight \(32, 32\)"):
        load_lora(tmp_path / "narrow.safetensors").patch(unet, "unet", 1.0)


def test_glora_with_a_tucker_core_is_its_forward(tmp_path):
    """GLoRA's forward, ``f(x + s·a1(a2(x))) + s·b1(bm(b2(x)))`` (a 3x3 ``bm`` between two
    1x1 convolutions), equals the convolution with the merged weight."""
    import torch.nn.functional as F

    unet = build_tiny_pipeline().unet
    name = "up_blocks.1.resnets.0.conv2"
    conv = dict(unet.named_modules())[name]
    g = torch.Generator().manual_seed(2)
    c_in, c_out, rank = conv.in_channels, conv.out_channels, 3
    parts = {"a1": (c_in, rank), "a2": (rank, c_in), "b1": (c_out, rank), "b2": (rank, c_in)}
    tensors = {k: torch.randn(*shape, 1, 1, generator=g) * 0.2 for k, shape in parts.items()}
    tensors["bm"] = torch.randn(rank, rank, 3, 3, generator=g) * 0.2
    key = "lora_unet_" + name.replace(".", "_")
    save_file({**{f"{key}.{k}.weight": v for k, v in tensors.items()},
               f"{key}.alpha": torch.tensor(1.5)}, str(tmp_path / "glora.safetensors"))
    x = torch.randn(1, c_in, 9, 7, generator=g)
    s = 0.5 * 0.8  # alpha 1.5 / rank 3, at strength 0.8
    with torch.no_grad():
        a = F.conv2d(F.conv2d(x, tensors["a2"]), tensors["a1"])
        b = F.conv2d(F.conv2d(F.conv2d(x, tensors["b2"]), tensors["bm"], padding=1),
                     tensors["b1"])
        forward = conv(x + s * a) + s * b
        lora = load_lora(tmp_path / "glora.safetensors")
        with patched(unet, [lora.patch(unet, "unet", 0.8)]):
            merged = conv(x)
    assert (merged - forward).abs().max() <= 1e-5


def test_training_run_keys_tell_lycoris_patches_apart(tmp_path):
    """A model trained on top of one OFT / GLoRA / LoHa file is not another's (the training
    cache hashed only LoRA's ``down``/``up``: two such files had one key)."""
    from nodes.diffusion.train_common import patches_digest

    unet = build_tiny_pipeline().unet
    digests = set()
    for kind in ("oft", "glora"):
        for seed in (0, 1):
            save_net(tmp_path / f"{kind}{seed}.safetensors", lycoris_net(kind, seed=seed)[1])
            patch = load_lora(tmp_path / f"{kind}{seed}.safetensors").patch(unet, "unet", 1.0)
            digests.add(patches_digest([patch]))
    assert len(digests) == 4
