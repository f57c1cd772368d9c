"""The T2I-Adapter style model (TencentARC ``t2iadapter_style_sd14v1``) and its application.

:class:`StyleAdapter` is the original's ``StyleAdapter`` (same state-dict keys): learnt
style queries appended to a CLIP image tower's hidden states, a few pre-norm transformer
blocks (``nn.MultiheadAttention``, quick-GELU MLP, LayerNorms computed in float32), then
the queries' outputs through ``ln_post`` and a projection to the text width. The shipped
model reads CLIP ViT-L/14's ``last_hidden_state`` (257 tokens x 1024, the class token
included, before the post-layernorm: ComfyUI's ``clip_vision_output.last_hidden_state``)
and gives 8 tokens of 768, appended to an SD 1.x prompt's 77.

ComfyUI builds it with width 1024, context 768, 8 heads, 3 layers and 8 tokens; here the
sizes (not the 8 heads) are read from the weights, so smaller test models load as well.
FLUX Redux files (``redux_up``/``redux_down``) are recognised and refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodes.diffusion.clip_vision import ClipVisionOutput
from nodes.diffusion.handles import Conditioning

#: attention heads of the style adapter (ComfyUI's and TencentARC's ``num_head``)
STYLE_HEADS = 8
STRENGTH_TYPES = ("multiply", "attn_bias")
#: most images one Apply Style Model takes (each gives 8 tokens)
MAX_STYLE_IMAGES = 64


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (the original's fp16-safe LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-norm transformer block (CLIP's ``ResidualAttentionBlock``), batch first."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = _LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)),
                                              ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = _LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """CLIP image hidden states ``[N, T, width]`` → style tokens ``[N, tokens, context_dim]``."""

    def __init__(self, width: int = 1024, context_dim: int = 768, heads: int = STYLE_HEADS,
                 layers: int = 3, tokens: int = 8):
        super().__init__()
        if width % heads:
            raise ValueError(f"a style adapter {width} wide cannot have {heads} heads")
        scale = width ** -0.5
        # the original's attribute names (its state-dict keys), misspelling included
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])
        self.style_embedding = nn.Parameter(torch.randn(1, tokens, width) * scale)
        self.ln_post = _LayerNorm(width)
        self.ln_pre = _LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, context_dim))

    @property
    def width(self) -> int:
        return int(self.style_embedding.shape[-1])

    @property
    def tokens(self) -> int:
        return int(self.style_embedding.shape[1])

    @property
    def context_dim(self) -> int:
        return int(self.proj.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        queries = self.style_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        x = self.ln_pre(torch.cat((x, queries), dim=1))
        x = self.transformer_layes(x)
        return self.ln_post(x[:, -self.tokens:]) @ self.proj.to(x.dtype)


@dataclass(frozen=True, eq=False)
class StyleModel:
    """STYLE_MODEL: a loaded :class:`StyleAdapter` and the file it came from."""

    model: StyleAdapter
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or "the style model"

    def get_cond(self, output: ClipVisionOutput) -> torch.Tensor:
        """Style tokens ``[images, tokens, context_dim]`` from CLIP Vision Encode's output
        (its ``last_hidden_state``), as ComfyUI's ``StyleModel.get_cond``."""
        hidden = getattr(output, "last_hidden_state", None)
        if not isinstance(hidden, torch.Tensor):
            raise ValueError("clip_vision_output must come from CLIP Vision Encode")
        model = self.model
        if hidden.dim() != 3 or hidden.shape[-1] != model.width:
            raise ValueError(
                f"{self.label} reads CLIP image hidden states {model.width} wide, but the "
                f"clip_vision_output's are {tuple(hidden.shape)}: encode the image with the "
                "CLIP vision model it was made for (CLIP ViT-L/14, 1024 wide, for the SD 1.4 "
                "style adapter)")
        if hidden.shape[0] > MAX_STYLE_IMAGES:
            raise ValueError(f"{hidden.shape[0]} images in clip_vision_output; a style model "
                             f"takes at most {MAX_STYLE_IMAGES} (8 tokens each)")
        param = next(model.parameters())
        with torch.no_grad():
            return model(hidden.to(device=param.device, dtype=param.dtype))


def apply_style(conditioning: Conditioning, tokens: torch.Tensor, strength: float,
                strength_type: str) -> Conditioning:
    """ComfyUI's StyleModelApply: every image's tokens flattened into one row ``[1, n, dim]``
    and appended to each entry's; ``multiply`` scales them by ``strength``, ``attn_bias``
    weighs their keys by ``strength`` in cross-attention (a ``log(strength)`` bias)."""
    if strength_type not in STRENGTH_TYPES:
        raise ValueError(f"strength_type must be one of {STRENGTH_TYPES}, got {strength_type!r}")
    from nodes.diffusion.token_weights import append_tokens

    tokens = tokens.reshape(1, -1, tokens.shape[-1])
    if strength_type == "multiply":
        tokens = tokens * strength
    weight = strength if strength_type == "attn_bias" else 1.0
    entries = []
    for entry in conditioning.entries:
        width = int(entry.embeds.shape[-1])
        if width != tokens.shape[-1]:
            raise ValueError(
                f"the style model gives {tokens.shape[-1]}-wide tokens but the conditioning's "
                f"text states are {width} wide: the T2I style adapter is for SD 1.x "
                "prompts (768); this conditioning is from another model family (SDXL: 2048, "
                "SD 2.x: 1024)")
        entries.append(append_tokens(entry, tokens, weight))
    return Conditioning(tuple(entries))


# --- loading ------------------------------------------------------------------------------

_REDUX_KEYS = ("redux_up.weight", "redux_down.weight")
#: the sizes a file may declare (ComfyUI's model: 1024 wide, 768 context, 3 layers, 8 tokens)
STYLE_LIMITS = {"width": (8, 4096), "context_dim": (8, 4096), "layers": (1, 32),
                "tokens": (1, 256)}


def _refuse(name: str, state_dict: dict[str, Any]) -> None:
    """A clear error for files that are not a T2I style adapter, saying what they are."""
    keys = set(state_dict)
    if keys & set(_REDUX_KEYS):
        raise ValueError(f"{name} is a FLUX Redux style model; Steerflow runs no FLUX models, "
                         "so only the T2I-Adapter style model (t2iadapter_style_sd14v1, SD "
                         "1.x) can be used with Apply Style Model")
    if "style_embedding" in keys:
        return
    hint = ""
    if any(k.startswith(("body.", "conv_in.", "adapter.")) for k in keys):
        hint = (" It looks like a T2I-Adapter control model: put it in models/controlnet "
                "and use Apply T2I-Adapter.")
    elif any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        hint = " It looks like an IP-Adapter: put it in models/ipadapter."
    elif any(k.startswith(("model.diffusion_model.", "down_blocks.")) for k in keys):
        hint = " It looks like a diffusion model: put it in models/checkpoints."
    raise ValueError(f"{name} is not a style model: no style_embedding (keys start "
                     f"{sorted(keys)[:3]}).{hint}")


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict[str, int]:
    """``StyleAdapter`` sizes from the weights' shapes (heads: ComfyUI's 8)."""
    style = state_dict["style_embedding"]
    proj = state_dict.get("proj")
    if style.dim() != 3 or proj is None or proj.dim() != 2 or proj.shape[0] != style.shape[-1]:
        raise ValueError("the style model's style_embedding / proj have unexpected shapes "
                         f"({tuple(style.shape)}, {None if proj is None else tuple(proj.shape)})")
    prefix = "transformer_layes."
    layers = {k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)}
    config = {"width": int(style.shape[-1]), "context_dim": int(proj.shape[1]),
              "layers": len(layers), "tokens": int(style.shape[1])}
    for key, (low, high) in STYLE_LIMITS.items():
        if not low <= config[key] <= high:
            raise ValueError(f"the style model's {key} is {config[key]}, outside {low}..{high} "
                             "(the T2I style adapter: width 1024, 3 layers, 8 tokens, 768 "
                             "context): not a style model this node can use")
    bad = [k for k, v in state_dict.items()
           if not v.is_floating_point() or not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"the style model's {bad[0]} is not finite floating-point weights")
    return config


def load_style_model(path: Path, *, allow_pickle: bool = False, device: Any = "cpu",
                     name: str | None = None) -> StyleModel:
    """Load a T2I style adapter from ``.safetensors`` (or, with ``allow_pickle``, the
    original ``.pth``), in float32 on ``device``."""
    from nodes.diffusion.loading import read_checkpoint_file
    from nodes.diffusion.memory import place_model

    label = name or path.name
    state_dict, _ = read_checkpoint_file(path, allow_pickle=allow_pickle)
    _refuse(label, state_dict)
    config = infer_config(state_dict)
    if config["width"] % STYLE_HEADS:
        raise ValueError(f"{label}: a style adapter {config['width']} wide cannot have "
                         f"{STYLE_HEADS} attention heads")
    with torch.device("meta"):
        model = StyleAdapter(**config)
    state_dict = {k: v.to(torch.float32) for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{label} does not have the T2I style adapter's layout: {exc}") from exc
    model.requires_grad_(False)
    return StyleModel(place_model(model, device, torch.float32), label)
