"""Textual inversion embeddings (``embedding:name``) equal diffusers' load_textual_inversion."""

from __future__ import annotations

import uuid
from pathlib import Path

import diffusers
import pytest
import torch
from safetensors.torch import save_file

from engine.session import Session
from tests.graph_nodes import CAPTURED, registry_with_capture

DIM = 32  # the tiny text encoder's width


def _vectors(seed: int, n: int, dim: int = DIM) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def embeddings(models_dir: Path) -> dict[str, Path]:
    """One file per supported format in models/embeddings."""
    folder = models_dir / "embeddings"
    (folder / "styles").mkdir(parents=True, exist_ok=True)
    files = {
        "glow": folder / "glow.safetensors",  # A1111, three vectors
        "single": folder / "styles" / "single.safetensors",  # diffusers {token: [dim]}
        "legacy": folder / "legacy.pt",  # A1111 pickle
        "legacy_st": folder / "legacy_st.safetensors",  # same vectors, flattened key
        "wide": folder / "wide.safetensors",  # made for a wider text encoder
    }
    save_file({"emb_params": _vectors(1, 3)}, files["glow"])
    save_file({"<single>": _vectors(2, 1)[0]}, files["single"])
    torch.save({"string_to_param": {"*": _vectors(3, 2)}, "name": "legacy", "step": 100},
               files["legacy"])
    save_file({"string_to_param.*": _vectors(3, 2)}, files["legacy_st"])
    save_file({"emb_params": _vectors(4, 1, 64)}, files["wide"])
    return files


def session_for(models_dir, tmp_path_factory, **kwargs) -> Session:
    return Session(tmp_path_factory.mktemp("home"), models_dir=models_dir, device="cpu",
                   registry=registry_with_capture(), **kwargs)


@pytest.fixture(scope="module")
def session(models_dir, embeddings, tmp_path_factory):
    return session_for(models_dir, tmp_path_factory)


def encode_prompt(text: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "steerflow-tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["6", 0],
                                                       "key": uuid.uuid4().hex}},
    }


def encode(session: Session, text: str) -> torch.Tensor:
    prompt = encode_prompt(text)
    result = session.run(prompt)
    assert result.ok, result.run.error
    return CAPTURED.pop(prompt["10"]["inputs"]["key"]).embeds


def test_embeddings_match_diffusers_load_textual_inversion(session, embeddings,
                                                           tiny_model_paths):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model_paths["diffusers"], local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    pipe.load_textual_inversion(embeddings["glow"], token="<glow>")
    pipe.load_textual_inversion(embeddings["single"], token="<single>")
    ref, _ = pipe.encode_prompt("a photo of <glow>, in the style of <single> on white",
                                "cpu", 1, False)
    ours = encode(session, "a photo of embedding:glow, in the style of "
                           "embedding:styles/single on white")
    assert ours.shape == ref.shape == (1, 77, DIM)
    assert (ours - ref).abs().max() <= 1e-4
    plain = encode(session, "a photo of glow, in the style of single on white")
    assert (ours - plain).abs().max() > 1e-2


def test_pickle_embeddings_need_the_opt_in(session, models_dir, tmp_path_factory):
    with pytest.raises(Exception, match="pickle"):
        session.validate(encode_prompt("a embedding:legacy cat"))
    opted = session_for(models_dir, tmp_path_factory, allow_pickle=True)
    from_pickle = encode(opted, "a embedding:legacy cat")
    assert torch.equal(from_pickle, encode(session, "a embedding:legacy_st.safetensors cat"))


def test_unknown_embedding_is_a_warning_and_dropped(session, caplog):
    """As in ComfyUI: warned about and left out of the prompt, never a rejected prompt."""
    vp = session.executor.validate(encode_prompt("a photo of embedding:nosuch"))
    (warning,) = vp.warnings
    assert (warning.kind, warning.severity, warning.input_name) == (
        "node_warning", "warning", "text")
    assert "embedding:nosuch does not exist" in warning.message
    assert "models/embeddings" in warning.message
    with caplog.at_level("WARNING", logger="nodes.diffusion.embeddings"):
        dropped = encode(session, "a photo of embedding:nosuch")
    assert "embedding:nosuch does not exist" in caplog.text
    assert torch.equal(dropped, encode(session, "a photo of "))


def test_wrong_width_is_a_clear_error(session):
    result = session.run(encode_prompt("embedding:wide"))
    assert result.run.status == "error"
    assert "expects 32" in result.run.error["exception_message"]


def test_an_embedding_with_nan_values_is_a_clear_error(session, models_dir):
    """It turned the whole prompt, and so the image, to NaN."""
    bad = _vectors(5, 2)
    bad[1, 3] = float("nan")
    save_file({"emb_params": bad}, models_dir / "embeddings" / "broken.safetensors")
    try:
        result = session.run(encode_prompt("embedding:broken"))
    finally:
        (models_dir / "embeddings" / "broken.safetensors").unlink()
    assert result.run.status == "error"
    assert "holds NaN or infinite values" in result.run.error["exception_message"]


def test_weighted_embedding_and_cached_encoder_untouched(session, models_dir):
    from nodes.diffusion.loading import load_components

    plain = encode(session, "a photo of embedding:glow")
    weighted = encode(session, "a photo of (embedding:glow:1.4)")
    assert not torch.equal(plain, weighted)
    encoder = load_components(models_dir / "checkpoints" / "steerflow-tiny").text_encoder
    layer = encoder.get_input_embeddings()
    before = layer.weight.clone()
    from nodes.conditioning import encode_text
    from nodes.diffusion.embeddings import EmbeddingLibrary
    from nodes.diffusion.handles import TextEncoder

    clip = TextEncoder(encoder, load_components(
        models_dir / "checkpoints" / "steerflow-tiny").tokenizer)
    encode_text(clip, "a photo of embedding:glow", EmbeddingLibrary(session.env, DIM))
    assert torch.equal(layer.weight, before) and not layer._forward_hooks


def test_embedding_names_stay_in_the_embeddings_folder(session, models_dir):
    """``embedding:../loras/x`` is unknown (a warning), not another model file read as one."""
    from nodes.diffusion.embeddings import find_embedding, prompt_problems

    (models_dir / "loras").mkdir(exist_ok=True)
    save_file({"w": torch.zeros(2)}, models_dir / "loras" / "not_an_embedding.safetensors")
    assert find_embedding(session.env, "../loras/not_an_embedding") is None
    assert find_embedding(session.env, "styles/single") is not None
    [(severity, message)] = prompt_problems(session.env, "a embedding:../loras/not_an_embedding")
    assert severity == "warning" and "does not exist" in message


def test_an_embedding_with_its_suffix_in_capitals_is_found(tmp_path):
    """The files drill: "x.SafeTensors" was listed as x, and embedding:x said it does not
    exist; a symlink out of the folder is still not taken."""
    from engine import Environment
    from nodes.diffusion.embeddings import find_embedding

    env = Environment.create(tmp_path, device="cpu")
    folder = env.folder("models", "embeddings", create=True)
    save_file({"emb_params": torch.zeros(1, 8)}, folder / "Shiny.SafeTensors")
    assert find_embedding(env, "Shiny") == folder / "Shiny.SafeTensors"
    outside = tmp_path / "outside.safetensors"
    save_file({"emb_params": torch.zeros(1, 8)}, outside)
    (folder / "Escape.SAFETENSORS").symlink_to(outside)
    assert find_embedding(env, "Escape") is None
