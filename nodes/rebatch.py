"""Rebatch Latents and Rebatch Images (ComfyUI's nodes_rebatch): regroup a list of
batches into batches of ``batch_size``.

Both take their input as a whole list (ComfyUI's ``INPUT_IS_LIST``: a node before them
that outputs a list, or a single batch) and output a list that the nodes after them run
on once per batch, e.g. to decode a large batch a few images at a time. Items keep their
order; a batch never mixes sizes, so an item of another size starts a new batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import ExecutionContext, Input, Node, Output
from nodes.diffusion.handles import Latent
from nodes.limits import check_latent

if TYPE_CHECKING:
    import torch

CATEGORY = "latent/batch"
MAX_BATCH = 4096


def _first(value: Any) -> Any:
    """A widget's value when the node takes its inputs as lists (one per call)."""
    return value[0] if isinstance(value, list | tuple) else value


def _groups(items: list[Any], key: Any, size: int) -> list[list[Any]]:
    """``items`` in order, cut into runs of at most ``size`` with one ``key`` each."""
    out: list[list[Any]] = []
    for item in items:
        if out and len(out[-1]) < size and key(out[-1][0]) == key(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


class RebatchLatents(Node):
    """Regroup latents (a list of LATENT batches) into batches of ``batch_size``. Each
    item keeps its noise mask (an item without one gets a full mask, repaint all, where
    others in its batch have one) and which seed of its batch it was (``batch_index``),
    so sampling a regrouped item gives the picture it had before."""

    TYPE = "RebatchLatents"
    DISPLAY_NAME = "Rebatch Latents"
    CATEGORY = CATEGORY
    INPUT_IS_LIST = True
    OUTPUTS = (Output("LATENT", is_list=True),)

    latents: Latent = Input(type="LATENT")
    batch_size: int = Input(1, min=1, max=MAX_BATCH)

    def execute(self, ctx: ExecutionContext) -> tuple[list[Latent]]:
        import torch

        from nodes.diffusion.masking import mask_to_latent

        latents = self.latents if isinstance(self.latents, list) else [self.latents]
        rows: list[tuple[torch.Tensor, torch.Tensor | None, int]] = []
        for n, latent in enumerate(latents):
            name = f"latents[{n}]"
            if type(latent) is not Latent or latent.inpaint is not None:
                raise ValueError(f"{name} carries per-sample state Rebatch Latents cannot "
                                 f"regroup (inpainting inputs, a technique's results): "
                                 f"rebatch before the node that made it")
            samples = latent.samples
            check_latent(samples, name)
            grid = tuple(samples.shape[-2:])
            mask = None if latent.noise_mask is None else \
                mask_to_latent(latent.noise_mask, grid).to(samples)
            index = latent.batch_index or tuple(range(samples.shape[0]))
            for i in range(samples.shape[0]):
                row_mask = None if mask is None else mask[i % mask.shape[0]][None]
                rows.append((samples[i:i + 1], row_mask, index[i]))
        out = []
        for group in _groups(rows, lambda r: tuple(r[0].shape[1:]), int(_first(self.batch_size))):
            samples = torch.cat([r[0] for r in group])
            mask = None
            if any(r[1] is not None for r in group):
                mask = torch.cat([r[1] if r[1] is not None else torch.ones_like(r[0][:, :1])
                                  for r in group])
            out.append(replace(latents[0], samples=samples, noise_mask=mask,
                               batch_index=tuple(r[2] for r in group),
                               extension_results=()))
        return (out,)


class RebatchImages(Node):
    """Regroup images (a list of IMAGE batches) into batches of ``batch_size``, e.g. to
    upscale or save a large batch a few at a time."""

    TYPE = "RebatchImages"
    DISPLAY_NAME = "Rebatch Images"
    CATEGORY = "image/batch"
    INPUT_IS_LIST = True
    OUTPUTS = (Output("IMAGE", is_list=True),)

    images: Any = Input(type="IMAGE")
    batch_size: int = Input(1, min=1, max=MAX_BATCH)

    def execute(self, ctx: ExecutionContext) -> tuple[list[torch.Tensor]]:
        import torch

        images = self.images if isinstance(self.images, list) else [self.images]
        rows = []
        for n, batch in enumerate(images):
            if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
                raise ValueError(f"images[{n}] is not an IMAGE batch [B, H, W, C]")
            rows.extend(batch[i:i + 1] for i in range(batch.shape[0]))
        groups = _groups(rows, lambda r: tuple(r.shape[1:]), int(_first(self.batch_size)))
        return ([torch.cat(group) for group in groups],)


NODE_CLASSES = (RebatchLatents, RebatchImages)
