"""LyCORIS LoRA files (LoHa, LoKr, LoCon with a Tucker core) through Load LoRA: the same
updates as PEFT's LoHa / LoKr layers (diffusers cannot load these files), weight by
weight and image by image; LoCon's Tucker core against its three stacked convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nodes.diffusion.tiny import build_tiny_pipeline
from tests.test_lora import (  # noqa: F401
    euler_pipeline,
    lora_prompt,
    loras,
    pipeline_image,
    run_image,
    session,
)

peft = pytest.importorskip("peft")

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]
CONFIGS = {
    # the convolutions with Tucker cores (use_effective_conv2d), as LyCORIS' --use_tucker
    "loha": lambda: peft.LoHaConfig(r=4, alpha=8, target_modules=TARGETS,
                                    use_effective_conv2d=True, init_weights=False),
    "lokr": lambda: peft.LoKrConfig(r=2, alpha=4, target_modules=TARGETS, decompose_both=True,
                                    use_effective_conv2d=True, init_weights=False),
}


SCALES = {"loha": 1.6, "lokr": 0.35}  # LoHa's update is a product of two products


def peft_unet(kind: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny UNet with a random PEFT adapter of ``kind``, and the adapter's tensors."""
    unet = build_tiny_pipeline().unet
    torch.manual_seed(seed)
    unet = peft.inject_adapter_in_model(CONFIGS[kind](), unet)
    state = peft.get_peft_model_state_dict(unet)
    with torch.no_grad():  # a visible change, small enough that the images stay images
        for tensor in state.values():
            tensor.mul_(SCALES[kind])
        peft.set_peft_model_state_dict(unet, state)
    return unet, {k: v.detach().clone() for k, v in state.items()}


def save_lycoris(path, state: dict[str, torch.Tensor], alpha: float) -> None:
    """kohya / LyCORIS naming: ``lora_unet_<module with _>.hada_w1_a`` ... and ``.alpha``."""
    out = {}
    for key, tensor in state.items():
        module, _, part = key.rpartition(".")
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.{part}"] = tensor.contiguous()
        out[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(out, str(path))


@pytest.fixture(scope="module")
def lycoris_files(loras):  # noqa: F811
    for kind, alpha in (("loha", 8.0), ("lokr", 4.0)):
        save_lycoris(loras / f"{kind}.safetensors", peft_unet(kind)[1], alpha)
    return loras


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_the_patched_weights_are_pefts_merged_ones(lycoris_files, kind):
    from nodes.diffusion.lora import load_lora, patched

    reference, _ = peft_unet(kind)
    merged = {}
    for name, module in reference.named_modules():
        if hasattr(module, "get_delta_weight"):
            base = module.get_base_layer().weight.detach()
            merged[f"{name}.weight"] = (base + 0.6 * module.get_delta_weight("default")).detach()
    ours = build_tiny_pipeline().unet
    lora = load_lora(lycoris_files / f"{kind}.safetensors")
    with patched(ours, [lora.patch(ours, "unet", 0.6)]):
        weights = dict(ours.named_parameters())
        worst = max(float((weights[k].detach() - v).abs().max()) for k, v in merged.items())
    assert len(merged) == 66 and worst <= 1e-6, worst


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_load_lora_draws_what_diffusers_draws_with_the_peft_adapter_merged(
        session, lycoris_files, tiny_model_paths, kind):  # noqa: F811
    ours = run_image(session, lora_prompt((f"{kind}.safetensors", 1.0, 1.0)))
    base = run_image(session, lora_prompt())
    unet = peft_unet(kind)[0]
    for module in unet.modules():  # merged, as Load LoRA applies it (and ComfyUI)
        if hasattr(module, "get_delta_weight"):
            module.merge()
    pipe = euler_pipeline(tiny_model_paths)
    pipe.unet = unet
    ref = pipeline_image(pipe)
    assert np.isfinite(ours).all() and np.abs(ours - base).max() > 1e-2
    assert np.abs(ours - ref).max() <= 1e-4


def test_locon_with_a_tucker_core_is_its_three_convolutions(tmp_path):
    """``lora_down`` (1x1) → ``lora_mid`` (3x3) → ``lora_up`` (1x1), as LyCORIS runs them."""
    import torch.nn.functional as F

    from nodes.diffusion.lora import load_lora, patched

    unet = build_tiny_pipeline().unet
    name = "down_blocks.0.resnets.0.conv1"
    conv = dict(unet.named_modules())[name]
    g = torch.Generator().manual_seed(1)
    down = torch.randn(3, conv.in_channels, 1, 1, generator=g) * 0.2
    mid = torch.randn(3, 3, 3, 3, generator=g) * 0.2
    up = torch.randn(conv.out_channels, 3, 1, 1, generator=g) * 0.2
    key = "lora_unet_" + name.replace(".", "_")
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_mid.weight": mid,
               f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(1.5)},
              str(tmp_path / "tucker.safetensors"))
    x = torch.randn(1, conv.in_channels, 9, 7, generator=g)
    with torch.no_grad():
        base = conv(x)
        stacked = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
        lora = load_lora(tmp_path / "tucker.safetensors")
        with patched(unet, [lora.patch(unet, "unet", 1.0)]):
            patched_out = conv(x)
    assert (patched_out - (base + 0.5 * stacked)).abs().max() <= 1e-5  # alpha 1.5 / rank 3


def test_lycoris_layers_that_do_not_fit_are_a_clear_error(tmp_path, session):  # noqa: F811
    from nodes.diffusion.lora import LoraMismatchError, load_lora

    unet = build_tiny_pipeline().unet
    _, state = peft_unet("loha")
    key = next(k for k in state if k.endswith("attn1.to_q.hada_w1_a"))
    state[key] = state[key][:16]  # 16 rows for a 32-row weight
    save_lycoris(tmp_path / "bad.safetensors", state, 8.0)
    with pytest.raises(LoraMismatchError, match=r"1 of 66 LyCORIS layers do not fit .*to_q"):
        load_lora(tmp_path / "bad.safetensors").patch(unet, "unet", 1.0)
    del state[key]
    save_lycoris(tmp_path / "half.safetensors", state, 8.0)
    with pytest.raises(LoraMismatchError, match="LoHa layer without hada_w1_a"):
        load_lora(tmp_path / "half.safetensors").patch(unet, "unet", 1.0)
    # (OFT, BOFT and GLoRA load: tests/test_lycoris_oft.py; a malformed one is told)
    save_file({f"{key.rpartition('.')[0]}.oft_blocks": torch.zeros(2)},
              str(tmp_path / "oft.safetensors"))
    with pytest.raises(LoraMismatchError, match=r"oft_blocks \(2,\) are not square blocks"):
        load_lora(tmp_path / "oft.safetensors").patch(unet, "unet", 1.0)


def test_malformed_lycoris_files_are_clear_errors(tmp_path):
    """The fuzz drill's cases: each was an IndexError, a RuntimeError, a layer dropped in
    silence or an infinite weight found only at VAE Decode."""
    from nodes.diffusion.lora import LoraMismatchError, load_lora, patched

    unet = build_tiny_pipeline().unet
    _, state = peft_unet("loha")
    key = next(k for k in state if k.endswith("attn1.to_q.hada_w1_a"))
    module = key.rpartition(".")[0]

    def refused(name: str, tensors: dict, match: str, alpha: float = 8.0) -> None:
        save_lycoris(tmp_path / name, tensors, alpha)
        with pytest.raises(LoraMismatchError, match=match):
            lora = load_lora(tmp_path / name)
            with patched(unet, [lora.patch(unet, "unet", 1.0)]):
                pass

    refused("rank0.safetensors", {**state, key: state[key][:, :0]}, "tensors are empty")
    conv = next(k for k in state if k.endswith("conv1.hada_t1"))
    refused("one_core.safetensors", {k: v for k, v in state.items()
                                     if k != conv.replace("_t1", "_t2")}, "one Tucker core")
    _, lokr = peft_unet("lokr")
    mixed = {**state, **{k: v for k, v in lokr.items() if k.startswith(module + ".")}}
    refused("mixed.safetensors", mixed, r"two kinds on one module \(LoHa and LoKr\)")
    refused("huge.safetensors", {k: v * 1e21 if k.startswith(module) else v
                                 for k, v in state.items()}, "infinite or NaN")
    save_lycoris(tmp_path / "alpha2.safetensors", state, 8.0)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "alpha2.safetensors"))
    tensors["lora_unet_" + module.replace(".", "_") + ".alpha"] = torch.tensor([1.0, 2.0])
    save_file(tensors, str(tmp_path / "alpha2.safetensors"))
    with pytest.raises(LoraMismatchError, match="holds 2 values; an alpha is one number"):
        load_lora(tmp_path / "alpha2.safetensors")
    for name, param in unet.named_parameters():  # every refusal left the weights as they were
        assert torch.isfinite(param).all(), name
