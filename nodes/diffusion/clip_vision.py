"""CLIP_VISION: a CLIP image tower (and, for a full CLIP, its text tower) as one handle.

ComfyUI's CLIP_VISION is an image encoder for IP-Adapter, unCLIP and style models.
Steerflow's handle also carries the text tower and tokenizer when the file holds a
whole ``CLIPModel``: CLIP guidance and the CLIPScore node compare images with text
in CLIP's joint space, which needs both towers.

Pre-processing is differentiable (``torch`` resize and normalisation, no PIL), so
gradient guidance can take the gradient of a CLIP loss through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor
else:
    Tensor = Any

#: OpenAI CLIP's image normalisation (``CLIPImageProcessor`` defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, eq=False)
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT, as ComfyUI's: ``image_embeds`` ``[B, D]`` (projected),
    ``last_hidden_state`` ``[B, T, W]`` (the encoder's output, before the post-layernorm)
    and ``penultimate_hidden_states`` ``[B, T, W]`` (the second-to-last layer's output,
    what IP-Adapter Plus and unCLIP read)."""

    image_embeds: Tensor
    last_hidden_state: Tensor
    penultimate_hidden_states: Tensor

    def __getitem__(self, key: str) -> Tensor:  # ComfyUI code indexes it like a dict
        return getattr(self, key)


@dataclass(frozen=True, eq=False)
class ClipVision:
    """CLIP_VISION: ``model`` is a transformers ``CLIPModel`` (both towers) or a
    ``CLIPVisionModelWithProjection`` (image tower only); ``tokenizer`` is set when the
    text tower is there."""

    model: Any
    tokenizer: Any = None
    name: str = ""
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def vision_config(self) -> Any:
        config = self.model.config
        return getattr(config, "vision_config", config)

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None and hasattr(self.model, "get_text_features")

    @property
    def device(self) -> Any:
        """Where the model computes (its weights stay on the CPU with sequential offload)."""
        from nodes.diffusion.memory import compute_device

        return compute_device(self.model)

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: Tensor, crop: str = "center") -> Tensor:
        """IMAGE ``[B, H, W, C]`` in 0..1 → normalised pixels ``[B, 3, S, S]``.

        ``crop="center"`` resizes the short side to S (bicubic) and takes the centre
        square, as ``CLIPImageProcessor`` does; ``"none"`` squashes the whole image to
        S x S (ComfyUI's ``crop: none``). Differentiable.
        """
        import torch
        import torch.nn.functional as F

        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an IMAGE [B, H, W, C], got shape {tuple(images.shape)}")
        pixels = images[..., :3] if images.shape[-1] >= 3 else images.expand(-1, -1, -1, 3)
        pixels = pixels.permute(0, 3, 1, 2).to(device=self.device, dtype=torch.float32)
        size = self.image_size
        height, width = pixels.shape[-2:]
        if crop == "center":
            scale = size / min(height, width)
            new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode="bicubic",
                                   align_corners=False, antialias=scale < 1)
            top, left = (new_h - size) // 2, (new_w - size) // 2
            pixels = pixels[..., top:top + size, left:left + size]
        elif crop == "none":
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic",
                                   align_corners=False, antialias=size < max(height, width))
        else:
            raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
        mean = torch.tensor(self.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.dtype)

    def image_embeds(self, images: Tensor, crop: str = "center") -> Tensor:
        """Projected image embeddings ``[B, D]`` (not normalised). Differentiable."""
        pixels = self.preprocess(images, crop)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixels)
        else:
            out = self.model(pixel_values=pixels).image_embeds
        return getattr(out, "pooler_output", out)

    def encode(self, images: Tensor, crop: str = "center") -> ClipVisionOutput:
        """The image tower's outputs for IMAGE ``[B, H, W, C]`` (CLIP Vision Encode)."""
        pixels = self.preprocess(images, crop)
        vision = getattr(self.model, "vision_model", None)
        out = vision(pixel_values=pixels, output_hidden_states=True)
        projection = self.model.visual_projection
        return ClipVisionOutput(image_embeds=projection(out.pooler_output),
                                last_hidden_state=out.last_hidden_state,
                                penultimate_hidden_states=out.hidden_states[-2])

    def text_embeds(self, texts: list[str]) -> Tensor:
        """Projected text embeddings ``[N, D]`` (not normalised)."""
        if not self.has_text:
            raise ValueError(f"{self.name or 'this CLIP vision model'} has no text tower: "
                             "load a full CLIP model (vision and text) for a text target")
        max_length = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                max_length=max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                           attention_mask=tokens.attention_mask.to(self.device))
        return getattr(out, "pooler_output", out)


def clip_score(clip: ClipVision, images: Tensor, texts: list[str], crop: str = "center"
               ) -> Tensor:
    """CLIPScore (Hessel et al. 2021, as torchmetrics' ``CLIPScore``): per image
    ``max(100 * cos(image embedding, text embedding), 0)``, ``[B]``. ``texts`` has one
    entry for all images or one per image."""
    import torch

    if len(texts) not in (1, images.shape[0]):
        raise ValueError(f"CLIPScore: {len(texts)} texts for {images.shape[0]} images; give "
                         "one text, or one per image")
    text = clip.text_embeds(texts).float()
    image = clip.image_embeds(images, crop).float()
    cos = torch.nn.functional.cosine_similarity(image, text.to(image.device), dim=-1)
    return (100.0 * cos).clamp(min=0.0)


# --- loading ------------------------------------------------------------------------------

#: Where :func:`save_clip_file` keeps the model's class and config in the file's metadata.
CLIP_METADATA_KEY = "steerflow.clip_config"
_VISION = "vision_model."
_TEXT = "text_model."
_PATCH_KEY = _VISION + "embeddings.patch_embedding.weight"
# Derived buffers that older transformers versions saved with the weights.
_DERIVED = ("vision_model.embeddings.position_ids", "text_model.embeddings.position_ids")


def load_clip_vision(path: Any, *, allow_pickle: bool = False, dtype: Any = None,
                     device: Any = "cpu", name: str | None = None,
                     budget: int | None = None) -> ClipVision:
    """Load a CLIP (both towers) or a CLIP vision model (image tower + projection).

    ``path`` is a single file with transformers key names (``vision_model.*``,
    ``visual_projection.weight`` and, for a whole CLIP, ``text_model.*``,
    ``text_projection.weight``, ``logit_scale``) — ComfyUI's ``clip_vision`` files are
    such vision-only files — or a transformers folder (``config.json`` + weights). The
    config comes from Steerflow's metadata or the folder's ``config.json``, else it is
    inferred from the tensor shapes (OpenAI's 64-wide attention heads, quick-GELU).
    Pickle files (``.bin``/``.pt``/...) are refused unless ``allow_pickle``. A model bigger
    than ``budget`` bytes stays on the CPU with sequential offload (:func:`place_model`).
    """
    import torch

    from nodes.diffusion.memory import place_model

    path = _as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP vision model not found: {path}")
    dtype = torch.float32 if dtype is None else dtype
    if path.is_dir():
        model, tokenizer = _load_clip_folder(path, allow_pickle=allow_pickle, dtype=dtype)
    else:
        model, tokenizer = _load_clip_file(path, allow_pickle=allow_pickle, dtype=dtype)
    place_model(model, device, dtype, budget=budget)
    # Guidance differentiates with respect to the image, never the weights.
    model.requires_grad_(False)
    return ClipVision(model, tokenizer, name or path.name)


def _as_path(path: Any) -> Any:
    from pathlib import Path

    return Path(path)


def _load_clip_file(path: Any, *, allow_pickle: bool, dtype: Any) -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from nodes.diffusion.loading import _cast_tensors, _empty, _load_strict, read_checkpoint_file

    state_dict, metadata = read_checkpoint_file(path, allow_pickle=allow_pickle)
    for key in _DERIVED:
        state_dict.pop(key, None)
    _check_clip_keys(path.name, state_dict)
    has_text = any(k.startswith(_TEXT) for k in state_dict)
    stored = _config_from_metadata(metadata)
    if stored is not None:
        kind, config_dict = stored
        has_text = kind == "CLIPModel"
    else:
        config_dict = infer_clip_config(state_dict)
    state_dict = _cast_tensors(state_dict, device="cpu", dtype=dtype)
    if has_text:
        config = CLIPConfig.from_dict(config_dict)
        if stored is None:
            state_dict.setdefault("logit_scale", _default_logit_scale(config))
        model = _load_strict("CLIP", _empty(lambda: CLIPModel(config)), state_dict)
        from nodes.diffusion.tokenizer import load_clip_tokenizer

        return model, load_clip_tokenizer()
    state_dict = {k: v for k, v in state_dict.items()
                  if k.startswith(_VISION) or k == "visual_projection.weight"}
    config = CLIPVisionConfig.from_dict(config_dict)
    model = _load_strict("CLIP vision", _empty(lambda: CLIPVisionModelWithProjection(config)),
                         state_dict)
    return model, None


def _check_clip_keys(filename: str, state_dict: dict[str, Any]) -> None:
    """Refuse files that are not a CLIP in transformers' layout, saying what they look like."""
    if _PATCH_KEY not in state_dict:
        sample = sorted(state_dict)[:3]
        hint = ""
        if any(k.startswith(("visual.", "model.visual.")) for k in state_dict):
            hint = " It looks like an OpenCLIP checkpoint; convert it to transformers' layout."
        elif any(k.startswith(("model.diffusion_model.", "down_blocks.")) for k in state_dict):
            hint = " It looks like a diffusion model; put it in models/checkpoints."
        raise ValueError(f"{filename} is not a CLIP vision model: no {_PATCH_KEY} "
                         f"(keys start {sample}).{hint}")
    if "visual_projection.weight" not in state_dict:
        raise ValueError(f"{filename} has a CLIP image tower but no visual_projection.weight: "
                         "a CLIPVisionModel without projection cannot give image embeddings")
    text_keys = [k for k in state_dict if k.startswith(_TEXT)]
    if text_keys and "text_projection.weight" not in state_dict:
        raise ValueError(f"{filename} has a CLIP text tower but no text_projection.weight")


def _config_from_metadata(metadata: dict[str, str] | None) -> tuple[str, dict[str, Any]] | None:
    import json

    if not metadata or CLIP_METADATA_KEY not in metadata:
        return None
    stored = json.loads(metadata[CLIP_METADATA_KEY])
    if stored.get("class") not in ("CLIPModel", "CLIPVisionModelWithProjection"):
        raise ValueError(f"{CLIP_METADATA_KEY} metadata names an unknown class "
                         f"{stored.get('class')!r}")
    return stored["class"], dict(stored["config"])


def _default_logit_scale(config: Any) -> Any:
    import torch

    return torch.tensor(float(config.logit_scale_init_value))


def _count_layers(state_dict: dict[str, Any], prefix: str) -> int:
    start = prefix + "encoder.layers."
    return len({k[len(start):].split(".")[0] for k in state_dict if k.startswith(start)})


def infer_clip_config(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A ``CLIPConfig`` (as a dict; its ``vision_config`` alone for a vision-only file)
    from tensor shapes. Heads are hidden/64 and the activation quick-GELU, as OpenAI's."""
    vision_hidden = int(state_dict[_VISION + "embeddings.class_embedding"].shape[0])
    patch = int(state_dict[_PATCH_KEY].shape[-1])
    positions = int(state_dict[_VISION + "embeddings.position_embedding.weight"].shape[0])
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ValueError(f"cannot infer the image size: {positions} position embeddings is not "
                         "a square grid of patches plus the class token")
    projection_dim = int(state_dict["visual_projection.weight"].shape[0])
    vision = {
        "hidden_size": vision_hidden,
        "intermediate_size": int(
            state_dict[_VISION + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _count_layers(state_dict, _VISION),
        "num_attention_heads": max(1, vision_hidden // 64),
        "num_channels": int(state_dict[_PATCH_KEY].shape[1]),
        "patch_size": patch,
        "image_size": grid * patch,
        "projection_dim": projection_dim,
        "hidden_act": "quick_gelu",
    }
    if not any(k.startswith(_TEXT) for k in state_dict):
        return vision
    token = state_dict[_TEXT + "embeddings.token_embedding.weight"]
    text_hidden = int(token.shape[1])
    text = {
        "vocab_size": int(token.shape[0]),
        "hidden_size": text_hidden,
        "intermediate_size": int(state_dict[_TEXT + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _count_layers(state_dict, _TEXT),
        "num_attention_heads": max(1, text_hidden // 64),
        "max_position_embeddings": int(
            state_dict[_TEXT + "embeddings.position_embedding.weight"].shape[0]),
        "projection_dim": projection_dim,
        "hidden_act": "quick_gelu",
    }
    return {"text_config": text, "vision_config": vision, "projection_dim": projection_dim}


def _load_clip_folder(path: Any, *, allow_pickle: bool, dtype: Any) -> tuple[Any, Any]:
    import json

    from transformers import CLIPModel, CLIPVisionModelWithProjection

    from nodes.diffusion.loading import _check_folder_weights
    from nodes.diffusion.tokenizer import folder_tokenizer

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path.name} is a folder but not a transformers model (no config.json)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    classes = {"clip": CLIPModel, "clip_vision_model": CLIPVisionModelWithProjection}
    if model_type not in classes:
        raise ValueError(f"{path.name} is not a CLIP model: config.json has model_type "
                         f"{model_type!r} (expected 'clip' or 'clip_vision_model')")
    _check_folder_weights(path, allow_pickle=allow_pickle)
    model = classes[model_type].from_pretrained(
        path, dtype=dtype, local_files_only=True,
        use_safetensors=True if not allow_pickle else None)
    if model_type != "clip":
        return model, None
    return model, folder_tokenizer(path)


def save_clip_file(model: Any, path: Any, *, metadata: bool = True, half: bool = False) -> None:
    """Write ``model`` (CLIPModel or CLIPVisionModelWithProjection) as one ``.safetensors``
    with transformers' key names; ``metadata`` stores its class and config (without it the
    loader infers the config, as for ComfyUI's files); ``half`` stores float16."""
    import json

    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16 if half else v.dtype).contiguous().clone()
               for k, v in model.state_dict().items() if k not in _DERIVED}
    meta = {"format": "pt"}
    if metadata:
        config = json.loads(model.config.to_json_string(use_diff=False))
        meta[CLIP_METADATA_KEY] = json.dumps(
            {"class": type(model).__name__, "config": config}, sort_keys=True)
    save_file(tensors, str(path), metadata=meta)
