"""CLIP vision: the loader's formats, embeddings parity with transformers, the nodes
(CLIPVisionLoader, CLIPVisionEncode, CLIPScore), bad input and the zero-shot evaluation."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine.session import Workflow
from engine.validation import PromptValidationError
from nodes.diffusion.clip_vision import (
    ClipVision,
    clip_score,
    infer_clip_config,
    load_clip_vision,
    save_clip_file,
)
from nodes.diffusion.loading import UnsafeCheckpointError
from nodes.diffusion.tiny_clip import (
    TINY_CLIP_NAME,
    TINY_CLIP_VISION_NAME,
    build_tiny_clip,
    ensure_tiny_clip,
)
from tests.graph_nodes import CAPTURED, run_error

FULL = f"{TINY_CLIP_NAME}.safetensors"
VISION_ONLY = f"{TINY_CLIP_VISION_NAME}.safetensors"
FORMATS = {"single_file": FULL, "vision_only": VISION_ONLY, "folder": TINY_CLIP_NAME}
TEXTS = ["a red circle", "a small blue square at the top left on a white background"]


@pytest.fixture(scope="module")
def clip_paths(models_dir: Path) -> dict[str, Path]:
    return ensure_tiny_clip(models_dir)


@pytest.fixture(scope="module")
def reference():
    return build_tiny_clip()


def _processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _uint8_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _features(output):
    return getattr(output, "pooler_output", output)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_loads_and_matches_transformers(clip_paths, reference, fmt):
    """The IMAGE path (our torch pre-processing) equals CLIPImageProcessor +
    get_image_features on images already at the model's size (32x32)."""
    path = clip_paths["diffusers" if fmt == "folder" else fmt]
    clip = load_clip_vision(path)
    assert clip.image_size == 32 and clip.has_text == (fmt != "vision_only")
    images = _uint8_images(3, 32, 32)
    pixels = _processor()(images=list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = _features(reference.get_image_features(pixel_values=pixels))
        ours = clip.image_embeds(torch.from_numpy(images).float() / 255.0)
    assert (ours - expected).abs().max().item() <= 1e-5
    if clip.has_text:
        tokens = clip.tokenizer(TEXTS, padding="max_length", max_length=77,
                                return_tensors="pt")
        with torch.no_grad():
            text = _features(reference.get_text_features(**tokens))
            assert (clip.text_embeds(TEXTS) - text).abs().max().item() <= 1e-5


def test_resized_image_differs_from_pil_bicubic_by_a_little(clip_paths, reference):
    """A 48x40 image resized to 32: torch's antialiased bicubic (differentiable, for
    guidance) against PIL's bicubic in CLIPImageProcessor. Not equal: the two filters
    differ by a few 1/255 at edges; the embeddings stay within a few per cent."""
    clip = load_clip_vision(clip_paths["single_file"])
    images = _uint8_images(2, 40, 48, seed=1)
    pixels = _processor()(images=list(images), return_tensors="pt").pixel_values
    ours_pixels = clip.preprocess(torch.from_numpy(images).float() / 255.0)
    assert ours_pixels.shape == pixels.shape == (2, 3, 32, 32)
    pixel_diff = (ours_pixels - pixels).abs().max().item()
    with torch.no_grad():
        expected = _features(reference.get_image_features(pixel_values=pixels))
        ours = clip.image_embeds(torch.from_numpy(images).float() / 255.0)
    cos = torch.nn.functional.cosine_similarity(ours, expected).min().item()
    # Normalised units (std ~0.27): 0.3 is ~0.08 in 0..1 pixels on random noise images,
    # the worst case for a resampling filter.
    assert 0 < pixel_diff < 0.3 and cos > 0.98, (pixel_diff, cos)


def test_metadata_config_wins_over_inference(tmp_path):
    """Heads are not visible in tensor shapes: metadata keeps them (4 here; inference
    would say hidden/64 = 1)."""
    from transformers import CLIPConfig, CLIPModel

    from nodes.diffusion.tiny_clip import TINY_CLIP_CONFIG

    config = {**TINY_CLIP_CONFIG, "vision_config": {**TINY_CLIP_CONFIG["vision_config"],
                                                    "num_attention_heads": 4}}
    torch.manual_seed(3)
    model = CLIPModel(CLIPConfig(**config)).eval()
    save_clip_file(model, tmp_path / "heads4.safetensors")
    clip = load_clip_vision(tmp_path / "heads4.safetensors")
    assert clip.vision_config.num_attention_heads == 4
    image = torch.rand(1, 32, 32, 3)
    with torch.no_grad():
        expected = _features(model.get_image_features(pixel_values=clip.preprocess(image)))
        assert (clip.image_embeds(image) - expected).abs().max().item() <= 1e-5
    inferred = infer_clip_config(model.state_dict())
    assert inferred["vision_config"]["num_attention_heads"] == 1
    assert inferred["vision_config"]["image_size"] == 32
    assert inferred["vision_config"]["patch_size"] == 8


def test_half_file_loads_at_the_requested_dtype(tmp_path, reference):
    save_clip_file(reference, tmp_path / "half.safetensors", half=True)
    clip = load_clip_vision(tmp_path / "half.safetensors")
    assert clip.dtype == torch.float32
    assert load_clip_vision(tmp_path / "half.safetensors", dtype=torch.float16).dtype == \
        torch.float16


def test_not_a_clip_file_is_refused_clearly(tiny_model_paths, tmp_path):
    with pytest.raises(ValueError, match=r"not a CLIP vision model.*diffusion model"):
        load_clip_vision(tiny_model_paths["single_file"])
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a CLIP vision model"):
        load_clip_vision(tmp_path / "other.safetensors")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "pickled.bin")
    with pytest.raises(UnsafeCheckpointError):
        load_clip_vision(tmp_path / "pickled.bin")
    with pytest.raises(ValueError, match="not a transformers model"):
        load_clip_vision(tiny_model_paths["diffusers"])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert'"):
        load_clip_vision(tmp_path / "folder")


def test_pickle_opt_in_loads(tmp_path, reference):
    torch.save(reference.state_dict(), tmp_path / "clip.bin")
    clip = load_clip_vision(tmp_path / "clip.bin", allow_pickle=True)
    assert clip.has_text and clip.image_size == 32


def test_clip_score_is_torchmetrics_formula(clip_paths):
    clip = load_clip_vision(clip_paths["single_file"])
    images = torch.rand(3, 32, 32, 3)
    with torch.no_grad():
        scores = clip_score(clip, images, ["a red circle"])
        image = clip.image_embeds(images)
        text = clip.text_embeds(["a red circle"])
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = torch.clamp(100 * (image * text).sum(-1), min=0)
    assert torch.allclose(scores, expected, atol=1e-4)
    with pytest.raises(ValueError, match="one text, or one per image"):
        clip_score(clip, images, ["a", "b"])
    vision_only = load_clip_vision(clip_paths["vision_only"])
    with pytest.raises(ValueError, match="no text tower"):
        clip_score(vision_only, images, ["a red circle"])


def test_image_gradient_flows_through_preprocess(clip_paths):
    clip = load_clip_vision(clip_paths["single_file"])
    image = torch.rand(1, 40, 56, 3, requires_grad=True)
    clip.image_embeds(image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


# --- nodes through the graph -------------------------------------------------------------

def _encode_graph(name: str, image_size: tuple[int, int] = (32, 32), crop: str = "center",
                  text: str | None = None) -> dict:
    key = uuid.uuid4().hex
    height, width = image_size
    graph = {
        "clip": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": name}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                             "batch_size": 2}},
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "img": {"class_type": "VAEDecode", "inputs": {"samples": ["lat", 0],
                                                     "vae": ["ckpt", 2]}},
        "enc": {"class_type": "CLIPVisionEncode", "inputs": {
            "clip_vision": ["clip", 0], "image": ["img", 0], "crop": crop}},
        "cap": {"class_type": "TestCapture", "inputs": {"value": ["enc", 0], "key": key}},
        "capimg": {"class_type": "TestCapture", "inputs": {"value": ["img", 0],
                                                           "key": key + "img"}},
    }
    if text is not None:
        graph["score"] = {"class_type": "CLIPScore", "inputs": {
            "clip_vision": ["clip", 0], "image": ["img", 0], "text": text, "crop": crop}}
        graph["capscore"] = {"class_type": "TestCapture", "inputs": {
            "value": ["score", 0], "key": key + "score"}}
    return graph


def _run(session, graph) -> dict:
    result = session.run(graph)
    assert result.ok, result.run.error
    key = graph["cap"]["inputs"]["key"]
    return {"encoded": CAPTURED.pop(key), "image": CAPTURED.pop(key + "img"),
            "score": CAPTURED.pop(key + "score", None)}


@pytest.mark.parametrize("name", list(FORMATS.values()))
def test_encode_node_outputs_match_transformers(session, clip_paths, reference, name):
    out = _run(session, _encode_graph(name))
    encoded, image = out["encoded"], out["image"]
    with torch.no_grad():
        pixels = ClipVision(reference).preprocess(image)
        vision = reference.vision_model(pixel_values=pixels, output_hidden_states=True)
        embeds = reference.visual_projection(vision.pooler_output)
    assert (encoded.image_embeds - embeds).abs().max() <= 1e-5
    assert (encoded.last_hidden_state - vision.last_hidden_state).abs().max() <= 1e-5
    assert encoded.penultimate_hidden_states.shape == (2, 17, 64)
    assert (encoded.penultimate_hidden_states - vision.hidden_states[-2]).abs().max() <= 1e-5
    assert encoded["image_embeds"] is encoded.image_embeds


def test_encode_node_crops_non_square_images(session, clip_paths):
    centre = _run(session, _encode_graph(FULL, (64, 96), "center"))["encoded"]
    squashed = _run(session, _encode_graph(FULL, (64, 96), "none"))["encoded"]
    assert centre.image_embeds.shape == squashed.image_embeds.shape == (2, 16)
    assert not torch.allclose(centre.image_embeds, squashed.image_embeds)


def test_score_node_matches_plain_computation(session, clip_paths, reference):
    out = _run(session, _encode_graph(FULL, text="a red circle"))
    with torch.no_grad():
        clip = ClipVision(reference, load_clip_vision(clip_paths["single_file"]).tokenizer)
        image = clip.image_embeds(out["image"])
        text = clip.text_embeds(["a red circle"])
    cos = torch.nn.functional.cosine_similarity(image, text)
    assert out["score"] == pytest.approx(float((100 * cos).clamp(min=0).mean()), abs=1e-4)


def test_score_node_needs_a_text_tower(session, clip_paths):
    message = run_error(session, _encode_graph(VISION_ONLY, text="a red circle"))
    assert "no text tower" in message and "whole CLIP" in message


def test_score_node_refuses_empty_text(session, clip_paths):
    with pytest.raises(PromptValidationError, match="text is empty"):
        session.validate(_encode_graph(FULL, text="  \n "))


def test_score_node_takes_one_line_or_one_per_image(session, clip_paths):
    """Two images: one line each scores each its own; three lines were joined into one
    sentence nobody wrote, and are now refused saying how to give them."""
    both = _run(session, _encode_graph(FULL, text="a red circle\na blue square"))["score"]
    assert isinstance(both, float)
    message = run_error(session, _encode_graph(FULL, text="a\nb\nc"))
    assert "3 lines of text for 2 images" in message and "one line per image" in message


def test_nodes_refuse_a_wrong_image_shape():
    from nodes.clip_vision import CLIPScore, CLIPVisionEncode

    clip = ClipVision(build_tiny_clip())
    with pytest.raises(ValueError, match=r"IMAGE batch \[B, H, W, C\]"):
        CLIPVisionEncode(clip_vision=clip, image=torch.rand(32, 32, 3)).execute(None)
    with pytest.raises(ValueError, match=r"IMAGE batch \[B, H, W, C\]"):
        CLIPScore(clip_vision=clip, image=torch.rand(1, 3, 32, 32), text="a").execute(None)


def test_loader_refuses_pickles_and_escapes(session, clip_paths):
    folder = clip_paths["single_file"].parent
    torch.save({}, folder / "pickled.pt")
    try:
        graph = _encode_graph("pickled.pt")
        with pytest.raises(PromptValidationError, match="pickle"):
            session.validate(graph)
        with pytest.raises(PromptValidationError):
            session.validate(_encode_graph("../checkpoints/steerflow-tiny.safetensors"))
    finally:
        (folder / "pickled.pt").unlink()


def test_loader_lists_the_clip_vision_folder(session, clip_paths):
    from nodes.clip_vision import list_clip_vision

    names = list_clip_vision(session.env)
    assert {FULL, VISION_ONLY, TINY_CLIP_NAME} <= set(names)


# --- the zero-shot evaluation ------------------------------------------------------------

def test_zero_shot_evaluation_smoke(clip_paths):
    from training.clip_eval import TARGETS, evaluate_clip

    clip = load_clip_vision(clip_paths["single_file"])
    report = evaluate_clip(clip, samples=6, two_shape_samples=3)
    assert set(report.accuracy) == {"one", "two"}
    assert set(report.accuracy["one"]) == {"color", "shape", "position", "background"}
    assert all(0.0 <= v <= 1.0 for acc in report.accuracy.values() for v in acc.values())
    assert "color" in report.table() and set(TARGETS) == {"color", "shape"}


def test_training_captions_and_consistency():
    from training.shapes import generate
    from training.train_clip import caption_constraints, clip_batch, consistent

    sample = generate(0, 3, 64, 1.0)
    a, b = sample.shapes
    assert consistent(f"a {a.color} shape", sample.shapes, sample.background)
    assert consistent(f"a {b.shape}", sample.shapes, sample.background)
    assert not consistent(f"a {a.color} {a.shape} and a {a.color} {a.shape}",
                          sample.shapes, sample.background)
    assert caption_constraints("a red shape on a white background") == (
        ((("color", "red"),),), "white")
    pixels, captions, fit = clip_batch(0, 0, 8)
    assert pixels.shape == (8, 3, 64, 64) and len(captions) == 8 and fit.diagonal().all()


# --- the shipped CLIP and the example workflow ---------------------------------------------

def _shipped():
    from nodes.diffusion.builtin_models import SHAPES_CLIP_NAME, shipped_weights

    return shipped_weights(SHAPES_CLIP_NAME)


@pytest.mark.skipif(not _shipped().is_file(), reason="the shapes CLIP is not shipped")
def test_shipped_clip_fits_the_budget_and_reads_colours():
    assert _shipped().stat().st_size <= 8 * 2**20
    from training.clip_eval import classify
    from training.shapes import generate

    clip = load_clip_vision(_shipped())
    samples = [generate(1_000_003, i, 64, 0.0) for i in range(16)]
    predicted = classify(clip, np.stack([s.image for s in samples]), "color")
    assert sum(p == s.shapes[0].color for p, s in zip(predicted, samples, strict=True)) >= 14


@pytest.mark.skipif(not _shipped().is_file(), reason="the shapes CLIP is not shipped")
def test_example_workflow_runs(tmp_path):
    from engine.session import Session

    wf = Workflow.load("workflows/clip_score.json").set("3.steps", 4)
    result = Session(tmp_path, device="cpu").run(wf)
    assert result.ok, result.run.error
    assert result.image_paths


def test_train_clip_smoke_and_resume(tmp_path):
    """Two steps of the CLIP stage on a toy image tower write a file the loader reads; a
    resumed run continues from the checkpoint (here: nothing left to do)."""
    from training.loop import LoopConfig
    from training.train import StageOptions
    from training.train_clip import train_clip

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
              "num_hidden_layers": 1, "image_size": 64, "patch_size": 16, "num_channels": 3,
              "hidden_act": "quick_gelu"}
    opts = StageOptions(out_dir=tmp_path)
    loop = LoopConfig(steps=2, lr=1e-3, save_every=1, progress=False)
    path, result = train_clip(opts, loop, batch_size=16, text_source="random", vision=vision)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    clip = load_clip_vision(path)
    assert clip.has_text and clip.image_size == 64 and clip.vision_config.num_attention_heads == 2
    _, again = train_clip(opts, loop, batch_size=16, text_source="random", vision=vision)
    assert again.start_step == 2 and not again.losses

    # going on from that file with the shape-prompt loss: at lr 0 the weights stay its own
    still = LoopConfig(steps=1, lr=0.0, save_every=1, progress=False, lr_schedule="constant")
    path2, more = train_clip(StageOptions(out_dir=tmp_path / "more"), still, batch_size=16,
                             text_source="random", vision=vision, init=path, shape_weight=1.0)
    assert len(more.losses) == 1 and np.isfinite(more.losses[0])
    before, after = clip.model.state_dict(), load_clip_vision(path2).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shape_prompt_loss_targets_every_shape_the_image_holds():
    from training.shapes import SHAPES, generate
    from training.train_clip import SHAPE_PROMPTS, shape_prompt_loss

    one, two = generate(0, 0, 64, 0.0), generate(0, 3, 64, 1.0)
    assert tuple(f"a {s}" for s in SHAPES) == SHAPE_PROMPTS
    right = torch.full((2, len(SHAPES)), -20.0)
    right[0, SHAPES.index(one.shapes[0].shape)] = 20.0
    for s in two.shapes:
        right[1, SHAPES.index(s.shape)] = 20.0
    low = shape_prompt_loss(right, [one.shapes, two.shapes])
    high = shape_prompt_loss(-right, [one.shapes, two.shapes])
    two_kinds = len({s.shape for s in two.shapes})
    # the best a two-shape image can do is spread its mass evenly over its shapes
    assert float(low) <= 0.5 * np.log(two_kinds) + 1e-4 and float(high) > 30
