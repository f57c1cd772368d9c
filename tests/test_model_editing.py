"""TIME model editing equals diffusers' StableDiffusionModelEditingPipeline.edit_model.

The installed pipeline finds its layers by the class name ``CrossAttention`` (gone
from diffusers; it now finds none) and by SD 1.x's width 768, so ``editing_pipeline``
hands it the tiny UNet's cross-attention layers the way its ``__init__`` would have:
every ``attn2`` of the down, up and mid blocks, ``to_v`` then (``with_to_k``) ``to_k``.
Everything else (sentences, augmentations, alignment, solve, sampling) is the pipeline's.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import replace

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_model_editing import (  # noqa: E501
    AUGS_CONST,
    StableDiffusionModelEditingPipeline,
)

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.handles import DiffusionModel, TextEncoder
from nodes.diffusion.lora import LoraPatch, LoraWeight, patched
from nodes.diffusion.model_editing import TimeEdit, align_tokens, time_edit
from nodes.diffusion.schedulers import SAMPLERS
from tests.graph_nodes import (
    CAPTURED,
    reference_pipeline,
    registry_with_capture,
    run_error,
    run_graph,
)

PROMPT = "a red circle at the top left"
NEGATIVE = "blurry"
STEPS = 6
EDITS = [("a circle", "a blue circle"), ("A circle", "A large blue circle"),
         ("an apple", "a green apple")]


def editing_pipeline(folder, with_to_k: bool = True, with_augs=AUGS_CONST):
    pipe = reference_pipeline(StableDiffusionModelEditingPipeline, folder)
    hidden = pipe.text_encoder.config.hidden_size
    layers = [m for name, m in pipe.unet.named_modules()
              if name.startswith(("down_blocks.", "up_blocks.", "mid_block."))
              and getattr(m, "is_cross_attention", False) and m.to_v.in_features == hidden]
    assert len(layers) == 6
    pipe.with_to_k, pipe.with_augs = with_to_k, list(with_augs)
    pipe.ca_clip_layers = layers
    pipe.projection_matrices = [m.to_v for m in layers] + (
        [m.to_k for m in layers] if with_to_k else [])
    pipe.og_matrices = [copy.deepcopy(m) for m in pipe.projection_matrices]
    return pipe


@pytest.fixture(scope="module")
def pipe(tiny_model_paths):
    return editing_pipeline(tiny_model_paths["diffusers"])


def handles(path):
    from nodes.diffusion.loading import load_components

    c = load_components(path)
    return DiffusionModel(c.unet, c.scheduler_config), TextEncoder(c.text_encoder, c.tokenizer)


def edited_weights(model: DiffusionModel) -> dict[str, torch.Tensor]:
    with patched(model.unet, model.patches):
        return {k: v.clone() for k, v in model.unet.state_dict().items()}


def max_weight_diff(ours: dict[str, torch.Tensor], unet) -> float:
    return max((ours[k] - v).abs().max().item() for k, v in unet.state_dict().items())


# --- weights ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["diffusers", "single_file"])
@pytest.mark.parametrize(("source", "destination"), EDITS)
@pytest.mark.parametrize(("lamb", "with_to_k", "augs"), [(0.1, True, AUGS_CONST),
                                                         (1.0, False, ()),
                                                         (0.02, True, ("A drawing of ",))])
def test_weights_match_edit_model(tiny_model_paths, fmt, source, destination, lamb,
                                  with_to_k, augs):
    pipe = editing_pipeline(tiny_model_paths["diffusers"], with_to_k, augs)
    model, clip = handles(tiny_model_paths[fmt])
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    ours = time_edit(model, clip, source, destination, lamb=lamb, with_to_k=with_to_k,
                     augmentations=augs)
    assert all(torch.equal(base[k], v) for k, v in model.unet.state_dict().items())
    pipe.edit_model(source, destination, lamb=lamb)
    weights = edited_weights(ours)
    assert max_weight_diff(weights, pipe.unet) <= 1e-5
    changed = {k for k in base if not torch.equal(base[k], weights[k])}
    assert len(changed) == (12 if with_to_k else 6)
    assert all(".attn2.to_v." in k or ".attn2.to_k." in k for k in changed)


def test_restart_params_and_accumulated_edits(pipe, tiny_model_paths):
    model, clip = handles(tiny_model_paths["diffusers"])
    first = time_edit(model, clip, "a circle", "a blue circle")
    # restart (the default): the first edit is dropped, as the pipeline restores its weights
    again = time_edit(first, clip, "a square", "a green square")
    assert sum(isinstance(p, TimeEdit) for p in again.patches) == 1
    pipe.edit_model("a circle", "a blue circle")
    pipe.edit_model("a square", "a green square")
    assert max_weight_diff(edited_weights(again), pipe.unet) <= 1e-5
    stacked = time_edit(first, clip, "a square", "a green square", restart_params=False)
    assert len(stacked.patches) == 2
    pipe.edit_model("a circle", "a blue circle")
    pipe.edit_model("a square", "a green square", restart_params=False)
    assert max_weight_diff(edited_weights(stacked), pipe.unet) <= 1e-5


def test_edits_a_lora_patched_model_as_if_merged(tiny_model_paths):
    """W is the model with its patches: editing a LoRA'd handle equals editing the merged
    weights, and the LoRA stays on the handle."""
    model, clip = handles(tiny_model_paths["diffusers"])
    gen = torch.Generator().manual_seed(0)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    weight = dict(model.unet.named_parameters())[name]
    lora = LoraPatch("test", 0.7, ((name, LoraWeight(torch.randn(2, weight.shape[1], generator=gen),
                                                     torch.randn(weight.shape[0], 2, generator=gen),
                                                     0.5)),))
    ours = time_edit(replace(model, patches=(lora,)), clip, "a circle", "a blue circle")
    assert ours.patches[0] is lora
    merged_model, _ = handles(tiny_model_paths["diffusers"])
    with torch.no_grad():
        dict(merged_model.unet.named_parameters())[name] += 0.7 * lora.weights[0][1].delta(
            weight.shape, weight.device)
    reference = time_edit(merged_model, clip, "a circle", "a blue circle")
    theirs = edited_weights(reference)
    assert max((edited_weights(ours)[k] - theirs[k]).abs().max().item() for k in theirs) <= 1e-5


# --- token alignment --------------------------------------------------------------------------

def _pipeline_alignment(tokenizer, old_text, new_text):
    """The pipeline's loop, verbatim in effect (it raises IndexError where it cannot align)."""
    a = tokenizer(old_text).input_ids
    b = tokenizer(new_text).input_ids
    a = [tokenizer.encode("a ")[1] if tokenizer.decode(t) == "an" else t for t in a]
    b = [tokenizer.encode("a ")[1] if tokenizer.decode(t) == "an" else t for t in b]
    idx, j = [], 0
    for token in a:
        while b[j] != token:
            j += 1
        idx.append(j)
        j += 1
    idx += range(j, 77)
    return idx + [76] * (77 - len(idx))


@pytest.mark.parametrize(("old", "new"), [
    ("a pack of roses", "a pack of blue roses"), ("an apple", "a green apple"),
    ("A photo of a circle", "A photo of a circle at the top"), ("circle", "a red circle")])
def test_alignment_is_the_pipelines_where_it_aligns(pipe, old, new):
    assert align_tokens(pipe.tokenizer, old, new) == _pipeline_alignment(pipe.tokenizer, old, new)


def test_alignment_where_the_pipeline_fails(pipe):
    tok = pipe.tokenizer
    with pytest.raises(IndexError):
        _pipeline_alignment(tok, "a circle", "a square")
    # BOS a circle EOS → BOS a square EOS: word for word, then the padding follows
    assert align_tokens(tok, "a circle", "a square")[:6] == [0, 1, 2, 3, 4, 5]
    # a replaced word maps onto its replacement's head (last) word
    assert align_tokens(tok, "a circle", "a big square")[:5] == [0, 1, 3, 4, 5]
    # surplus source words map onto the replacement's first word
    assert align_tokens(tok, "a big red circle", "a square")[:7] == [0, 1, 2, 2, 2, 3, 4]
    assert len(align_tokens(tok, "a circle", "a square")) == 77


# --- images through the graph -----------------------------------------------------------------

def time_prompt(*, ckpt="steerflow-tiny", source="a circle", destination="a blue circle",
                lamb=0.1, with_to_k=True, augmentations=None, width=64, height=64,
                seed=3, edit=True, sampler="ddim") -> dict:
    model: list = ["4", 0]
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                           "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }
    if edit:
        inputs = {"model": model, "clip": ["4", 1], "source_prompt": source,
                  "destination_prompt": destination, "lamb": lamb, "with_to_k": with_to_k}
        if augmentations is not None:
            inputs["augmentations"] = augmentations
        prompt["20"] = {"class_type": "TIMEModelEdit", "inputs": inputs}
        model = ["20", 0]
    prompt["3"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": STEPS, "cfg": 7.5, "sampler_name": sampler,
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0]}}
    return prompt


def run_reference(pipe, *, width=64, height=64, seed=3, sampler="ddim") -> np.ndarray:
    class_name, extra = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.base_config, **extra)
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5,
                height=height, width=width, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed)).images


@pytest.mark.parametrize(("ckpt", "width", "height", "lamb", "with_to_k", "augs", "sampler"), [
    ("steerflow-tiny", 64, 64, 0.1, True, AUGS_CONST, "ddim"),
    ("steerflow-tiny.safetensors", 64, 40, 0.1, True, AUGS_CONST, "ddim"),
    ("steerflow-tiny", 40, 64, 0.5, False, (), "dpmpp_2m"),
])
def test_images_match_edited_pipeline(session, tiny_model_paths, ckpt, width, height, lamb,
                                      with_to_k, augs, sampler):
    pipe = editing_pipeline(tiny_model_paths["diffusers"], with_to_k, augs)
    pipe.edit_model("a circle", "a blue circle", lamb=lamb)
    ref = run_reference(pipe, width=width, height=height, sampler=sampler)
    ours = run_graph(session, time_prompt(
        ckpt=ckpt, lamb=lamb, with_to_k=with_to_k, width=width, height=height, sampler=sampler,
        augmentations="\n".join(a.strip() for a in augs)))
    assert ours.shape == ref.shape == (1, height, width, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = run_graph(session, time_prompt(ckpt=ckpt, width=width, height=height,
                                           sampler=sampler, edit=False))
    assert np.abs(ours - plain).max() > 1e-3  # the edit acts


def test_base_model_is_unchanged(session, tiny_model_paths):
    """The cached checkpoint keeps its weights through an edit and a run of the edited
    model; the plain graph afterwards still gives the unedited pipeline's image."""
    from nodes.diffusion.loading import load_components

    fresh = load_components(tiny_model_paths["diffusers"]).unet.state_dict()
    key = uuid.uuid4().hex
    prompt = time_prompt(seed=11)
    prompt["cap_model"] = {"class_type": "TestCapture", "inputs": {"value": ["4", 0], "key": key}}
    prompt["cap_edited"] = {"class_type": "TestCapture",
                            "inputs": {"value": ["20", 0], "key": key + "e"}}
    edited_image = run_graph(session, prompt)
    base, edited = CAPTURED.pop(key), CAPTURED.pop(key + "e")
    assert base.patches == () and isinstance(edited.patches[-1], TimeEdit)
    assert edited.unet is base.unet  # a new handle over the same, untouched, module
    assert all(torch.equal(fresh[k], v) for k, v in base.unet.state_dict().items())
    plain_image = run_graph(session, time_prompt(seed=11, edit=False))
    pipe = editing_pipeline(tiny_model_paths["diffusers"])  # never edited
    assert np.abs(plain_image - run_reference(pipe, seed=11)).max() <= 1e-4
    assert np.abs(plain_image - edited_image).max() > 1e-3


# --- bad input --------------------------------------------------------------------------------

def _node_errors(session, prompt):
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [i for i in info.value.issues if i.kind == "node_error"]


def test_empty_or_identical_prompts_are_validation_errors(session):
    (issue,) = _node_errors(session, time_prompt(source="  "))
    assert issue.input_name == "source_prompt" and "empty" in issue.message
    (issue,) = _node_errors(session, time_prompt(destination=""))
    assert issue.input_name == "destination_prompt"
    (issue,) = _node_errors(session, time_prompt(destination="a circle"))
    assert "nothing to edit" in issue.message


def test_unalignable_prompts_are_clear_errors(session):
    message = run_error(session, time_prompt(source="a red circle", destination="a circle"))
    assert "nothing in place of 'red'" in message and "source tokens: a red circle" in message
    long = " ".join(["red"] * 80) + " circle"
    message = run_error(session, time_prompt(source=long, destination="a square"))
    assert "at most 75 tokens" in message


def test_word_swaps_run(session):
    """Pairs the pipeline cannot align (different words, different lengths) still edit."""
    plain = run_graph(session, time_prompt(edit=False))
    for destination in ("a square", "a big square"):
        edited = run_graph(session, time_prompt(destination=destination))
        assert np.abs(edited - plain).max() > 1e-3


def test_model_and_clip_of_different_widths_is_a_clear_error(tiny_model_paths):
    from transformers import CLIPTextConfig, CLIPTextModel

    model, clip = handles(tiny_model_paths["diffusers"])
    config = CLIPTextConfig(**{**clip.text_encoder.config.to_dict(), "hidden_size": 48,
                               "intermediate_size": 96})
    other = TextEncoder(CLIPTextModel(config).eval(), clip.tokenizer)
    with pytest.raises(ValueError, match=r"reads \[32\]-wide text states but the CLIP gives "
                                         r"48-wide ones"):
        time_edit(model, other, "a circle", "a square")


# --- combined with other techniques, and the example ------------------------------------------

@pytest.fixture(scope="module")
def default_session(tmp_path_factory):
    # the built-in set-up: steerflow-shapes, its ControlNet and the example LoRA
    return Session(tmp_path_factory.mktemp("time_default"), device="cpu",
                   registry=registry_with_capture())


def _combined(session, drop: str | None = None) -> torch.Tensor:
    """workflows/combined.json (LoRA, ControlNet, SEGA, inpainting mask) with a TIME edit of
    its prompt's "circle" on the LoRA'd model; optionally without one technique."""
    wf = Workflow.load("workflows/combined.json").set("3.steps", 6)
    p = wf.prompt
    p["50"] = {"class_type": "TIMEModelEdit", "inputs": {
        "model": ["30", 0], "clip": ["30", 1], "source_prompt": "a circle",
        "destination_prompt": "a square"}}
    p["20"]["inputs"]["model"] = ["50", 0]
    if drop == "time":
        p["20"]["inputs"]["model"] = ["30", 0]
    elif drop == "sega":
        p["3"]["inputs"]["model"] = ["50", 0]
    elif drop == "controlnet":
        p["3"]["inputs"]["positive"], p["3"]["inputs"]["negative"] = ["6", 0], ["7", 0]
    elif drop == "lora":
        for node_id, slot in (("50", "model"), ("50", "clip"), ("6", "clip"), ("7", "clip"),
                              ("21", "clip"), ("22", "clip")):
            p[node_id]["inputs"][slot] = ["4", 0 if slot == "model" else 1]
    key = uuid.uuid4().hex
    p["cap"] = {"class_type": "TestCapture", "inputs": {"value": ["3", 0], "key": key}}
    result = session.run(wf)
    assert result.ok, result.run.error
    return CAPTURED.pop(key).samples


def test_combines_with_lora_sega_and_controlnet(default_session):
    out = _combined(default_session)
    assert torch.isfinite(out).all()
    for technique in ("time", "sega", "controlnet", "lora"):
        assert (out - _combined(default_session, drop=technique)).abs().max() > 1e-3, technique


def test_example_workflow_runs(default_session):
    wf = Workflow.load("workflows/model_editing.json")
    for node_id, node in wf.prompt.items():
        if node["class_type"] == "KSampler":
            wf.set(f"{node_id}.steps", 3)
    result = default_session.run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) >= 2
