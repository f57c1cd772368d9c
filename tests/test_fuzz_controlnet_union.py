"""Fuzz-style cases for SetUnionControlNetType and the union ControlNet extension: every
choice on every kind of CONTROL_NET (union, plain SDXL ControlNet, T2I-Adapter) gives a
handle or a clear ValueError, and several images need a union with as many types."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodes.diffusion.controlnet_union import UNION_CHOICES, UNION_TYPES
from nodes.diffusion.tiny_controlnet_union import TINY_UNION_NAME, TINY_UNION_TYPES

UNION = TINY_UNION_NAME
PLAIN = "steerflow-tiny-sdxl-controlnet"
ADAPTER = "steerflow-tiny-sdxl-adapter"


@pytest.fixture(scope="module")
def control_dir(tmp_path_factory) -> Path:
    from nodes.diffusion.tiny_controlnet_union import save_tiny_union
    from nodes.diffusion.tiny_sdxl import save_tiny_sdxl_control

    folder = tmp_path_factory.mktemp("union_fuzz")
    save_tiny_sdxl_control(folder)
    save_tiny_union(folder)
    return folder


@pytest.fixture(scope="module")
def handles(control_dir):
    from nodes.diffusion.controlnet import ControlNet
    from nodes.diffusion.controlnet_loading import load_control_model
    from nodes.diffusion.t2i_adapter import Adapter

    folder = control_dir
    return {"union": ControlNet(load_control_model(folder / UNION), UNION),
            "plain": ControlNet(load_control_model(folder / PLAIN), PLAIN),
            "adapter": Adapter(load_control_model(folder / ADAPTER), ADAPTER)}


@pytest.mark.parametrize("kind", UNION_CHOICES)
def test_every_choice_on_every_control_net(handles, kind):
    from nodes.controlnet import SetUnionControlNetType

    union = handles["union"]
    if kind in UNION_TYPES and UNION_TYPES[kind] >= TINY_UNION_TYPES:
        with pytest.raises(ValueError, match=r"not one .* was trained with"):
            SetUnionControlNetType(control_net=union, type=kind).execute(None)
    else:
        (out,) = SetUnionControlNetType(control_net=union, type=kind).execute(None)
        assert out.model is union.model and union.control_types == ()
        assert out.control_types == (() if kind == "auto" else (UNION_TYPES[kind],))
    for other in ("plain", "adapter"):
        (same,) = SetUnionControlNetType(control_net=handles[other], type=kind).execute(None)
        assert same is handles[other]


def test_several_images_need_a_union_with_as_many_types(handles):
    from dataclasses import replace

    from nodes.diffusion.controlnet import ControlNetResiduals

    image = torch.rand(1, 64, 96, 3)
    with pytest.raises(ValueError, match="2 control images need a union"):
        ControlNetResiduals(handles["plain"], (image, image))
    with pytest.raises(ValueError, match="2 control images need a union"):
        ControlNetResiduals(replace(handles["union"], control_types=(1,)), (image, image))
    ControlNetResiduals(replace(handles["union"], control_types=(1, 3)), (image, image))


def test_call_arguments_and_type_names_are_checked(handles):
    from nodes.diffusion.controlnet_union import check_type, union_call_kwargs

    net = handles["union"].model
    image = torch.rand(2, 3, 64, 96)
    with pytest.raises(ValueError, match="out of range"):
        union_call_kwargs(net, (TINY_UNION_TYPES,), [image], 1.0, 2)
    with pytest.raises(ValueError, match=r"needs 2 control image\(s\), got 1"):
        union_call_kwargs(net, (0, 1), [image], 1.0, 2)
    with pytest.raises(ValueError, match="not a union ControlNet type"):
        check_type(net, "pose", "x")
    args = union_call_kwargs(net, (0, 2, 5), [image] * 3, 0.5, 4)
    assert args["control_type"].shape == (4, TINY_UNION_TYPES)
    assert args["control_type"][0].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert args["control_type_idx"] == [0, 2, 5] and args["conditioning_scale"] == [0.5] * 3
    auto = union_call_kwargs(net, (), [image], 1.0, 1)
    assert not auto["control_type"].any() and auto["control_type_idx"] == [0]
