"""Deep Shrink (PatchModelAddDownscale): the hooks equal ComfyUI's rule written out by
hand over the UNet's blocks, for every block number, before and after the skip, with a
ControlNet's residuals; through the graph it runs, combines and leaves no hook behind."""

from __future__ import annotations

import uuid

import pytest
import torch
from diffusers import UNet2DConditionModel

from nodes.diffusion.deep_shrink import DeepShrink, _State, input_blocks, resize
from nodes.diffusion.freeu import remove_hooks
from tests.graph_nodes import CAPTURED
from tests.hook_count import added_hooks


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=8, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")).eval()


def by_hand(unet, x, t, context, number: int, factor: float, after_skip: bool,
            residuals: list[torch.Tensor] | None = None, mid: torch.Tensor | None = None,
            adapter: list[torch.Tensor] | None = None) -> torch.Tensor:
    """ComfyUI's rule: after input block ``number`` h is shrunk (before or after it is
    kept as a skip); before each up-path ResNet h is resized to its skip's size. A
    ControlNet's residuals go to the skips, a T2I-Adapter's to h after each down block's
    layers (inside cross-attention blocks, after plain ones), each resized to fit."""

    def small(h):
        size = (max(round(h.shape[-2] / factor), 1), max(round(h.shape[-1] / factor), 1))
        return resize(h, size, "bicubic")

    emb = unet.time_embedding(unet.time_proj(t.expand(x.shape[0])).to(x.dtype))
    h = unet.conv_in(x)
    skips, position = [h], 0

    def keep(h, extra=None):
        """h after an input block: the adapter's residual first (where it belongs), then
        the shrink before or after the skip is kept (ComfyUI's order)."""
        nonlocal position
        position += 1
        if extra is not None:
            h = h + resize(extra, tuple(h.shape[-2:]), "bicubic")
        if position == number and not after_skip:
            h = small(h)
        skips.append(h)
        return small(h) if position == number and after_skip else h

    adapter = list(adapter) if adapter is not None else None
    for block in unet.down_blocks:
        crossattn = bool(getattr(block, "attentions", None))
        last = len(block.resnets) - 1
        for j, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            if crossattn:
                h = block.attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
            # a cross-attention block adds it after its last layer; a plain one after
            # the whole block (its downsampler, if any)
            mine = adapter and j == last and (crossattn or not block.downsamplers)
            h = keep(h, adapter.pop(0) if mine else None)
        if block.downsamplers:
            mine = adapter and not crossattn
            h = keep(block.downsamplers[0](h), adapter.pop(0) if mine else None)
    if residuals is not None:
        skips = [s + resize(r, tuple(s.shape[-2:]), "bicubic") for s, r in zip(skips, residuals,
                                                                                strict=True)]
    h = unet.mid_block(h, emb, encoder_hidden_states=context)
    if mid is not None:
        h = h + resize(mid, tuple(h.shape[-2:]), "bicubic")
    for block in unet.up_blocks:
        for j, resnet in enumerate(block.resnets):
            skip = skips.pop()
            h = resnet(torch.cat([resize(h, tuple(skip.shape[-2:]), "bicubic"), skip], 1), emb)
            if getattr(block, "attentions", None):
                h = block.attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
        if block.upsamplers:
            h = block.upsamplers[0](h)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def hooked(unet, x, t, context, number, factor, after_skip, residuals=None, mid=None,
           adapter=None):
    ext = DeepShrink(number, factor, 0.0, 1.0, after_skip)
    state = _State(active=True, down_residuals=residuals, mid_residual=mid,
                   intrablock=None if adapter is None else list(adapter))
    try:
        ext.install(unet, state)
        return unet(x, t, context,
                    down_intrablock_additional_residuals=state.intrablock).sample
    finally:
        remove_hooks(state.handles)


@pytest.mark.parametrize("after_skip", [True, False])
def test_every_block_number_equals_the_rule_by_hand(unet, after_skip):
    torch.manual_seed(1)
    x, context = torch.randn(2, 4, 12, 20), torch.randn(2, 7, 32)
    t = torch.tensor(500.0)
    plain = unet(x, t, context).sample
    assert len(input_blocks(unet)) == 8
    with torch.no_grad():
        for number in range(1, 9):
            ours = hooked(unet, x, t, context, number, 2.0, after_skip)
            reference = by_hand(unet, x, t, context, number, 2.0, after_skip)
            assert ours.shape == plain.shape
            assert torch.allclose(ours, reference, atol=1e-5), number
            assert (ours - plain).abs().max() > 1e-3, number
        # factor 1 changes nothing; the hooks are gone afterwards
        same = hooked(unet, x, t, context, 3, 1.0, after_skip)
        assert torch.allclose(same, plain, atol=1e-6)
    assert added_hooks(unet) == 0


def test_controlnet_residuals_are_resized_to_the_shrunk_skips(unet):
    torch.manual_seed(2)
    x, context = torch.randn(1, 4, 16, 12), torch.randn(1, 7, 32)
    t = torch.tensor(300.0)
    with torch.no_grad():
        # the skips' full sizes, as a ControlNet makes its residuals
        sizes = [(16, 12), (16, 12), (16, 12), (8, 6), (8, 6), (8, 6), (4, 3), (4, 3), (4, 3)]
        channels = [32, 32, 32, 32, 64, 64, 64, 64, 64]
        residuals = [torch.randn(1, c, *s) for c, s in zip(channels, sizes, strict=True)]
        mid = torch.randn(1, 64, 4, 3)
        ours = hooked(unet, x, t, context, 3, 2.0, True, list(residuals), mid)
        reference = by_hand(unet, x, t, context, 3, 2.0, True, residuals, mid)
        assert torch.allclose(ours, reference, atol=1e-5)
        # at full size (factor 1) the hooks add them as the UNet itself would
        unshrunk = hooked(unet, x, t, context, 3, 1.0, True, list(residuals), mid)
        native = unet(x, t, context, down_block_additional_residuals=residuals,
                      mid_block_additional_residual=mid).sample
        assert torch.allclose(unshrunk, native, atol=1e-5)


def test_t2i_adapter_residuals_meet_the_shrunk_hidden_state(unet):
    """One adapter residual per down block, made for the full-size h: with a shrink
    anywhere (even inside a block, before its residual is added) each is resized to the
    h it is added to."""
    torch.manual_seed(3)
    x, context = torch.randn(1, 4, 12, 20), torch.randn(1, 7, 32)
    t = torch.tensor(700.0)
    adapter = [torch.randn(1, 32, 12, 20), torch.randn(1, 64, 6, 10), torch.randn(1, 64, 3, 5)]
    with torch.no_grad():
        native = unet(x, t, context, down_intrablock_additional_residuals=list(adapter)).sample
        assert torch.allclose(hooked(unet, x, t, context, 2, 1.0, True, adapter=adapter),
                              native, atol=1e-5)
        for after_skip in (True, False):
            for number in range(1, 9):
                ours = hooked(unet, x, t, context, number, 2.0, after_skip, adapter=adapter)
                reference = by_hand(unet, x, t, context, number, 2.0, after_skip,
                                    adapter=adapter)
                assert torch.allclose(ours, reference, atol=1e-5), (number, after_skip)


# --- through the graph ----------------------------------------------------------------------

def _graph(shrink: dict | None, *, width: int = 80, height: int = 48, extra: dict | None = None
           ) -> dict:
    key = uuid.uuid4().hex
    model = ["ckpt", 0]
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                            "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "empty": {"class_type": "EmptyLatentImage",
                  "inputs": {"width": width, "height": height, "batch_size": 1}},
    }
    if extra:
        graph.update(extra)
        model = ["freeu", 0] if "freeu" in extra else model
    if shrink is not None:
        graph["shrink"] = {"class_type": "PatchModelAddDownscale",
                           "inputs": {"model": model, **shrink}}
        model = ["shrink", 0]
    graph["ks"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 5, "steps": 4, "cfg": 6.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
        "latent_image": ["empty", 0], "denoise": 1.0}}
    graph["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["ks", 0], "key": key}}
    graph["_key"] = key
    return graph


def _run(session, graph: dict):
    key = graph.pop("_key")
    result = session.run(graph)
    return (CAPTURED.pop(key).samples if result.ok else None), result


SHRINK = {"block_number": 1, "downscale_factor": 2.0, "start_percent": 0.0,
          "end_percent": 0.5, "downscale_after_skip": True, "downscale_method": "bicubic",
          "upscale_method": "bicubic"}


def test_deep_shrink_through_ksampler(session):
    plain, _ = _run(session, _graph(None))
    shrunk, result = _run(session, _graph(SHRINK))
    assert result.ok and torch.isfinite(shrunk).all()
    assert (shrunk - plain).abs().max() > 1e-3
    never, _ = _run(session, _graph({**SHRINK, "start_percent": 1.0, "end_percent": 1.0}))
    assert torch.allclose(never, plain, atol=1e-5)  # no step in range: the model as it is
    freeu = {"freeu": {"class_type": "FreeU", "inputs": {"model": ["ckpt", 0], "b1": 1.2,
                                                         "b2": 1.3, "s1": 0.9, "s2": 0.5}}}
    both, result = _run(session, _graph(SHRINK, extra=freeu))
    assert result.ok and (both - shrunk).abs().max() > 1e-4
    unet = session.run({"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {
        "ckpt_name": "steerflow-tiny"}}, "cap": {"class_type": "TestCapture", "inputs": {
            "value": ["ckpt", 0], "key": "unet"}}})
    assert unet.ok
    model = CAPTURED.pop("unet")
    assert added_hooks(model.unet) == 0


def test_bad_inputs_are_structured_errors(session):
    _, result = _run(session, _graph({**SHRINK, "block_number": 30}))
    assert not result.ok and "block_number 30" in str(result.run.error)
    _, result = _run(session, _graph({**SHRINK, "start_percent": 0.6, "end_percent": 0.2}))
    assert not result.ok and "start_percent" in str(result.run.error)
    with pytest.raises(Exception, match="downscale_factor"):
        session.validate(_graph({**SHRINK, "downscale_factor": 20.0}))


def test_a_factor_below_one_that_cannot_fit_is_refused(session, monkeypatch):
    from nodes.diffusion import vae_codec

    monkeypatch.setattr(vae_codec, "available_bytes", lambda device: 3_000_000)
    _, result = _run(session, _graph({**SHRINK, "downscale_factor": 0.1}))
    assert not result.ok and "downscale_factor 0.1" in str(result.run.error)
    _, result = _run(session, _graph(SHRINK))
    assert result.ok, result.run.error


# --- with the techniques that read attention maps ---------------------------------------------

def _combined(shrink: dict | None, *, excite: bool = False, sag: bool = False,
              width: int = 64, height: int = 64, attn_res: int = 0) -> dict:
    """txt2img on the tiny model (DDIM, 6 steps) with Deep Shrink, Attend-and-Excite as
    the positive prompt and SAG, each optional."""
    text = "a red circle at the top left and a blue square"
    graph = _graph(None, width=width, height=height)
    model: list = ["ckpt", 0]
    if shrink is not None:
        graph["shrink"] = {"class_type": "PatchModelAddDownscale",
                           "inputs": {"model": model, **shrink}}
        model = ["shrink", 0]
    if sag:
        graph["sag"] = {"class_type": "SelfAttentionGuidance",
                        "inputs": {"model": model, "scale": 1.5, "blur_sigma": 2.0}}
        model = ["sag", 0]
    graph["pos"] = ({"class_type": "AttendAndExcite", "inputs": {
        "clip": ["ckpt", 1], "text": text, "words": "circle, square", "attn_res": attn_res,
        "scale_factor": 800.0, "max_iter_to_alter": 4, "thresholds": "0:0.05, 2:0.5"}}
        if excite else {"class_type": "CLIPTextEncode",
                        "inputs": {"text": text, "clip": ["ckpt", 1]}})
    graph["ks"]["inputs"].update(model=model, steps=6, sampler_name="ddim")
    return graph


@pytest.mark.parametrize(("span", "attn_res"), [((0.0, 0.8), 4), ((0.5, 0.9), 4),
                                                ((0.0, 0.8), 8)])
def test_attend_and_excite_excites_while_shrinking(session, span, attn_res):
    """A&E's own pass before each step shrinks as that step's pass does (also where the
    shrink starts after step 0), and its maps at attn_res are found at the shrunk size:
    the mid block's 4x4 maps are 2x2 while shrinking by 3; at 8x8 some of the level's
    layers are shrunk (to 3x3) and some not."""
    shrink = {**SHRINK, "downscale_factor": 3.0, "start_percent": span[0],
              "end_percent": span[1]}
    alone, result = _run(session, _combined(shrink))
    assert result.ok, result.run.error
    both, result = _run(session, _combined(shrink, excite=True, attn_res=attn_res))
    assert result.ok, result.run.error
    assert torch.isfinite(both).all() and (both - alone).abs().max() > 1e-3


def test_a_pass_shrinks_by_its_own_timestep(unet):
    """An extension's own pass (no ``unet_inputs`` before it) shrinks exactly where the
    span holds for its timestep, and the attention store learns the shrunk grids."""
    from nodes.diffusion.attention import AttentionStore

    ext = DeepShrink(1, 2.0, 0.0, 0.5, True)
    store = AttentionStore()
    state = _State(train_timesteps=1000, store=store)
    x, context = torch.randn(1, 4, 12, 20), torch.randn(1, 7, 32)
    try:
        ext.install(unet, state)
        with torch.no_grad():
            for t, shrinks in ((900.0, True), (100.0, False)):
                state.active = not shrinks  # stale, as left by the previous step
                unet(x, torch.tensor(t), context)
                assert state.active is shrinks
    finally:
        remove_hooks(state.handles)
    assert {store.sizes[n] for n in (6 * 10, 3 * 5, 2 * 3)} == {(6, 10), (3, 5), (2, 3)}


def test_sag_reads_its_map_at_the_shrunk_size(session):
    """96x96 (a 12x12 latent) shrunk by 3: the mid block's map is 2x2, a size the
    unshrunk UNet never has."""
    shrink = {**SHRINK, "downscale_factor": 3.0, "end_percent": 0.8}
    alone, result = _run(session, _combined(shrink, width=96, height=96))
    assert result.ok, result.run.error
    both, result = _run(session, _combined(shrink, sag=True, width=96, height=96))
    assert result.ok, result.run.error
    assert torch.isfinite(both).all() and (both - alone).abs().max() > 1e-3


@pytest.mark.parametrize("sag", [False, True])
def test_a_latent_shrunk_too_small_is_a_clear_error(session, sag):
    """32x32 (a 4x4 latent) shrunk by 2 leaves one pixel at the UNet's second level,
    whose group norm has one channel per group: refused before sampling, naming the
    factor and the size (the plain latent runs)."""
    _, result = _run(session, _combined(None, sag=sag, width=32, height=32))
    assert result.ok, result.run.error
    _, result = _run(session, _combined(SHRINK, sag=sag, width=32, height=32))
    assert not result.ok
    message = str(result.run.error)
    assert "downscale_factor 2" in message and "4x4 latent" in message, message
    never = {**SHRINK, "start_percent": 1.0, "end_percent": 1.0}  # never shrinks: runs
    _, result = _run(session, _combined(never, sag=sag, width=32, height=32))
    assert result.ok, result.run.error
