"""PhotoMaker v1 (TencentARC, Li et al. 2023): an SDXL prompt whose class word carries the
identity of reference photos.

The ID encoder (``photomaker-v1.bin``'s ``id_encoder.*`` keys): a CLIP ViT-L/14 image
tower in transformers' ``CLIPVisionModel`` layout (quick-GELU) whose pooled output (the
class token through the post-layernorm) goes through two bias-free projections,
``visual_projection`` (to CLIP-L's 768) and ``visual_projection_2`` (to bigG's 1280),
concatenated into one 2048-wide ID embedding per photo. ``fuse_module`` turns each copy
``e`` of the class word's prompt embedding (SDXL's 2048-wide token) and one photo's ID
embedding into::

    h = MLP1([e, id]) + e;   h = MLP2(h) + h;   out = LayerNorm(h)
    MLP(x) = fc2(GELU(fc1(LayerNorm(x))))          (erf GELU; MLP1 4096 -> 2048 -> 2048)

Sizes (widths, depth, image size, patch size) are read from the weights, so small test
models load; heads are hidden/64 as OpenAI's CLIP (16 for ViT-L/14).

Prompt handling (ComfyUI's ``PhotoMakerEncode`` and PhotoMaker's pipeline): the trigger
word ``photomaker`` (the first space-separated word equal to it) is removed from the
prompt; the token right before it is the class word's; with N photos that token is
repeated N times (the pipeline's ``num_id_images``), the prompt is encoded by both SDXL
encoders as usual (weights, ``embedding:``, long prompts), and photo k is fused into
copy k. The pooled output is bigG's, of the prompt without the trigger word.

``lora_weights.*`` (the UNet LoRA the pipeline also loads) is ignored, as ComfyUI's
loader does. PhotoMaker v2 files (``qformer_perceiver``: they need InsightFace face
embeddings, which ComfyUI does not support either) are refused with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodes.diffusion.clip_vision import CLIP_MEAN, CLIP_STD
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder
from nodes.diffusion.prompt_weighting import PromptTokens
from nodes.diffusion.sdxl import encode_tokens
from nodes.photomaker import TRIGGER_WORD

#: most reference photos one PhotoMaker Encode takes (each repeats the class token once)
MAX_ID_IMAGES = 32
#: most times longer than wide (or the reverse) a reference photo may be: the short side
#: is resized to the encoder's 224 before the centre crop, so a thin strip would grow huge
MAX_ASPECT = 16
_VISION = "vision_model."
_PATCH_KEY = _VISION + "embeddings.patch_embedding.weight"
_REQUIRED = (_PATCH_KEY, "visual_projection.weight", "visual_projection_2.weight",
             "fuse_module.mlp1.fc1.weight", "fuse_module.layer_norm.weight")
_DERIVED = (_VISION + "embeddings.position_ids",)


# --- the ID encoder ---------------------------------------------------------------------------

class _MLP(nn.Module):
    """LayerNorm, Linear, erf GELU, Linear; plus the input when ``residual``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, residual: bool):
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError(f"a residual MLP needs equal widths, got {in_dim} and {out_dim}")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.residual else out


class _FuseModule(nn.Module):
    """Class-word token + ID embedding → the fused token (see the module docstring)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp1 = _MLP(2 * dim, dim, dim, residual=False)
        self.mlp2 = _MLP(dim, dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        h = self.mlp1(torch.cat([tokens, id_embeds], dim=-1)) + tokens
        return self.layer_norm(self.mlp2(h))


class PhotoMakerIDEncoder(nn.Module):
    """PhotoMaker v1's ID encoder with the original's state-dict keys."""

    def __init__(self, vision_config: Any, projection_2_dim: int):
        super().__init__()
        from transformers import CLIPVisionModel

        hidden = int(vision_config.hidden_size)
        self.vision_model = CLIPVisionModel(vision_config)
        self.visual_projection = nn.Linear(hidden, int(vision_config.projection_dim), bias=False)
        self.visual_projection_2 = nn.Linear(hidden, projection_2_dim, bias=False)
        self.fuse_module = _FuseModule(int(vision_config.projection_dim) + projection_2_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.fuse_module.layer_norm.weight.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.vision_model.config.image_size)

    def id_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``[N, 3, S, S]`` → ID embeddings ``[N, embed_dim]``."""
        pooled = self.vision_model(pixel_values=pixels).pooler_output
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)],
                         dim=-1)

    def fuse(self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor,
             positions: list[int]) -> torch.Tensor:
        """``prompt_embeds`` ``[1, T, D]`` with the tokens at ``positions`` (one per ID
        embedding, in order) replaced by their fusion with ``id_embeds`` ``[N, D]``."""
        index = torch.tensor(positions, dtype=torch.long, device=prompt_embeds.device)
        tokens = prompt_embeds[0, index]
        fused = self.fuse_module(tokens, id_embeds.to(tokens.dtype))
        out = prompt_embeds.clone()
        out[0, index] = fused.to(out.dtype)
        return out


@dataclass(frozen=True, eq=False)
class PhotoMaker:
    """PHOTOMAKER: a loaded :class:`PhotoMakerIDEncoder` and the file it came from."""

    model: PhotoMakerIDEncoder
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or "the PhotoMaker model"

    @property
    def device(self) -> Any:
        from nodes.diffusion.memory import compute_device

        return compute_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


# --- images -----------------------------------------------------------------------------------

def check_id_images(image: Any) -> None:
    """A clear ValueError unless ``image`` is an IMAGE batch PhotoMaker can take."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be an IMAGE [B, H, W, C] (C 1, 3 or 4), got {shape}: "
                         "link a Load Image (or a batch of face photos)")
    count, height, width = (int(s) for s in image.shape[:3])
    if count < 1 or height < 1 or width < 1:
        raise ValueError(f"image is empty ({tuple(image.shape)}): link at least one photo")
    if count > MAX_ID_IMAGES:
        raise ValueError(f"image holds {count} photos; PhotoMaker takes at most "
                         f"{MAX_ID_IMAGES} (2-4 clear face photos work best)")
    if max(height, width) > MAX_ASPECT * min(height, width):
        raise ValueError(f"image is {width}x{height} px, over {MAX_ASPECT}x longer than wide: "
                         "crop the photos around the face, nearer to square")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image holds NaN or infinite values")


def preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """ComfyUI's ``clip_preprocess``: IMAGE ``[B, H, W, C]`` → ``[B, 3, size, size]``.

    Unless already ``size`` square: the short side resized to ``size`` (bicubic,
    antialiased, each side ``round(scale * side)``) and the centre square cut out; then
    quantised to 8 bits and normalised with CLIP's mean and std. Float32.
    """
    import torch.nn.functional as F

    check_id_images(image)
    pixels = image[..., :3] if image.shape[-1] >= 3 else image.expand(-1, -1, -1, 3)
    pixels = pixels.movedim(-1, 1).to(torch.float32)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = round(scale * height), round(scale * width)
        pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic", antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        pixels = pixels[..., top:top + size, left:left + size]
    pixels = torch.clamp(pixels * 255.0, 0.0, 255.0).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


# --- the prompt -------------------------------------------------------------------------------

def split_trigger(text: str) -> tuple[str, str]:
    """``(prefix, clean)``: the text before the trigger word and the text without it.

    As ComfyUI, the trigger is the first word of ``text.split(" ")`` equal to
    ``photomaker`` (lowercase, separated by single spaces)."""
    from nodes.photomaker import trigger_problem

    problem = trigger_problem(text)
    if problem is not None:
        raise ValueError(problem)
    words = text.split(" ")
    k = words.index(TRIGGER_WORD)
    return " ".join(words[:k]), " ".join(words[:k] + words[k + 1:])


def _repeat_token(tokens: PromptTokens, index: int, copies: int) -> PromptTokens:
    """``tokens`` with token ``index`` repeated ``copies`` times in place."""
    extra = copies - 1
    vectors: dict[int, torch.Tensor] = {}
    for i, vector in tokens.vectors.items():
        if i < index:
            vectors[i] = vector
        elif i == index:
            vectors.update({index + j: vector for j in range(copies)})
        else:
            vectors[i + extra] = vector
    return PromptTokens(
        ids=tokens.ids[:index + 1] + [tokens.ids[index]] * extra + tokens.ids[index + 1:],
        weights=(tokens.weights[:index + 1] + [tokens.weights[index]] * extra
                 + tokens.weights[index + 1:]),
        vectors=vectors)


def class_tokens(tokenizer: Any, text: str, copies: int, embeddings: Any = None
                 ) -> tuple[PromptTokens, int]:
    """The prompt's tokens without the trigger word, its class token repeated ``copies``
    times, and the index (in the tokens, BOS not counted) of the first copy."""
    from nodes.diffusion.prompt_weighting import parse_prompt_weights, tokenize_weighted

    prefix, clean = split_trigger(text)
    before = len(tokenize_weighted(tokenizer, parse_prompt_weights(prefix), embeddings))
    if before == 0:
        raise ValueError(f"text has nothing before {TRIGGER_WORD!r}: put the class word it "
                         "stands for (man, woman, boy, ...) right before it, e.g. "
                         "'photograph of a woman photomaker'")
    tokens = tokenize_weighted(tokenizer, parse_prompt_weights(clean), embeddings)
    return _repeat_token(tokens, before - 1, copies), before - 1


def check_clip(clip: Any) -> None:
    """A clear ValueError unless ``clip`` is the SDXL base model's CLIP."""
    if not isinstance(clip, TextEncoder):
        raise ValueError("clip must come from a checkpoint loader (an SDXL checkpoint)")
    if clip.text_encoder_2 is None:
        raise ValueError(f"PhotoMaker is for SDXL, but this CLIP is {clip.family!r} (one "
                         "text encoder): load an SDXL base checkpoint and use its CLIP")
    if clip.text_encoder is None:
        raise ValueError("PhotoMaker needs the SDXL base model's CLIP (CLIP-L and bigG); "
                         "the refiner's has only bigG: use the base checkpoint's CLIP")


def encode_prompt(clip: TextEncoder, text: str, copies: int,
                  embeddings_for: Callable[[int], Any] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(embeds [1, 77 * windows, dim_l + dim_g], pooled [1, p], class positions)``: the
    prompt without its trigger word, the class token repeated ``copies`` times, encoded by
    both SDXL encoders; the positions index the embeds' token axis."""
    from nodes.diffusion.lora import patched

    check_clip(clip)
    prepared = []
    for encoder, tokenizer in ((clip.text_encoder, clip.tokenizer),
                               (clip.text_encoder_2, clip.tokenizer_2)):
        width = int(encoder.get_input_embeddings().weight.shape[1])
        lookup = None if embeddings_for is None else embeddings_for(width)
        prepared.append(class_tokens(tokenizer, text, copies, lookup))
    (tokens_l, index), (tokens_g, index_g) = prepared
    if index != index_g:
        raise ValueError("the class word falls on different tokens for CLIP-L and bigG (an "
                         "embedding: name before it has different lengths for them): move "
                         "it after the trigger word")
    window = int(clip.tokenizer.model_max_length) - 2
    n = max(len(tokens_l), len(tokens_g), 1)
    windows = -(-n // window)
    with torch.no_grad():
        with patched(clip.text_encoder, clip.patches):
            z_l, _, _ = encode_tokens(clip.text_encoder, clip.tokenizer, tokens_l, clip,
                                      windows_min=windows)
        with patched(clip.text_encoder_2, clip.patches_2):
            z_g, pooled, _ = encode_tokens(clip.text_encoder_2, clip.tokenizer_2, tokens_g,
                                           clip, windows_min=windows)
    z = torch.cat([z_l.to(z_g.dtype), z_g], dim=-1).reshape(1, -1, z_l.shape[-1] + z_g.shape[-1])
    positions = [(i // window) * (window + 2) + i % window + 1
                 for i in range(index, index + copies)]
    return z, pooled, positions


def photomaker_encode(photomaker: PhotoMaker, image: torch.Tensor, clip: TextEncoder,
                      text: str, embeddings_for: Callable[[int], Any] | None = None
                      ) -> Conditioning:
    """PhotoMaker Encode: the SDXL conditioning of ``text`` with its class word fused with
    the identity of every photo in ``image`` (see the module docstring)."""
    if not isinstance(photomaker, PhotoMaker):
        raise ValueError("photomaker must come from Load PhotoMaker (PhotoMakerLoader)")
    check_id_images(image)
    check_clip(clip)
    model = photomaker.model
    copies = int(image.shape[0])
    embeds, pooled, positions = encode_prompt(clip, text, copies, embeddings_for)
    if embeds.shape[-1] != model.embed_dim:
        raise ValueError(
            f"{photomaker.label} fuses {model.embed_dim}-wide prompt tokens but this CLIP "
            f"gives {embeds.shape[-1]}-wide ones: PhotoMaker v1 is for SDXL base models "
            "(2048); use the checkpoint it was made for")
    device, dtype = photomaker.device, photomaker.dtype
    with torch.no_grad():
        pixels = preprocess(image.to(device), model.image_size).to(dtype)
        ids = model.id_embeds(pixels)
        fused = model.fuse(embeds.to(device=device, dtype=dtype), ids, positions)
    fused = fused.to(device=embeds.device, dtype=embeds.dtype)
    return Conditioning((CondEntry(fused, {"pooled_output": pooled}),))


# --- loading ----------------------------------------------------------------------------------

def _flatten(tree: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(key)] = value
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
    return out


def read_photomaker_file(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ID encoder's tensors (``id_encoder.`` stripped; ``lora_weights`` dropped) from a
    ``.safetensors`` file or, with ``allow_pickle``, the original ``photomaker-v1.bin``
    (``{"id_encoder": {...}, "lora_weights": {...}}``, read with ``weights_only``)."""
    from nodes.diffusion.loading import (
        PICKLE_SUFFIXES,
        UnsafeCheckpointError,
        read_checkpoint_file,
        torch_load_weights_only,
    )

    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle file, which can run arbitrary code when loaded: "
                "convert it to .safetensors, or opt in with --allow-pickle")
        obj = torch_load_weights_only(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{path.name} does not hold a state dict")
        state = _flatten(obj)
    else:
        state, _ = read_checkpoint_file(path, allow_pickle=allow_pickle)
    if any(k.startswith("id_encoder.") for k in state):
        state = {k[len("id_encoder."):]: v for k, v in state.items()
                 if k.startswith("id_encoder.")}
    for key in _DERIVED:
        state.pop(key, None)
    return state


def _refuse(name: str, state: dict[str, torch.Tensor]) -> None:
    """A clear error for files that are not a PhotoMaker v1 ID encoder."""
    keys = set(state)
    if any(k.startswith("qformer_perceiver.") for k in keys):
        raise ValueError(f"{name} is PhotoMaker V2, which needs InsightFace face embeddings "
                         "that ComfyUI's PhotoMaker nodes (and Steerflow's) do not compute: "
                         "use photomaker-v1 (photomaker-v1.bin, or a .safetensors copy)")
    missing = [k for k in _REQUIRED if k not in keys]
    if not missing:
        return
    hint = ""
    if keys and all(k.startswith("lora_weights.") or "lora" in k for k in keys):
        hint = " It holds only LoRA weights: load it with Load LoRA."
    elif _PATCH_KEY in keys and "fuse_module.mlp1.fc1.weight" not in keys:
        hint = " It looks like a CLIP vision model: put it in models/clip_vision."
    elif any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        hint = " It looks like an IP-Adapter: put it in models/ipadapter."
    raise ValueError(f"{name} is not a PhotoMaker model: no {missing[0]} (keys start "
                     f"{sorted(keys)[:3]}).{hint}")


def infer_config(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], int]:
    """``(CLIPVisionConfig dict, visual_projection_2 width)`` from the tensors' shapes."""
    from nodes.diffusion.clip_vision import infer_clip_config

    vision = {k: v for k, v in state.items()
              if k.startswith(_VISION) or k == "visual_projection.weight"}
    config = infer_clip_config(vision)
    proj_2 = state["visual_projection_2.weight"]
    fuse_dim = int(state["fuse_module.layer_norm.weight"].shape[0])
    if proj_2.dim() != 2 or fuse_dim != config["projection_dim"] + int(proj_2.shape[0]):
        raise ValueError(f"the PhotoMaker fuse module is {fuse_dim} wide but its projections "
                         f"give {config['projection_dim']} + {tuple(proj_2.shape)[:1]}")
    return config, int(proj_2.shape[0])


def load_photomaker(path: Path, *, allow_pickle: bool = False, device: Any = "cpu",
                    name: str | None = None) -> PhotoMaker:
    """Load a PhotoMaker v1 ID encoder (float32 on ``device``)."""
    from transformers import CLIPVisionConfig

    from nodes.diffusion.loading import _empty, _load_strict
    from nodes.diffusion.memory import place_model

    label = name or path.name
    state = read_photomaker_file(path, allow_pickle=allow_pickle)
    _refuse(label, state)
    try:
        config, proj_2 = infer_config(state)
    except KeyError as exc:
        raise ValueError(f"{label} is not a complete PhotoMaker model: no {exc}") from None
    vision_config = CLIPVisionConfig.from_dict(config)
    model = _empty(lambda: PhotoMakerIDEncoder(vision_config, proj_2))
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    try:
        model = _load_strict(f"PhotoMaker ({label})", model, state)
    except ValueError as exc:
        raise ValueError(f"{label} does not have PhotoMaker v1's layout: {exc}") from exc
    model.requires_grad_(False)
    return PhotoMaker(place_model(model, device, torch.float32), label)
