"""DoRA files (weight-decomposed LoRA): PEFT's ``lora_magnitude_vector`` and kohya's
``dora_scale``, against diffusers + PEFT and against the formula written out."""

from __future__ import annotations

import json

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

UNET_TARGETS = ["to_q", "to_v", "to_out.0", "proj_in", "conv1", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "fc1"]


def _dora(root: torch.nn.Module, targets: list[str], seed: int) -> tuple[dict, dict]:
    """A random PEFT DoRA on ``root``: its state dict (diffusers' names) and config."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=2, target_modules=targets, use_dora=True,
                        init_lora_weights=False)
    root.add_adapter(config)
    state = get_peft_model_state_dict(root)
    for key, value in state.items():  # lengths that differ from the weights' own
        if key.endswith("lora_magnitude_vector"):
            value.mul_(1 + 0.3 * torch.randn_like(value))
        elif key.endswith("lora_B.weight"):
            value.mul_(3)
    return {k: v.detach().clone() for k, v in state.items()}, config.to_dict()


@pytest.fixture(scope="module")
def dora_files(models_dir):
    """A UNet DoRA saved by diffusers (PEFT keys and metadata). diffusers 0.42 cannot load
    a text encoder's DoRA back (its magnitude keys miss their ``.weight``), so the text
    encoder's is checked against PEFT's own forward below."""
    from diffusers import StableDiffusionPipeline

    pytest.importorskip("peft")
    folder = models_dir / "loras"
    folder.mkdir(exist_ok=True)
    pipe = build_tiny_pipeline()
    unet, unet_config = _dora(pipe.unet, UNET_TARGETS, 1)
    StableDiffusionPipeline.save_lora_weights(
        folder, weight_name="dora_peft.safetensors", unet_lora_layers=unet,
        unet_lora_adapter_metadata=unet_config)
    return folder


@pytest.fixture(scope="module")
def session(models_dir, dora_files, tmp_path_factory):
    return Session(tmp_path_factory.mktemp("home"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture())


def _sized(prompt: dict, height: int, width: int) -> dict:
    prompt["5"]["inputs"].update(height=height, width=width)
    return prompt


@pytest.mark.parametrize(("strength", "height", "width"), [(1.0, 64, 64), (0.6, 48, 80)])
def test_peft_dora_matches_diffusers(session, tiny_model_paths, models_dir, strength,
                                     height, width):
    ours = run_image(session, _sized(lora_prompt(("dora_peft.safetensors", strength,
                                                  strength)), height, width))
    base = run_image(session, _sized(lora_prompt(), height, width))
    pipe = euler_pipeline(tiny_model_paths)
    pipe.load_lora_weights(models_dir / "loras", weight_name="dora_peft.safetensors",
                           adapter_name="dora")
    pipe.set_adapters(["dora"], adapter_weights=[strength])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
               guidance_scale=CFG, height=height, width=width, output_type="np",
               generator=torch.Generator("cpu").manual_seed(SEED)).images
    assert np.abs(ours - base).max() > 1e-2  # the DoRA does change the image
    assert np.abs(ours - ref).max() <= 1e-4


def _kohya_dora(path, weight: torch.Tensor, module: str, per_output: bool) -> tuple:
    g = torch.Generator().manual_seed(5)
    down = torch.randn(2, *weight.shape[1:], generator=g) / weight[0].numel() ** 0.5
    ones = (1, 1) if weight.dim() == 4 else ()
    up = torch.randn(weight.shape[0], 2, *ones, generator=g)
    # LyCORIS's shapes: [out, 1(, 1, 1)], or [1, in(, 1, 1)] with wd_on_out off
    shape = (weight.shape[0], *(1,) * (weight.dim() - 1)) if per_output \
        else (1, weight.shape[1], *(1,) * (weight.dim() - 2))
    scale = torch.rand(shape, generator=g) + 0.5
    save_file({f"lora_unet_{module.replace('.', '_')}.lora_down.weight": down,
               f"lora_unet_{module.replace('.', '_')}.lora_up.weight": up,
               f"lora_unet_{module.replace('.', '_')}.alpha": torch.tensor(1.0),
               f"lora_unet_{module.replace('.', '_')}.dora_scale": scale}, path)
    return down, up, scale


@pytest.mark.parametrize("per_output", [True, False])
@pytest.mark.parametrize("module", ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                                    "down_blocks.0.resnets.0.conv1"])
def test_kohya_dora_scale_on_either_axis_is_the_papers_formula(tmp_path, module, per_output):
    """``W' = m · (W + s·ΔW) / ‖W + s·ΔW‖``, the norm per output row for ``[out, 1]``
    scales and per input channel (over the outputs and the kernel) for ``[1, in]`` ones
    (kohya's ``wd_on_out`` off)."""
    unet = build_tiny_pipeline().unet
    weight = dict(unet.named_parameters())[f"{module}.weight"]
    before = weight.detach().clone()
    down, up, scale = _kohya_dora(tmp_path / "k.safetensors", before, module, per_output)
    patch = load_lora(tmp_path / "k.safetensors").patch(unet, "unet", 0.7)
    direction = before + 0.7 * 0.5 * (up.flatten(1) @ down.flatten(1)).reshape(before.shape)
    if per_output:
        norm = direction.flatten(1).norm(dim=1).reshape(scale.shape)
    else:  # written out: each input channel's slice W[:, i] as one vector
        norm = torch.stack([direction[:, i].norm() for i in range(direction.shape[1])])
        norm = norm.reshape(scale.shape)
    expected = scale * direction / norm
    with patched(unet, [patch]):
        assert torch.allclose(weight.detach(), expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(weight.detach(), before)  # restored exactly
    with patched(unet, [type(patch)(patch.name, 0.0, patch.weights)]):
        assert torch.equal(weight.detach(), before)  # strength 0: switched off


def test_a_dora_magnitude_that_does_not_fit_is_a_clear_error(tmp_path):
    unet = build_tiny_pipeline().unet
    module = "down_blocks.0.resnets.0.conv1"
    weight = dict(unet.named_parameters())[f"{module}.weight"].detach()
    _kohya_dora(tmp_path / "k.safetensors", weight, module, True)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "k.safetensors")
    key = f"lora_unet_{module.replace('.', '_')}.dora_scale"
    state[key] = torch.ones(7, 1)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(LoraMismatchError, match=r"DoRA magnitude \(7, 1\)"):
        load_lora(tmp_path / "bad.safetensors").patch(unet, "unet", 1.0)
    state.pop(f"lora_unet_{module.replace('.', '_')}.lora_up.weight")
    save_file(state, tmp_path / "half.safetensors")
    with pytest.raises(LoraMismatchError, match="lack their down or up"):
        load_lora(tmp_path / "half.safetensors").patch(unet, "unet", 1.0)


def test_text_encoder_dora_matches_peft(tmp_path):
    """The text encoder's DoRA, in diffusers' file layout, against PEFT's own forward
    at an adapter weight of 0.8."""
    pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    ours_root = build_tiny_pipeline().text_encoder
    peft_root = build_tiny_pipeline().text_encoder
    state, config = _dora(peft_root, TEXT_TARGETS, 2)
    for module in peft_root.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", 0.8)
    meta = {f"text_encoder.{k}": v for k, v in config.items()}
    save_file({f"text_encoder.{k}": v.contiguous() for k, v in state.items()},
              tmp_path / "te.safetensors",
              metadata={"lora_adapter_metadata": json.dumps(meta, default=list)})
    patch = load_lora(tmp_path / "te.safetensors").patch(ours_root, "text_encoder", 0.8)
    ids = torch.tensor([[49406, 320, 736, 2866, 49407] + [49407] * 3])
    with torch.no_grad():
        ref = peft_root(ids).last_hidden_state
        base = ours_root(ids).last_hidden_state
        with patched(ours_root, [patch]):
            ours = ours_root(ids).last_hidden_state
    assert (ours - base).abs().max() > 1e-2
    assert (ours - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_the_bypass_loader_draws_a_dora_as_the_loader_does(session, strength):
    """Load LoRA (Bypass) adds a DoRA's change beside each layer: the merged DoRA's at the
    same strength (its change is not proportional to the strength: scaling the change at 1
    was 8/255 off at 0.6, 40% of the DoRA's whole effect; the fault drill)."""
    merged = run_image(session, lora_prompt(("dora_peft.safetensors", strength, 1.0)))
    prompt = lora_prompt(("dora_peft.safetensors", strength, 1.0))
    prompt["20"]["class_type"] = "LoraLoaderBypass"
    bypass = run_image(session, prompt)
    assert np.abs(bypass - merged).max() <= 1e-4
