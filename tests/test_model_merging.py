"""Model merging nodes (ComfyUI's) as weight patches, and Repeat Latent Batch."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel

from engine.session import Session
from engine.validation import PromptValidationError
from nodes.diffusion.handles import DiffusionModel, InpaintCondition, Latent, TextEncoder
from nodes.diffusion.lora import LoraPatch, LoraWeight, patched
from nodes.diffusion.model_merging import ModelMergeError, check_same_architecture
from nodes.diffusion.original_layout import save_original_checkpoint
from nodes.diffusion.tiny import UNET_CONFIG, build_tiny_pipeline, save_tiny_model
from nodes.diffusion.train_common import patches_digest
from nodes.model_merging import (
    CLIPMergeAdd,
    CLIPMergeSimple,
    CLIPMergeSubtract,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSD1,
    ModelMergeSDXL,
    ModelMergeSimple,
    ModelMergeSubtract,
    RepeatLatentBatch,
)
from tests.graph_nodes import CAPTURED, registry_with_capture

CTX = None  # the merge nodes and Repeat Latent Batch read nothing from the context


@pytest.fixture(scope="module")
def pipes():
    return build_tiny_pipeline(0), build_tiny_pipeline(1), build_tiny_pipeline(2)


def model(pipe, patches=()) -> DiffusionModel:
    return DiffusionModel(pipe.unet, dict(pipe.scheduler.config), patches=tuple(patches))


def clip(pipe) -> TextEncoder:
    return TextEncoder(pipe.text_encoder, pipe.tokenizer)


def weights(handle: DiffusionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights as the sampler sees them (the handle's patches applied)."""
    with patched(handle.unet, handle.patches):
        return {k: v.detach().clone() for k, v in handle.unet.named_parameters()}


def unet_out(handle: DiffusionModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    text = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad(), patched(handle.unet, handle.patches):
        return handle.unet(x, 500, encoder_hidden_states=text).sample


def text_out(handle: TextEncoder) -> torch.Tensor:
    ids = torch.tensor([[0, 320, 1125, 2, 1, 1]])
    with torch.no_grad(), patched(handle.text_encoder, handle.patches):
        return handle.text_encoder(ids).last_hidden_state


def snapshot(*modules) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def unchanged(before, *modules) -> bool:
    return all(all(torch.equal(v, m.state_dict()[k]) for k, v in b.items())
               for b, m in zip(before, modules, strict=True))


def simple(m1, m2, ratio):
    return ModelMergeSimple(model1=m1, model2=m2, ratio=ratio).execute(CTX)[0]


# --- ModelMergeSimple ------------------------------------------------------------------------

def test_ratio_one_is_model1_and_ratio_zero_model2_exactly(pipes):
    a, b, _ = pipes
    before = snapshot(a.unet, b.unet)
    m1, m2 = model(a), model(b)
    assert simple(m1, m2, 1.0) is m1  # nothing to patch
    merged = simple(m1, m2, 0.0)
    assert torch.equal(unet_out(merged), unet_out(m2))
    assert m1.patches == () and len(merged.patches) == 1
    assert unchanged(before, a.unet, b.unet)  # the base modules are never changed
    assert torch.equal(unet_out(m1), unet_out(model(a)))


def test_ratio_blends_every_weight(pipes):
    a, b, _ = pipes
    w1, w2 = weights(model(a)), weights(model(b))
    got = weights(simple(model(a), model(b), 0.3))
    for name, value in got.items():
        torch.testing.assert_close(value, 0.3 * w1[name] + 0.7 * w2[name], rtol=0, atol=1e-6)


def test_model2s_patches_and_model1s_earlier_patches_are_merged_as_comfyui(pipes):
    """model1's LoRA before the merge is scaled by the ratio; model2 counts with its LoRA."""
    a, b, _ = pipes
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    g = torch.Generator().manual_seed(1)

    def lora(label):
        return LoraPatch(label, 1.0, ((name, LoraWeight(torch.randn(2, 32, generator=g),
                                                        torch.randn(32, 2, generator=g),
                                                        0.5)),))

    l1, l2 = lora("one"), lora("two")
    m1, m2 = model(a, [l1]), model(b, [l2])
    got = weights(simple(m1, m2, 0.25))[name]
    want = 0.25 * weights(m1)[name] + 0.75 * weights(m2)[name]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a LoRA after the merge is added to the merged weight
    after = model(a, [*simple(m1, m2, 0.25).patches, lora("three")])
    assert not torch.equal(weights(after)[name], got)


# --- add, subtract, blocks --------------------------------------------------------------------

def test_subtract_and_add_match_the_hand_computation(pipes):
    a, b, c = pipes
    w1, w2, w3 = weights(model(a)), weights(model(b)), weights(model(c))
    diff = ModelMergeSubtract(model1=model(a), model2=model(b), multiplier=0.5).execute(CTX)[0]
    got = weights(diff)
    for name in w1:
        torch.testing.assert_close(got[name], 0.5 * w1[name] - 0.5 * w2[name],
                                   rtol=0, atol=1e-6)
    # the inpaint example's recipe: model3 + (model1 − model2) · m
    summed = weights(ModelMergeAdd(model1=model(c), model2=diff).execute(CTX)[0])
    for name in w1:
        torch.testing.assert_close(summed[name], w3[name] + 0.5 * (w1[name] - w2[name]),
                                   rtol=0, atol=1e-6)


def test_block_ratios_hit_only_their_block(pipes):
    a, b, _ = pipes
    w1, w2 = weights(model(a)), weights(model(b))
    merged = ModelMergeBlocks(model1=model(a), model2=model(b), input=1.0, middle=0.0,
                              out=1.0).execute(CTX)[0]
    got = weights(merged)
    for name, value in got.items():
        assert torch.equal(value, w2[name] if name.startswith("mid_block.") else w1[name]), name
    got = weights(ModelMergeBlocks(model1=model(a), model2=model(b), input=0.0, middle=1.0,
                                   out=0.5).execute(CTX)[0])
    for name, value in got.items():
        if name.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")):
            torch.testing.assert_close(value, 0.5 * w1[name] + 0.5 * w2[name],
                                       rtol=0, atol=1e-6)
        elif name.startswith("mid_block."):
            assert torch.equal(value, w1[name])
        else:  # conv_in, down blocks and the time embedding take the input ratio
            assert torch.equal(value, w2[name]), name


def test_per_block_ratios_follow_the_original_layout_names(pipes):
    """ModelMergeSD1: a weight takes the ratio of its original (LDM) block, named by the
    longest prefix, e.g. down_blocks.0.resnets.0 is input_blocks.1., conv_in
    input_blocks.0., the up block's upsampler its output block."""
    a, b, _ = pipes
    w1, w2 = weights(model(a)), weights(model(b))
    inputs = {"model1": model(a), "model2": model(b), "time_embed.": 1.0,
              "input_blocks.0.": 0.25, "input_blocks.1.": 0.0, "middle_block.1.": 0.5,
              "output_blocks.2.": 0.75, "out.": 0.0}
    node = ModelMergeSD1.model_construct(**inputs)
    got = weights(node.execute(CTX)[0])
    upsampler = [n for n in got if n.startswith("up_blocks.0.upsamplers.0.")]
    assert upsampler  # in output_blocks.2. with the tiny UNet's one layer per block
    expected = {"conv_in.": 0.25, "down_blocks.0.resnets.0.": 0.0,
                "down_blocks.0.attentions.0.": 0.0, "mid_block.attentions.0.": 0.5,
                "up_blocks.0.resnets.2.": 0.75, "up_blocks.0.upsamplers.0.": 0.75,
                "conv_norm_out.": 0.0, "conv_out.": 0.0, "time_embedding.": 1.0,
                "mid_block.resnets.": 1.0, "up_blocks.1.": 1.0}
    for name, value in got.items():
        ratio = next((r for p, r in expected.items() if name.startswith(p)), None)
        if ratio is None:
            continue
        torch.testing.assert_close(value, ratio * w1[name] + (1 - ratio) * w2[name],
                                   rtol=0, atol=1e-6, msg=name)
    schema = ModelMergeSD1.schema()["input"]["required"]
    assert list(schema)[:4] == ["model1", "model2", "time_embed.", "label_emb."]
    assert len(schema) == 2 + 2 + 12 + 3 + 12 + 1


def test_different_architectures_name_the_first_key(pipes):
    a = pipes[0]
    other = UNet2DConditionModel(**{**UNET_CONFIG, "cross_attention_dim": 48})
    odd = DiffusionModel(other, {})
    first = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    with pytest.raises(ModelMergeError, match=re.escape(
            f"cannot merge these models (both sd1): {first!r} is [32, 32] in model1 but "
            "[32, 48] in model2")):
        simple(model(a), odd, 0.5)
    fewer = UNet2DConditionModel(**{**UNET_CONFIG, "layers_per_block": 1})
    with pytest.raises(ModelMergeError, match=re.escape(
            "'down_blocks.0.attentions.1.norm.weight' is in model1 but not in model2")):
        ModelMergeAdd(model1=model(a), model2=DiffusionModel(fewer, {})).execute(CTX)


def test_the_inpaint_recipe_keeps_the_inpainting_conv_in(pipes, caplog):
    """ComfyUI's example: inpainting model + (fine-tune − base); conv_in (9 vs 4 input
    channels) stays the inpainting model's, every other weight gets the difference."""
    a, b, _ = pipes
    inpaint = model(build_tiny_pipeline(5))
    inpaint = replace(inpaint, unet=UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": 9}))
    w1, w2, wi = weights(model(a)), weights(model(b)), weights(inpaint)
    diff = ModelMergeSubtract(model1=model(a), model2=model(b), multiplier=1.0).execute(CTX)[0]
    with caplog.at_level("WARNING"):
        merged = ModelMergeAdd(model1=inpaint, model2=diff).execute(CTX)[0]
    assert "conv_in has 9 input channels in model1 and 4 in model2" in caplog.text
    got = weights(merged)
    assert torch.equal(got["conv_in.weight"], wi["conv_in.weight"])
    for name in ("conv_in.bias", "mid_block.resnets.0.conv1.weight"):
        torch.testing.assert_close(got[name], wi[name] + (w1[name] - w2[name]),
                                   rtol=0, atol=1e-6)
    # a blend scales model1's conv_in by its share and adds nothing, as ComfyUI
    blend = weights(ModelMergeSimple(model1=inpaint, model2=model(a), ratio=0.5).execute(CTX)[0])
    assert torch.equal(blend["conv_in.weight"], 0.5 * wi["conv_in.weight"])
    # only a conv_in of other input channels is let through, not a missing one
    with pytest.raises(ModelMergeError, match=re.escape("'conv_in.weight' is in model1")):
        check_same_architecture(inpaint.unet, torch.nn.Linear(1, 1), "model", True)

def test_the_digest_of_a_merge_tells_its_models_apart(pipes):
    """Training run keys (patches_digest) change with the merged model and the factors."""
    a, b, c = pipes
    digests = {patches_digest(simple(model(a), model(x), r).patches)
               for x in (b, c) for r in (0.0, 0.5)}
    add = ModelMergeAdd(model1=model(a), model2=model(b)).execute(CTX)[0]
    digests.add(patches_digest(add.patches))
    assert len(digests) == 5


# --- CLIP ------------------------------------------------------------------------------------

def test_clip_merges(pipes):
    a, b, _ = pipes
    before = snapshot(a.text_encoder, b.text_encoder)
    c1, c2 = clip(a), clip(b)
    assert CLIPMergeSimple(clip1=c1, clip2=c2, ratio=1.0).execute(CTX)[0] is c1
    zero = CLIPMergeSimple(clip1=c1, clip2=c2, ratio=0.0).execute(CTX)[0]
    assert torch.equal(text_out(zero), text_out(c2))
    assert not torch.equal(text_out(c1), text_out(c2))
    name = next(n for n, _ in a.text_encoder.named_parameters() if n.endswith("q_proj.weight"))
    w1, w2 = dict(a.text_encoder.named_parameters())[name], dict(
        b.text_encoder.named_parameters())[name]
    for node, want in ((CLIPMergeSubtract(clip1=c1, clip2=c2, multiplier=2.0), 2 * (w1 - w2)),
                       (CLIPMergeAdd(clip1=c1, clip2=c2), w1 + w2)):
        handle = node.execute(CTX)[0]
        with patched(handle.text_encoder, handle.patches):
            got = dict(handle.text_encoder.named_parameters())[name].detach().clone()
        torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-6)
    assert unchanged(before, a.text_encoder, b.text_encoder)


# --- RepeatLatentBatch ------------------------------------------------------------------------

def repeat(latent: Latent, amount: int) -> Latent:
    return RepeatLatentBatch(samples=latent, amount=amount).execute(CTX)[0]


def test_repeat_latent_batch_repeats_the_batch_and_its_masks():
    samples = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 4, 2, 2)
    out = repeat(Latent(samples), 3)
    assert out.samples.shape == (6, 4, 2, 2)
    assert out.samples[:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    one = torch.ones(1, 1, 2, 2)
    assert repeat(Latent(samples, noise_mask=one), 3).noise_mask is one  # broadcasts
    masks = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    got = repeat(Latent(samples, noise_mask=masks), 2).noise_mask
    assert got[:, 0, 0, 0].tolist() == [0, 1, 0, 1]
    four = samples.repeat(2, 1, 1, 1)  # a mask batch shorter than the samples' is cycled
    assert repeat(Latent(four, noise_mask=masks), 2).noise_mask.shape[0] == 8
    inpaint = InpaintCondition(masks, torch.zeros(2, 4, 2, 2))
    out = repeat(Latent(samples, inpaint=inpaint, assumed_downscale=8), 2)
    assert out.inpaint.mask.shape[0] == out.inpaint.masked_latents.shape[0] == 4
    assert out.assumed_downscale == 8
    latent = Latent(samples)
    assert repeat(latent, 1) is latent


def test_repeat_latent_batch_bounds():
    spec = RepeatLatentBatch.INPUT_SPECS["amount"]
    assert (spec.default, spec.min, spec.max) == (1, 1, 64)
    assert [s.name for s in ModelMergeBlocks.INPUT_SPECS.values()] == [
        "model1", "model2", "input", "middle", "out"]


# --- through the graph -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph_session(tmp_path_factory) -> Session:
    models = tmp_path_factory.mktemp("merge-models")
    save_tiny_model(models / "checkpoints")
    other = build_tiny_pipeline(1)
    save_original_checkpoint(models / "checkpoints" / "other.safetensors", unet=other.unet,
                             vae=other.vae, text_encoder=other.text_encoder,
                             scheduler_config=dict(other.scheduler.config), family="sd1")
    return Session(tmp_path_factory.mktemp("merge-home"), models_dir=models, device="cpu",
                   registry=registry_with_capture())


def txt2img(session: Session, model_link: list, extra: dict | None = None,
            batch: int = 1) -> torch.Tensor:
    prompt = {
        "a": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "steerflow-tiny.safetensors"}},
        "b": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle",
                                                           "clip": ["a", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["a", 1]}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "rep": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["lat", 0],
                                                              "amount": batch}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": model_link, "seed": 3, "steps": 2, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["rep", 0], "denoise": 1.0}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["k", 0],
                                                        "key": uuid.uuid4().hex}},
        **(extra or {}),
    }
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["cap"]["inputs"]["key"]).samples


@pytest.mark.slow  # six tiny sampling runs: ~8 s on a busy machine
def test_merges_sample_through_the_graph(graph_session):
    def merged(ratio):
        return {"m": {"class_type": "ModelMergeSimple",
                      "inputs": {"model1": ["a", 0], "model2": ["b", 0], "ratio": ratio}}}

    plain_a, plain_b = txt2img(graph_session, ["a", 0]), txt2img(graph_session, ["b", 0])
    assert not torch.equal(plain_a, plain_b)
    assert torch.equal(txt2img(graph_session, ["m", 0], merged(1.0)), plain_a)
    assert torch.equal(txt2img(graph_session, ["m", 0], merged(0.0)), plain_b)
    half = txt2img(graph_session, ["m", 0], merged(0.5))
    assert not torch.equal(half, plain_a) and not torch.equal(half, plain_b)
    assert torch.equal(txt2img(graph_session, ["a", 0]), plain_a)  # cached model unchanged
    twice = txt2img(graph_session, ["a", 0], batch=2)
    assert twice.shape[0] == 2



def test_per_block_merge_runs_from_a_comfyui_prompt(models_dir, tmp_path):
    """Dotted input names through validation and the executor (ComfyUI's SDXL node names
    its numbered blocks without the trailing dot); a ratio out of range is a validation
    error on that input."""
    session = Session(tmp_path, models_dir=models_dir, device="cpu",
                      registry=registry_with_capture())
    key = uuid.uuid4().hex
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "add": {"class_type": "ModelMergeAdd",
                "inputs": {"model1": ["ckpt", 0], "model2": ["ckpt", 0]}},
        "m": {"class_type": "ModelMergeSDXL", "inputs": {
            "model1": ["ckpt", 0], "model2": ["add", 0], "input_blocks.1": 0.0,
            **{k: 1.0 for k in ModelMergeSDXL.BLOCKS if k != "input_blocks.1"}}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["m", 0], "key": key}}}
    assert {"input_blocks.8", "middle_block.2", "output_blocks.0", "time_embed.", "out."} \
        <= set(ModelMergeSDXL.BLOCKS) and "input_blocks.0." not in ModelMergeSDXL.BLOCKS
    result = session.run(prompt)
    assert result.ok, result.run.error
    merged_model = CAPTURED.pop(key)
    merged = weights(merged_model)
    plain = {k: v.detach() for k, v in merged_model.unet.named_parameters()}
    for name, value in merged.items():  # input_blocks.1 is model2's: twice the weights
        factor = 2.0 if name.startswith(("down_blocks.0.resnets.0.",
                                         "down_blocks.0.attentions.0.")) else 1.0
        torch.testing.assert_close(value, factor * plain[name], msg=name)
    prompt["m"]["inputs"]["out."] = 1.5
    with pytest.raises(PromptValidationError, match=r"out\."):
        session.validate(prompt)
