"""Prompt encoding: text → CONDITIONING with the checkpoint's CLIP text encoder."""

from __future__ import annotations

import logging

import torch

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import CondEntry, Conditioning, TextEncoder

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_text(clip: TextEncoder, text: str) -> torch.Tensor:
    """Embeddings ``[1, 77, dim]`` exactly as diffusers' ``encode_prompt`` makes them."""
    tokenizer, encoder = clip.tokenizer, clip.text_encoder
    tokens = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    untruncated = tokenizer(text, padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] > tokens.input_ids.shape[-1]:
        log.warning("prompt is longer than %d tokens and was truncated",
                    tokenizer.model_max_length)
    attention_mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(encoder.device)
    out = encoder(tokens.input_ids.to(encoder.device), attention_mask=attention_mask)
    return out[0]


class CLIPTextEncode(Node):
    """Encode a prompt into conditioning for the sampler."""

    TYPE = "CLIPTextEncode"
    DISPLAY_NAME = "Encode Prompt"
    CATEGORY = "conditioning"
    OUTPUTS = (Output("CONDITIONING"),)

    text: str = Input("", multiline=True, description="The prompt")
    clip: TextEncoder = Input(type="CLIP")

    def execute(self, ctx: ExecutionContext) -> tuple[Conditioning]:
        return (Conditioning((CondEntry(encode_text(self.clip, self.text)),)),)


NODE_CLASSES = (CLIPTextEncode,)
