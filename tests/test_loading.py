"""Tokenizer derivation, the tiny model, and checkpoint loading in every supported format."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nodes.diffusion.loading import (
    CheckpointKeyError,
    UnsafeCheckpointError,
    detect_family,
    family_configs,
    load_components,
    load_original_state_dict,
)
from nodes.diffusion.original_layout import (
    CONFIG_METADATA_KEY,
    text_encoder_to_original,
    unet_to_original,
    vae_to_original,
)
from nodes.diffusion.tiny import build_tiny_pipeline, ensure_default_model
from nodes.diffusion.tokenizer import clip_tokenizer_dir, load_clip_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def _bpe_gz() -> Path:
    """CLIP's BPE file from open-clip-torch (a dev-only package: skip where absent)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-clip-torch is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _reference_clip_ids(text: str) -> list[int]:
    """CLIP's own tokenisation, re-done independently from the gz (ASCII text only)."""
    with gzip.open(_bpe_gz(), "rt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1 : 49152 - 256 - 2 + 1]]
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    byte_chars = [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab = {t: i for i, t in enumerate([*tokens, "<|startoftext|>", "<|endoftext|>"])}
    ranks = {m: i for i, m in enumerate(merges)}

    def bpe(word: str) -> list[str]:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rank, i = min((ranks.get(pair, 1 << 30), i) for i, pair in enumerate(pairwise(parts)))
            if rank == 1 << 30:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    pattern = r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+"  # CLIP's, for ASCII
    words = re.findall(pattern, " ".join(text.lower().split()))
    return [vocab["<|startoftext|>"], *(vocab[p] for w in words for p in bpe(w)), 49407]


def test_tokenizer_matches_clip_reference() -> None:
    tok = load_clip_tokenizer()
    for text in ("a photo of a cat", "An astronaut riding a horse, 4k!!", "hello   world's end"):
        assert tok(text).input_ids == _reference_clip_ids(text), text


def test_tokenizer_known_ids_and_settings() -> None:
    tok = load_clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>"
    padded = tok("a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    sd2 = load_clip_tokenizer(ROOT / "nodes/assets/configs/sd21/tokenizer")
    assert sd2.pad_token == "!" and sd2.pad_token_id == 0


def test_shipped_tokenizer_files_are_derived(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "derive_clip_tokenizer.py"
    spec = importlib.util.spec_from_file_location("derive_clip_tokenizer", script)
    assert spec and spec.loader
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    derive.main(["--gz", str(_bpe_gz()), "--out", str(tmp_path)])
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).read_bytes() == (clip_tokenizer_dir() / name).read_bytes(), name


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_tiny_pipeline_is_deterministic() -> None:
    rng_before = torch.get_rng_state()
    a, b, c = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    assert torch.equal(rng_before, torch.get_rng_state()), "building must not consume global RNG"
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(a, name), getattr(b, name))
        assert not torch.equal(
            next(iter(getattr(a, name).state_dict().values())),
            next(iter(getattr(c, name).state_dict().values())),
        )
    with torch.inference_mode():
        image = a(
            "a photo of a cat",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images
    assert image.shape == (1, 64, 64, 3)  # the default size


def _run_components(loaded) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1234)
    ids = loaded.tokenizer("a photo of a cat", padding="max_length", return_tensors="pt").input_ids
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    pixels = torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1
    with torch.inference_mode():
        text = loaded.text_encoder(ids).last_hidden_state
        eps = loaded.unet(latents, 10, encoder_hidden_states=text).sample
        decoded = loaded.vae.decode(latents).sample
        encoded = loaded.vae.encode(pixels).latent_dist.mean
    return text, eps, decoded, encoded


def test_folder_and_single_file_load_identically(tiny_model_paths: dict[str, Path]) -> None:
    folder = load_components(tiny_model_paths["diffusers"])
    single = load_components(tiny_model_paths["single_file"])
    reference = build_tiny_pipeline(0)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(folder, name), getattr(single, name))
        _assert_same_weights(getattr(folder, name), getattr(reference, name))
        assert not getattr(single, name).training
        for model in (getattr(folder, name), getattr(single, name)):
            # Unaligned (memory-mapped) weights change CPU kernel results.
            assert all(p.data_ptr() % 64 == 0 for p in model.parameters())
    for x, y in zip(_run_components(folder), _run_components(single), strict=True):
        assert torch.equal(x, y)
    assert folder.family == single.family == "sd1"
    assert folder.scheduler_config == single.scheduler_config
    assert single.scheduler_config["clip_sample"] is False
    assert single.tokenizer.pad_token == folder.tokenizer.pad_token == "<|endoftext|>"


def test_prefetched_load_builds_the_models_from_the_header(
        tiny_model_paths: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the weights read in the background, the empty models are built from the
    file's header meanwhile, and the result is the plain load's, weight for weight."""
    from nodes.diffusion import loading
    from nodes.diffusion.safetensors_io import read_in_background

    path = tiny_model_paths["single_file"]
    prebuilt: list[bool] = []
    real = loading.EmptyModels.__init__

    def spy(self: loading.EmptyModels, configs: dict, *, prebuild: bool = False) -> None:
        prebuilt.append(prebuild)
        real(self, configs, prebuild=prebuild)

    monkeypatch.setattr(loading.EmptyModels, "__init__", spy)
    plain = load_components(path)
    assert prebuilt == [False]
    fetched = load_components(path, prefetched=read_in_background(path, dtype=torch.float32))
    assert prebuilt == [False, True]  # the header's skeleton was used, not built again
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(plain, name), getattr(fetched, name))
        assert not any(p.is_meta for p in getattr(fetched, name).parameters())
    # A file that is no checkpoint fails as it did, before its weights are awaited.
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(other))
    with pytest.raises(ValueError, match="not a Stable Diffusion checkpoint"):
        load_components(other, prefetched=read_in_background(other, dtype=torch.float32))


def test_single_file_uses_original_layout(tiny_model_paths: dict[str, Path]) -> None:
    with safe_open(str(tiny_model_paths["single_file"]), framework="pt") as f:
        keys = set(f.keys())
        configs = json.loads(f.metadata()[CONFIG_METADATA_KEY])
    assert configs["family"] == "sd1" and configs["unet"]["cross_attention_dim"] == 32
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    for key in (
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # upsampler, no attention
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    ):
        assert key in keys, key


def test_loads_on_dtype(tiny_model_paths: dict[str, Path]) -> None:
    loaded = load_components(tiny_model_paths["single_file"], dtype=torch.bfloat16)
    for model in (loaded.unet, loaded.vae, loaded.text_encoder):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_sd15_layout_loads_with_shipped_configs() -> None:
    """Full SD 1.5 structure (on the meta device, no memory) through the no-metadata path."""
    cfg = family_configs("sd1")
    with torch.device("meta"):
        unet = _build_unet(cfg)
        vae = _build_vae(cfg)
        text = _build_text(cfg)
    state = {
        **unet_to_original(unet.state_dict(), cfg["unet"]),
        **vae_to_original(vae.state_dict(), cfg["vae"]),
        **text_encoder_to_original(text.state_dict()),
    }
    # The published SD 1.5 checkpoint's key count (without the position_ids buffer).
    assert len(state) == 686 + 248 + 196
    assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in state
    assert "model.diffusion_model.output_blocks.8.2.conv.weight" in state
    loaded = load_original_state_dict(state)
    assert loaded.family == "sd1" and loaded.scheduler_config["_class_name"] == "PNDMScheduler"
    assert loaded.tokenizer.pad_token == "<|endoftext|>"


def test_sd21_layout_loads_with_shipped_configs() -> None:
    cfg = family_configs("sd2")
    with torch.device("meta"):
        unet, vae = _build_unet(cfg), _build_vae(cfg)
        state = {
            **unet_to_original(unet.state_dict(), cfg["unet"]),
            **vae_to_original(vae.state_dict(), cfg["vae"]),
            **_open_clip_h_state(),
        }
    loaded = load_original_state_dict(state)
    assert loaded.family == "sd2"
    assert len(loaded.text_encoder.encoder.layers) == 23
    assert loaded.scheduler_config["prediction_type"] == "v_prediction"
    assert loaded.tokenizer.pad_token == "!"
    # 2.0-base / 2.1-base have the same shapes: ComfyUI's reading of the weights tells the
    # 512-px epsilon models apart (the files drill: they were sampled as v-prediction)
    from nodes.diffusion.loading import _V_PROBE

    state[_V_PROBE] = torch.full((320,), 0.01)
    base = load_original_state_dict(state)
    assert base.scheduler_config["prediction_type"] == "epsilon"
    assert base.unet.config.sample_size == 64
    state[_V_PROBE] = torch.randn(320, generator=torch.Generator().manual_seed(0)) * 0.2
    assert load_original_state_dict(state).scheduler_config["prediction_type"] == "v_prediction"
    from nodes.diffusion.loading import _predicts_v

    assert not _predicts_v({})  # absent: epsilon, as ComfyUI reads it


def _build_unet(cfg):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(cfg["unet"])


def _build_vae(cfg):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(cfg["vae"])


def _build_text(cfg):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig.from_dict(cfg["text_encoder"]))


def _open_clip_h_state(width: int = 1024, layers: int = 24) -> dict[str, torch.Tensor]:
    """Key/shape skeleton of SD 2.x's OpenCLIP ViT-H text tower (call under the meta device)."""
    p = "cond_stage_model.model."
    state = {
        p + "token_embedding.weight": torch.empty(49408, width),
        p + "positional_embedding": torch.empty(77, width),
        p + "ln_final.weight": torch.empty(width),
        p + "ln_final.bias": torch.empty(width),
        p + "text_projection": torch.empty(width, width),
        p + "logit_scale": torch.empty(()),
    }
    for i in range(layers):
        b = f"{p}transformer.resblocks.{i}."
        state |= {
            b + "attn.in_proj_weight": torch.empty(3 * width, width),
            b + "attn.in_proj_bias": torch.empty(3 * width),
            b + "attn.out_proj.weight": torch.empty(width, width),
            b + "attn.out_proj.bias": torch.empty(width),
            b + "mlp.c_fc.weight": torch.empty(4 * width, width),
            b + "mlp.c_fc.bias": torch.empty(4 * width),
            b + "mlp.c_proj.weight": torch.empty(width, 4 * width),
            b + "mlp.c_proj.bias": torch.empty(width),
        }
        for norm in ("ln_1", "ln_2"):
            state |= {f"{b}{norm}.{kind}": torch.empty(width) for kind in ("weight", "bias")}
    return state


def test_detect_family() -> None:
    attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    sd1 = {
        attn: (320, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    sd2 = {attn: (320, 1024), "cond_stage_model.model.token_embedding.weight": (49408, 1024)}
    assert detect_family(sd1) == "sd1"
    assert detect_family(sd2) == "sd2"
    with pytest.raises(ValueError, match="SDXL"):
        detect_family({**sd1, "conditioner.embedders.0.transformer.x": (1,)})
    with pytest.raises(ValueError, match="not a Stable Diffusion"):
        detect_family({"foo.weight": (3, 3)})
    with pytest.raises(ValueError, match="cannot tell"):
        detect_family({attn: (320, 32)})


class _NotATensor:
    pass


def test_pickle_checkpoints_need_opt_in(tiny_model_paths: dict[str, Path], tmp_path: Path) -> None:
    single = tiny_model_paths["single_file"]
    with safe_open(str(single), framework="pt") as f:
        metadata = f.metadata()
    ckpt = tmp_path / "tiny.ckpt"
    torch.save(
        {"state_dict": load_file(str(single)), CONFIG_METADATA_KEY: metadata[CONFIG_METADATA_KEY]},
        ckpt,
    )
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        load_components(ckpt)
    loaded = load_components(ckpt, allow_pickle=True)
    _assert_same_weights(loaded.unet, load_components(single).unet)

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _NotATensor()}, evil)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_components(evil, allow_pickle=True)


def test_bad_inputs_give_clear_errors(tiny_model_paths: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported checkpoint type"):
        load_components(other)
    with pytest.raises(ValueError, match=r"model_index\.json"):
        load_components(tmp_path)

    single = tiny_model_paths["single_file"]
    with safe_open(str(single), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(single))
    dropped = "model.diffusion_model.out.2.weight"
    del state[dropped]
    with pytest.raises(CheckpointKeyError, match=r"unet .*1 missing.*conv_out\.weight"):
        load_original_state_dict(state, metadata)

    bare = tmp_path / "bare.safetensors"  # tiny sizes and no config metadata
    save_file(load_file(str(single)), str(bare))
    with pytest.raises(CheckpointKeyError, match=r"bare\.safetensors: cannot tell the model "
                       r"family.*diffusers folder"):
        load_components(bare)


def test_non_standard_sizes_without_metadata_name_the_cause(
        tiny_model_paths: dict[str, Path], tmp_path: Path) -> None:
    """A file that looks like SD 1.x (768-wide context) but is not SD 1.5-sized, and carries
    no config metadata: the error says the shipped architecture was assumed and does not fit,
    not only which keys are missing."""
    state = load_file(str(tiny_model_paths["single_file"]))
    for key, tensor in list(state.items()):
        if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            state[key] = torch.zeros(tensor.shape[0], 768)
    bare = tmp_path / "odd-sd1.safetensors"
    save_file(state, str(bare))
    with pytest.raises(CheckpointKeyError, match=r"odd-sd1\.safetensors: a checkpoint without "
                       r"steerflow\.config metadata must have the standard SD 1\.5 architecture"
                       r".*unet weights do not match"):
        load_components(bare)


@pytest.mark.parametrize("damage", ["random", "empty", "header only", "cut short"])
def test_corrupt_safetensors_name_the_file(tiny_model_paths: dict[str, Path], tmp_path: Path,
                                          damage: str) -> None:
    """A truncated or corrupt file is a WeightsFileError naming it, not the library's bare
    "header too large"."""
    from nodes.diffusion.safetensors_io import WeightsFileError

    good = tiny_model_paths["single_file"].read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    data = {"random": bytes(range(256)) * 4, "empty": b"", "header only": good[:header_end],
            "cut short": good[: len(good) - 100]}[damage]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    broken = folder / "broken.safetensors"
    broken.write_bytes(data)
    with pytest.raises(WeightsFileError, match=r"checkpoints/broken\.safetensors is not a valid "
                                               r"safetensors file .*download or export it again"):
        load_components(broken)


@pytest.mark.parametrize("component", ["vae", "unet", "text_encoder"])
def test_a_truncated_component_of_a_folder_names_the_file(
        tiny_model_paths: dict[str, Path], tmp_path: Path, component: str) -> None:
    """diffusers said only "Unable to load weights from checkpoint file for '<path>'"
    (transformers a bare SafetensorError): the folder gets the single file's message."""
    import shutil

    from nodes.diffusion.safetensors_io import WeightsFileError

    folder = tmp_path / "checkpoints" / "cut"
    shutil.copytree(tiny_model_paths["diffusers"], folder)
    (weights,) = (folder / component).glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsFileError, match=rf"^cut: {component}/{weights.name} is not a "
                       r"valid safetensors file \(.*\): it may be truncated \(an interrupted "
                       r"download\) .*download or export it again$"):
        load_components(folder)


def test_ensure_default_model_builds_once(tmp_path: Path) -> None:
    folder = ensure_default_model(tmp_path)
    assert folder == tmp_path / "checkpoints" / "steerflow-tiny"
    single = tmp_path / "checkpoints" / "steerflow-tiny.safetensors"
    stamp = (folder / "model_index.json").stat().st_mtime_ns, single.stat().st_mtime_ns
    assert ensure_default_model(tmp_path) == folder
    assert stamp == ((folder / "model_index.json").stat().st_mtime_ns, single.stat().st_mtime_ns)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, single.name]


def test_every_weights_reader_names_a_corrupt_file(tmp_path: Path) -> None:
    """LoRAs, embeddings, upscale models and hypernetworks: the same WeightsFileError."""
    from nodes.diffusion.embeddings import load_embedding
    from nodes.diffusion.hypernetwork import _read_file as read_hypernetwork
    from nodes.diffusion.lora import read_lora_file
    from nodes.diffusion.safetensors_io import WeightsFileError
    from nodes.diffusion.upscale_model import read_state_dict

    bad = tmp_path / "loras" / "half.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" * 3)
    for read in (read_lora_file, load_embedding, read_state_dict,
                 lambda p: read_hypernetwork(p, allow_pickle=False)):
        with pytest.raises(WeightsFileError, match=r"loras/half\.safetensors is not a valid"):
            read(bad)


def test_a_folder_keeps_its_own_tokenizer_as_transformers_5_saves_it(tmp_path: Path) -> None:
    """transformers 5 saves tokenizer.json without vocab.json; the folder's settings must
    still win over the family's (an OpenCLIP-like encoder makes the family SD 2.x, whose
    default pads with "!": a drill saw 0.31 of pixel difference from that)."""
    import shutil

    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.diffusion.loading import load_components
    from nodes.diffusion.tiny import TEXT_CONFIG, build_tiny_pipeline

    pipe = build_tiny_pipeline()
    torch.manual_seed(0)
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(**{**TEXT_CONFIG, "hidden_act": "gelu"}))
    pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    assert not (tmp_path / "m" / "tokenizer" / "vocab.json").exists()
    tokenizer = load_components(tmp_path / "m").tokenizer
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("a red circle", padding="max_length").input_ids[-1] == 49407
    shutil.rmtree(tmp_path / "m" / "tokenizer")  # none of its own: the family's default
    assert load_components(tmp_path / "m").tokenizer.pad_token == "!"


def test_a_folder_of_fp16_variant_weights_loads(tmp_path: Path) -> None:
    """diffusers' save_pretrained(variant="fp16") names the files
    diffusion_pytorch_model.fp16.safetensors / model.fp16.safetensors: such a folder
    loads (it failed with diffusers' raw 'no file named ...')."""
    from nodes.diffusion.loading import load_components, weights_variant
    from nodes.diffusion.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "m", safe_serialization=True, variant="fp16")
    assert weights_variant(tmp_path / "m" / "unet") == {"variant": "fp16"}
    loaded = load_components(tmp_path / "m")
    for ours, theirs in ((loaded.unet, pipe.unet), (loaded.vae, pipe.vae),
                         (loaded.text_encoder, pipe.text_encoder)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(),
                                strict=True):
            assert torch.equal(a, b), name
    pipe.save_pretrained(tmp_path / "plain", safe_serialization=True)
    assert weights_variant(tmp_path / "plain" / "unet") == {}


def test_a_checkpoint_without_a_text_encoder_or_vae_loads_the_rest(
        tiny_model_paths: dict[str, Path], tmp_path: Path) -> None:
    """As in ComfyUI, a file without text encoder or VAE weights loads what it holds (the
    graph-level behaviour: tests/test_component_loaders.py)."""
    from nodes.diffusion.loading import load_components

    state = load_file(tiny_model_paths["single_file"])
    with safe_open(tiny_model_paths["single_file"], "pt") as fh:
        metadata = fh.metadata()
    full = load_components(tiny_model_paths["single_file"])
    for prefixes in (("cond_stage_model.",), ("first_stage_model.",),
                     ("cond_stage_model.", "first_stage_model.")):
        path = tmp_path / f"no-{'-'.join(p.rstrip('.') for p in prefixes)}.safetensors"
        save_file({k: v for k, v in state.items() if not k.startswith(prefixes)}, str(path),
                  metadata=metadata)
        loaded = load_components(path)
        assert (loaded.text_encoder is None) == ("cond_stage_model." in prefixes)
        assert (loaded.vae is None) == ("first_stage_model." in prefixes)
        assert loaded.latent_scale == full.latent_scale
        for a, b in zip(loaded.unet.state_dict().values(), full.unet.state_dict().values(),
                        strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("configs", "words"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"unet": {}, "vae": {}, "text_encoder": {}, "scheduler": {}}),
     "does not describe a model"),
    ("BIG", "does not fit the file's weights"),
    ("DEEP", "does not fit the file's weights"),
])
def test_mangled_config_metadata_is_a_clear_error(tiny_model_paths: dict[str, Path],
                                                  tmp_path: Path, configs: str,
                                                  words: str) -> None:
    """A single file's config metadata is read before any weight is checked: malformed
    JSON or configs that do not fit are clear errors, and a config asking for huge
    widths or depths is refused before a model is built from it (it asked for 16 TB)."""
    from nodes.diffusion.loading import load_components
    from nodes.diffusion.original_layout import CONFIG_METADATA_KEY
    from nodes.diffusion.safetensors_io import read_in_background

    single = tiny_model_paths["single_file"]
    with safe_open(single, "pt") as fh:
        metadata = fh.metadata()
    if configs in ("BIG", "DEEP"):
        real = json.loads(metadata[CONFIG_METADATA_KEY])
        if configs == "BIG":
            real["unet"]["block_out_channels"] = [1_000_000, 1_000_000]
        else:
            real["text_encoder"]["num_hidden_layers"] = 100_000
        configs = json.dumps(real)
    path = tmp_path / "mangled.safetensors"
    save_file(load_file(single), str(path), metadata={**metadata, CONFIG_METADATA_KEY: configs})
    for prefetched in (None, read_in_background(path)):
        with pytest.raises(ValueError, match=words):
            load_components(path, prefetched=prefetched)


def test_old_sd_scheduler_configs_are_corrected_as_the_sd_pipelines_do(
        tiny_model_paths: dict[str, Path], tmp_path: Path) -> None:
    """StableDiffusionPipeline sets steps_offset 1 and clip_sample off when it loads; an
    old config's clip_sample true clamped DDIM's x0 (0.94 off the pipeline). The UNet
    loader corrects a single file's stored config as the checkpoint loaders do."""
    import shutil

    from nodes.diffusion.component_loading import load_unet

    folder = tmp_path / "old"
    shutil.copytree(tiny_model_paths["diffusers"], folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update(clip_sample=True, steps_offset=0)
    config_file.write_text(json.dumps(config))
    loaded = load_components(folder)
    assert loaded.scheduler_config["clip_sample"] is False
    assert loaded.scheduler_config["steps_offset"] == 1

    unet_file = tmp_path / "unet.safetensors"
    weights = {k: v.contiguous() for k, v in loaded.unet.state_dict().items()}
    from nodes.diffusion.original_layout import CONFIG_METADATA_KEY

    save_file(weights, unet_file, metadata={CONFIG_METADATA_KEY: json.dumps({
        "unet": {k: v for k, v in loaded.unet.config.items() if not k.startswith("_")},
        "scheduler": config})})
    _, scheduler, family = load_unet(unet_file)
    assert family == "sd1"
    assert (scheduler["clip_sample"], scheduler["steps_offset"]) == (False, 1)
