"""Extra UNet input channels concatenated after the latents, per batch role.

Several model families take a condition as channels on the UNet's input rather
than through attention: inpainting (mask + masked image latents, 9 channels),
Instruct Pix2Pix (the input image's latents, 8), Depth2Image (a depth map, 5).
:class:`ConcatChannels` is the one mechanism they share. Each batch role
(``uncond``, ``cond``, ``extra:<n>``) may see different channels — Instruct
Pix2Pix's unconditional entry sees zeros — and an extension's own UNet pass (SAG,
Pix2Pix-Zero) gets the channels of the roles it declares, read from the
attention store. ``latent_input`` stays the plain latent: what a ControlNet sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun


#: UNets that take channels besides the latents, by ``in_channels``: what the model is
#: and the node that supplies the extra channels (named when a run leaves them out).
CONCAT_UNETS: dict[int, tuple[str, str]] = {
    5: ("a depth-to-image model (latents + a depth map)", "Depth2Image Conditioning"),
    7: ("the Stable Diffusion x4 upscaler (latents + the low-res image)",
        "SD_4XUpscale_Conditioning"),
    8: ("an Instruct-Pix2Pix model (latents + the input image's latents)",
        "InstructPixToPixConditioning"),
    9: ("an inpainting model (latents + mask + masked image)",
        "VAE Encode (for Inpainting) or InpaintModelConditioning"),
}


def unet_kind(in_channels: int) -> tuple[str, str] | None:
    """``(what the model is, the node to use)`` for a UNet with extra input channels."""
    return CONCAT_UNETS.get(int(in_channels))


def check_input_channels(unet: Any, latent_channels: int,
                         extensions: Sequence[SamplerExtension]) -> None:
    """A UNet with extra input channels needs the extension that supplies them: say which
    node that is (not a convolution shape error), e.g. a plain text-to-image run on a
    depth model."""
    expected = int(getattr(unet.config, "in_channels", latent_channels))
    if expected == latent_channels or any(isinstance(e, ConcatChannels) for e in extensions):
        return
    what, node = unet_kind(expected) or (f"a model with {expected} input channels", "")
    hint = f"; sample it through {node}" if node else ""
    raise ValueError(f"this is {what}: its UNet takes {expected} input channels but the latent "
                     f"has {latent_channels}{hint}")


def match_batch(value: torch.Tensor, batch: int, what: str,
                against: str = "latent") -> torch.Tensor:
    """Repeat a batch of 1 to ``batch``; any other mismatch is an error."""
    if value.shape[0] == batch:
        return value
    if value.shape[0] == 1:
        return value.expand(batch, *value.shape[1:])
    raise ValueError(f"the {what} has a batch of {value.shape[0]} but the {against} has "
                     f"{batch}; use one {what} or one per {against}")


class ConcatChannels(SamplerExtension):
    """Concatenate channels after the latents on every UNet pass.

    Subclasses give the channels (``channels``, checked against the latent and the
    UNet's ``in_channels`` once per run) and may give a role its own
    (``channels_for_role``).
    """

    priority = 10  # fix the UNet's input layout before anything else reads it
    #: what the channels are, for error messages
    label = "conditioning image"

    def channels(self, run: SamplingRun) -> torch.Tensor:
        """``[1 or B, C, h, w]`` at the latent size."""
        raise NotImplementedError

    def channels_for_role(self, run: SamplingRun, role: str,
                          channels: torch.Tensor) -> torch.Tensor:
        return channels

    def setup(self, run: SamplingRun) -> None:
        latents = run.init_latents
        size = tuple(latents.shape[-2:])
        channels = self.channels(run)
        if tuple(channels.shape[-2:]) != size:
            raise ValueError(f"the {self.label} is {tuple(channels.shape[-2:])} in latent space "
                             f"but the latent is {size}; make both from the same image size")
        channels = match_batch(channels, latents.shape[0], self.label)
        total = latents.shape[1] + channels.shape[1]
        expected = int(run.model.unet.config.in_channels)
        if total != expected:
            raise ValueError(f"the UNet takes {expected} input channels but the latents and the "
                             f"{self.label} give {total}: is this the right model for this node?")
        run.state[self] = channels.to(device=run.device, dtype=run.dtype)

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        channels = run.state[self]
        roles = run.attention.roles  # the roles of this pass, main or an extension's own
        if call.sample.shape[0] != len(roles) * channels.shape[0]:
            raise RuntimeError(f"a UNet pass of {call.sample.shape[0]} rows does not match its "
                               f"roles {roles} with a batch of {channels.shape[0]}")
        parts = [self.channels_for_role(run, role, channels) for role in roles]
        call.sample = torch.cat([call.sample, torch.cat(parts)], dim=1)

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
