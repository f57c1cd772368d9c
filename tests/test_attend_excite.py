"""Attend-and-Excite through the graph equals diffusers' StableDiffusionAttendAndExcitePipeline."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler
from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite import (
    StableDiffusionAttendAndExcitePipeline,
)

from engine.session import Session, Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.attend_excite import (
    cross_attention_sizes,
    light_tokenizer,
    parse_thresholds,
    token_indices,
)
from tests.graph_nodes import CAPTURED, reference_pipeline
from tests.region_graphs import with_region

PROMPT = "a red circle at the top left and a blue square"
WORDS = "circle, square"
INDICES = [3, 11]  # the pipeline's token_indices of WORDS (0 is the start token)
STEPS = 6
# A short schedule that still alters, refines at three steps and leaves steps unaltered.
AE = {"max_iter_to_alter": 4, "thresholds": {0: 0.05, 2: 0.5, 4: 0.8}}
# The tiny random model's attention is nearly flat, so the pipeline's scale_factor 20
# barely moves it; a large one makes the A&E updates change the image visibly.
SCALE = 800.0


@pytest.fixture(scope="module")
def ae_pipe(tiny_model_paths):
    return reference_pipeline(StableDiffusionAttendAndExcitePipeline, tiny_model_paths["diffusers"])


def ae_prompt(ckpt="steerflow-tiny", width=64, height=64, sampler="ddim", attn_res=8,
              words=WORDS, scale=SCALE, seed=3, excite=True, batch=1, **extra):
    thresholds = ", ".join(f"{k}:{v}" for k, v in AE["thresholds"].items())
    positive = ({"class_type": "AttendAndExcite", "inputs": {
        "clip": ["4", 1], "text": PROMPT, "words": words, "attn_res": attn_res,
        "scale_factor": scale, "max_iter_to_alter": AE["max_iter_to_alter"],
        "thresholds": thresholds, **extra}} if excite else
        {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}})
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": positive,
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                            "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": STEPS, "cfg": 7.5,
            "sampler_name": sampler, "scheduler": "normal", "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["8", 0],
                                                       "key": uuid.uuid4().hex}},
    }


def run_graph(session, prompt):
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).numpy()


def run_reference(pipe, width=64, height=64, attn_res=(8, 8), scheduler_cls=DDIMScheduler,
                  seed=3, batch=1):
    pipe.scheduler = scheduler_cls.from_config(pipe.base_config)
    # attn_res is given as (h, w): the pipeline's own default for attn_res=None,
    # (ceil(width/32), ceil(height/32)), reads non-square maps transposed.
    return pipe(PROMPT, token_indices=INDICES, negative_prompt="", height=height, width=width,
                num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed), attn_res=attn_res,
                scale_factor=SCALE, num_images_per_prompt=batch, **AE).images


@pytest.mark.parametrize(("ckpt", "width", "height", "attn_res", "sampler", "batch"), [
    ("steerflow-tiny", 64, 64, 8, "ddim", 1),  # (the single file: at 96x64 below)
    ("steerflow-tiny", 96, 64, 4, "ddim", 1),  # non-square latent 8x12, the mid block's 4x6 maps
    ("steerflow-tiny.safetensors", 96, 64, 8, "pndm", 1),
    ("steerflow-tiny", 64, 64, 8, "ddim", 2),  # each image excited on its own
])
def test_matches_attend_and_excite_pipeline(session, ae_pipe, ckpt, width, height, attn_res,
                                            sampler, batch):
    ours = run_graph(session, ae_prompt(ckpt, width, height, sampler, attn_res, batch=batch))
    lat = (height // 8, width // 8)
    size = lat if attn_res == lat[0] else (lat[0] // 2, lat[1] // 2)
    ref = run_reference(ae_pipe, width, height, size,
                        DDIMScheduler if sampler == "ddim" else PNDMScheduler, batch=batch)
    assert ours.shape[0] == batch and np.abs(ours - ref).max() <= 1e-4
    plain = run_graph(session, ae_prompt(ckpt, width, height, sampler, attn_res, excite=False,
                                         batch=batch))
    assert np.abs(ours - plain).max() > 0.1  # the updates did act


def test_normalize_eot_softmaxes_over_the_prompt_tokens_only(session):
    from nodes.diffusion.attend_excite import max_attention_per_index

    maps = torch.rand(4, 6, 77).softmax(-1)
    every = list(range(1, 76))
    assert torch.equal(torch.stack(max_attention_per_index(maps, [3, 11])),
                       torch.stack(max_attention_per_index(maps, [3, 11], every)))
    prompt_only = torch.stack(max_attention_per_index(maps, [3, 11], range(1, 12)))
    assert (prompt_only > torch.stack(max_attention_per_index(maps, [3, 11]))).all()
    eot = run_graph(session, ae_prompt(normalize_eot=True))
    assert np.abs(eot - run_graph(session, ae_prompt())).max() > 1e-3


def test_tokens_are_found_as_the_pipeline_counts_them(ae_pipe):
    indices = ae_pipe.get_indices(PROMPT)
    found, problems = token_indices(ae_pipe.tokenizer, PROMPT, WORDS)
    assert not problems and found == INDICES
    assert [indices[i] for i in found] == ["circle</w>", "square</w>"]
    # phrases give all their tokens; weights and long prompts keep the encoder's positions
    assert token_indices(ae_pipe.tokenizer, PROMPT, "blue square")[0] == [10, 11]
    assert token_indices(ae_pipe.tokenizer, "a (red:1.3) [circle]", "circle")[0] == [3]
    long = " ".join(["word"] * 80) + " circle"
    assert token_indices(ae_pipe.tokenizer, long, "circle")[0] == [77 + 1 + 5]
    assert token_indices(ae_pipe.tokenizer, "two cats", "cat")[1]  # not inside another word


def test_the_light_tokenizer_is_the_clip_tokenizer(ae_pipe):
    from training.shapes import generate

    texts = [generate(5, i, 64, 0.5).caption for i in range(100)] + [
        "Hello, World! It's 3.14 — café naïve   spaces\tand\nlines", "a giraffe's (neck:1.2)"]
    light = light_tokenizer()
    for text in texts:
        assert light(text).input_ids == ae_pipe.tokenizer(
            text, add_special_tokens=False).input_ids, text


def _node_errors(session, prompt):
    with pytest.raises(PromptValidationError) as info:
        session.run(prompt)
    return [i for i in info.value.issues if i.kind == "node_error"]


def test_missing_or_repeated_words_are_validation_errors(session):
    (issue,) = _node_errors(session, ae_prompt(words="circle, hexagon"))
    assert issue.input_name == "words" and "'hexagon' is not in the prompt" in issue.message
    assert "3:circle" in issue.message and "11:square" in issue.message  # lists the tokens
    (issue,) = _node_errors(session, ae_prompt(words="a"))
    assert "appears 2 times (tokens 1, 9)" in issue.message
    empty = ae_prompt(words="circle")
    empty["6"]["inputs"]["text"] = ""
    (issue,) = _node_errors(session, empty)
    assert "the prompt is empty" in issue.message
    (issue,) = _node_errors(session, ae_prompt(words=" , "))
    assert "at least one word" in issue.message
    (issue,) = _node_errors(session, ae_prompt(thresholds="0:0.05, 10"))
    assert issue.input_name == "thresholds"


def test_words_are_checked_at_run_time_when_the_text_is_linked(session):
    prompt = ae_prompt(words="hexagon")
    prompt["s"] = {"class_type": "PrimitiveString", "inputs": {"value": PROMPT}}
    prompt["6"]["inputs"]["text"] = ["s", 0]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "'hexagon' is not in the prompt" in result.run.error["exception_message"]


def test_an_attention_resolution_the_unet_lacks_is_a_clear_error(session):
    result = session.run(ae_prompt(attn_res=16))
    assert result.run.status == "error"
    message = result.run.error["exception_message"]
    assert "attn_res 16" in message and "8x8 (down, up); 4x4 (mid)" in message


def test_cross_attention_sizes_of_the_default_model(tiny_model_paths):
    from types import SimpleNamespace

    shapes = SimpleNamespace(  # steerflow-shapes' UNet blocks
        block_out_channels=(32, 64, 96), mid_block_type="UNetMidBlock2DCrossAttn",
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    assert cross_attention_sizes(shapes, 16, 16) == {(8, 8): ["down", "up"],
                                                     (4, 4): ["down", "mid", "up"]}
    assert parse_thresholds("0:0.05, 10:0.5,20:0.8") == {0: 0.05, 10: 0.5, 20: 0.8}
    assert parse_thresholds("") == {}


def test_as_negative_prompt_is_a_clear_error(session):
    prompt = ae_prompt()
    prompt["3"]["inputs"]["positive"], prompt["3"]["inputs"]["negative"] = ["7", 0], ["6", 0]
    result = session.run(prompt)
    assert result.run.status == "error"
    assert "positive" in result.run.error["exception_message"]


def test_combines_with_sega_in_one_run(session):
    """A&E and SEGA in one sampler run: removing either changes the image."""
    def prompt(excite=True, sega=True):
        p = ae_prompt(excite=excite)
        if sega:
            p["c0"] = {"class_type": "SEGAConcept", "inputs": {
                "clip": ["4", 1], "text": "a green star", "scale": 6.0, "warmup_steps": 1}}
            p["20"] = {"class_type": "ApplySEGA", "inputs": {"model": ["4", 0],
                                                             "concepts": ["c0", 0]}}
            p["3"]["inputs"]["model"] = ["20", 0]
        return p

    both = run_graph(session, prompt())
    assert np.abs(both - run_graph(session, prompt(excite=False))).max() > 0.1
    assert np.abs(both - run_graph(session, prompt(sega=False))).max() > 1e-3  # as test_sega


@pytest.mark.parametrize("regions", ["area", "mask bounds"])
def test_combines_with_cropped_regions(session, regions):
    """A&E with an area / "mask bounds" region (a UNet pass on a crop of the latent, whose
    5x3 maps have no grid of A&E's): A&E takes its maps from its own whole-canvas pass and
    ignores the crops' (it raised "no grid known for the 15-token maps"); both act."""
    both = run_graph(session, with_region(ae_prompt(), regions, "a green star"))
    assert np.isfinite(both).all()
    plain = run_graph(session, with_region(ae_prompt(excite=False), regions, "a green star"))
    assert np.abs(both - plain).max() > 0.1  # A&E acts
    assert np.abs(both - run_graph(session, ae_prompt())).max() > 1e-3  # the region acts


def test_example_workflow_runs(models_dir, tmp_path):
    wf = Workflow.load("workflows/attend_excite.json").set("3.steps", 4)
    result = Session(tmp_path, models_dir=models_dir, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert len(result.image_paths) == 1


@pytest.mark.slow
def test_matches_the_pipeline_where_attn1_attends_to_the_text(tmp_path):
    """In ``only_cross_attention`` blocks (the SD x4 upscaler has them) attn1's keys are the
    text too, and the pipeline's store keeps its maps with attn2's (is_cross is "the call
    had encoder_hidden_states"); a store that chose attn2 by name differed by 0.74."""
    from diffusers import UNet2DConditionModel

    from nodes.diffusion.tiny import UNET_CONFIG, build_tiny_pipeline
    from tests.graph_nodes import registry_with_capture

    pipe = build_tiny_pipeline()
    torch.manual_seed(5)
    pipe.unet = UNet2DConditionModel(**{**UNET_CONFIG, "only_cross_attention": True}).eval()
    folder = tmp_path / "models" / "checkpoints" / "only-cross"
    pipe.save_pretrained(folder, safe_serialization=True)
    session = Session(tmp_path / "s", models_dir=tmp_path / "models", device="cpu",
                      registry=registry_with_capture())
    ours = run_graph(session, ae_prompt("only-cross", 96, 64, attn_res=8))  # level 0's maps
    ref = run_reference(reference_pipeline(StableDiffusionAttendAndExcitePipeline, folder),
                        96, 64, (8, 12))
    assert np.abs(ours - ref).max() <= 1e-4


def test_level_recorder_resizes_maps_a_pass_runs_at_another_size():
    """Where a pass runs attn_res's level smaller (Deep Shrink), its maps are resized to
    attn_res on the autograd graph; at attn_res they are recorded as they are."""
    from types import SimpleNamespace

    from nodes.diffusion.attend_excite import LevelRecorder, level_of
    from nodes.diffusion.attention import AttentionCall, AttentionLayer

    assert [level_of(n, 3) for n in ("down_blocks.1.attentions.0.x", "mid_block.attentions.0",
                                     "up_blocks.0.attentions.1", "conv_in")] == [1, 2, 2, None]
    recorder = LevelRecorder(cross=True, by_keys=True, roles=("cond",), keep_grad=True,
                             level=0, levels=2, size=(4, 4))
    layer = AttentionLayer("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
                           "up", True, True)
    assert recorder.selects(layer)
    assert not recorder.selects(AttentionLayer("mid_block.attentions.0.transformer_blocks.0."
                                               "attn2.processor", "mid", True, True))
    run = SimpleNamespace(state={})
    probs = torch.rand(2, 4, 7, requires_grad=True)  # 2 heads, a 2x2 grid, 7 keys
    call = AttentionCall(layer, run, ("cond",), 2, 4, (2, 2), 7, _rows=2)
    # outside A&E's own pass (the sampler's, a region's crop: 15 tokens, no grid) nothing
    assert recorder.on_probs(call, probs) is probs
    crop = AttentionCall(layer, run, ("uncond", "cond"), 2, 15, None, 7, _rows=4)
    recorder.on_probs(crop, torch.rand(4, 15, 7))
    assert not recorder.maps(run, "cond")
    recorder.recording = True
    assert recorder.on_probs(call, probs) is probs
    average = recorder.average(run, "cond")
    assert average.shape == (1, 16, 7) and average.requires_grad
    grid = probs.mean(0).T.reshape(1, 7, 2, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear")
    assert torch.allclose(average[0], expected.reshape(7, 16).T)
    recorder.clear(run)
    full = torch.rand(2, 16, 7)
    recorder.on_probs(AttentionCall(layer, run, ("cond",), 2, 16, (4, 4), 7, _rows=2), full)
    assert torch.allclose(recorder.average(run, "cond")[0], full.mean(0))
