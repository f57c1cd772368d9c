"""IP-Adapter (Ye et al. 2023): an image prompt through decoupled cross-attention.

Every cross-attention layer of the UNet gets its own key and value projections for
*image* tokens (``to_k_ip``, ``to_v_ip``); the image tokens come from a CLIP image
encoder through a small projection (4 tokens from the projected image embedding for
IP-Adapter, 16 from the penultimate hidden states through a resampler for IP-Adapter
Plus, 257 for Full Face). The layer's output is its text attention plus ``scale`` times
the attention of the same queries over the image tokens::

    out = softmax(Q Kᵀ/√d) V + scale · softmax(Q K_ipᵀ/√d) V_ip

With classifier-free guidance the unconditional entry attends to the tokens of a
"negative" image: zeros in embedding space for IP-Adapter, the encoder's hidden states
of an all-zero (normalised) image for Plus, as diffusers' pipelines do.

Files are the original layout (``image_proj.*`` and ``ip_adapter.<n>.to_k_ip.weight``,
``n`` = 1, 3, 5, ... for the UNet's cross-attention layers in ``attn_processors`` order)
as safetensors, or the original ``.bin`` pickles when pickles are allowed; the image
projection is built by diffusers' own converter, so every variant diffusers loads
loads here. The extra attention is an :class:`AttentionHook` on the sampler's one
attention store: the UNet is never patched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.diffusion.attention import AttentionCall, AttentionHook, AttentionLayer
from nodes.diffusion.extensions import SamplerExtension, Step

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.clip_vision import ClipVision
    from nodes.diffusion.sampling import SamplingRun

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
#: what the projection reads from the CLIP image tower, by variant
HIDDEN_STATE_KINDS = ("plus", "full_face", "faceid_plus")


@dataclass(eq=False)
class IPAdapterModel:
    """IPADAPTER: the image projection and each cross-attention layer's K/V for image
    tokens (``layers[k]`` for the k-th cross-attention layer in ``attn_processors``
    order)."""

    image_proj: Any  # a diffusers image projection module
    layers: list[tuple[Any, Any]]  # (to_k_ip, to_v_ip) Linear modules
    kind: str  # "plain" | "plus" | "full_face" | "faceid" | "faceid_plus"
    cross_attention_dim: int
    name: str = ""

    @property
    def uses_hidden_states(self) -> bool:
        """Whether the projection reads the penultimate hidden states (Plus, Full Face)
        rather than the projected image embedding."""
        return self.kind in HIDDEN_STATE_KINDS

    def to(self, device: Any, dtype: Any = None) -> IPAdapterModel:
        self.image_proj.to(device=device, dtype=dtype)
        for k, v in self.layers:
            k.to(device=device, dtype=dtype)
            v.to(device=device, dtype=dtype)
        return self


def read_ip_adapter_file(path: Path, *, allow_pickle: bool = False
                         ) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a safetensors file (keys
    prefixed ``image_proj.`` / ``ip_adapter.``) or an original ``.bin``."""

    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(f"IP-Adapter {path.name} is a pickle file; use its .safetensors "
                             "version or opt in to loading pickles (--allow-pickle)")
        from nodes.diffusion.loading import torch_load_weights_only

        data = torch_load_weights_only(path)
        if not (isinstance(data, dict) and isinstance(data.get("image_proj"), dict)
                and isinstance(data.get("ip_adapter"), dict)):
            raise ValueError(f"{path.name} is not an IP-Adapter (no image_proj / ip_adapter "
                             "state dicts)")
        return {"image_proj": dict(data["image_proj"]), "ip_adapter": dict(data["ip_adapter"])}
    from safetensors import safe_open

    from nodes.diffusion.safetensors_io import checked

    out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with checked(path), safe_open(str(path), framework="pt", device="cpu") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            part, _, rest = key.partition(".")
            if part in out and rest:
                out[part][rest] = fh.get_tensor(key)
    if not out["image_proj"] or not out["ip_adapter"]:
        raise ValueError(f"{path.name} is not an IP-Adapter: it needs image_proj.* and "
                         "ip_adapter.* weights")
    return out


def _kind(image_proj: dict[str, Any]) -> str:
    """The variant, by the keys diffusers' converter tells them apart by."""
    if "proj.weight" in image_proj:
        return "plain"
    if "proj.3.weight" in image_proj:
        return "full_face"
    if "perceiver_resampler.proj_in.weight" in image_proj:
        return "faceid_plus"
    if "norm.weight" in image_proj:
        return "faceid"
    if "latents" in image_proj:
        return "plus"
    raise ValueError("unknown IP-Adapter image projection (none of proj.weight, proj.3.weight, "
                     "latents, norm.weight)")


def build_ip_adapter(state: dict[str, dict[str, torch.Tensor]], unet: Any,
                     name: str = "") -> IPAdapterModel:
    """The model from its state dicts, checked against ``unet``'s cross-attention layers."""
    import torch

    kind = _kind(state["image_proj"])
    if kind in ("faceid", "faceid_plus"):
        raise ValueError("IP-Adapter FaceID needs InsightFace face embeddings, which Steerflow "
                         "does not compute; use IP-Adapter, Plus or Full Face")
    # diffusers' converter builds the projection; it reads nothing of the UNet
    image_proj = unet._convert_ip_adapter_image_proj_to_diffusers(
        state["image_proj"], low_cpu_mem_usage=False)
    layers = cross_attention_layers(unet)
    weights = state["ip_adapter"]
    pairs: list[tuple[Any, Any]] = []
    cross_dim = int(unet.config.cross_attention_dim)
    for k, (layer, hidden) in enumerate(layers):
        key = 2 * k + 1
        to_k, to_v = weights.get(f"{key}.to_k_ip.weight"), weights.get(f"{key}.to_v_ip.weight")
        if to_k is None or to_v is None:
            raise ValueError(f"this IP-Adapter has no weights for cross-attention layer {k} "
                             f"({layer}): it was made for another UNet ({len(layers)} "
                             "cross-attention layers here)")
        for t, what in ((to_k, "to_k_ip"), (to_v, "to_v_ip")):
            if tuple(t.shape) != (hidden, cross_dim):
                raise ValueError(f"IP-Adapter {what} of layer {k} is {tuple(t.shape)}, this "
                                 f"UNet needs ({hidden}, {cross_dim}): it was made for "
                                 "another model family")
        linears = []
        for t in (to_k, to_v):
            lin = torch.nn.Linear(cross_dim, hidden, bias=False)
            with torch.no_grad():
                lin.weight.copy_(t.float())
            linears.append(lin.requires_grad_(False))
        pairs.append((linears[0], linears[1]))
    if f"{2 * len(layers) + 1}.to_k_ip.weight" in weights:
        raise ValueError(f"this IP-Adapter has more cross-attention layers than this UNet "
                         f"({len(layers)}): it was made for another model family")
    out_dim = _projection_width(image_proj)
    if out_dim is not None and out_dim != cross_dim:
        raise ValueError(f"this IP-Adapter makes {out_dim}-wide image tokens, this UNet reads "
                         f"{cross_dim}: it was made for another model family")
    return IPAdapterModel(image_proj.requires_grad_(False).eval(), pairs, kind, cross_dim,
                          name)


def _projection_width(image_proj: Any) -> int | None:
    norm = getattr(image_proj, "norm", None) or getattr(image_proj, "norm_out", None)
    shape = getattr(getattr(norm, "weight", None), "shape", None)
    return int(shape[0]) if shape else None


def cross_attention_layers(unet: Any) -> list[tuple[str, int]]:
    """``(processor name, hidden size)`` of each cross-attention layer, in
    ``attn_processors`` order (the numbering of IP-Adapter files)."""
    modules = dict(unet.named_modules())
    out = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        module = modules[name[:-len(".processor")]]
        out.append((name, int(module.to_q.out_features)))
    return out


def image_embeds(model: IPAdapterModel, clip: ClipVision, images: torch.Tensor,
                 crop: str = "center", negative: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` inputs of the projection for IMAGE ``[N, H, W, C]``:
    ``[1, N, D]`` embeddings (IP-Adapter) or ``[1, N, T, W]`` hidden states (Plus). The
    negative is the pipelines' blank image (zero embeddings; for Plus the encoding of
    zero pixels) unless a ``negative`` IMAGE is given."""
    import torch

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        if model.uses_hidden_states:
            return clip.model.vision_model(pixel_values=pixels,
                                           output_hidden_states=True).hidden_states[-2]
        out = clip.model.get_image_features(pixel_values=pixels) \
            if hasattr(clip.model, "get_image_features") else clip.model(
                pixel_values=pixels).image_embeds
        return getattr(out, "pooler_output", out)

    with torch.no_grad():
        pixels = clip.preprocess(images, crop)
        pos = encode(pixels)
        if negative is not None:
            neg = encode(clip.preprocess(negative, crop))
            neg = neg[:1].expand_as(pos) if neg.shape[0] != pos.shape[0] else neg
        elif model.uses_hidden_states:
            neg = encode(torch.zeros_like(pixels[:1])).expand_as(pos)
        else:
            neg = torch.zeros_like(pos)
    return pos.unsqueeze(0).float(), neg.unsqueeze(0).float()


def fit_masks(masks: torch.Tensor, images: int, latent_size: Sequence[int],
              warn: Callable[[str], Any] | None = None) -> torch.Tensor:
    """``[N, H, W]``: one mask per reference image (a single mask serves them all), at the
    latent's aspect ratio (diffusers' downsampling reads the grid from the mask's shape,
    so another aspect would misplace it: such a mask is stretched to 8x the latent, and
    ``warn`` says so)."""
    import torch.nn.functional as F

    if masks.shape[0] not in (1, images):
        raise ValueError(f"IP-Adapter: {masks.shape[0]} masks for {images} reference images; "
                         "give one mask, or one per image")
    masks = masks.float().expand(images, -1, -1) if masks.shape[0] == 1 else masks.float()
    height, width = (int(v) for v in latent_size)
    if abs(masks.shape[1] * width - masks.shape[2] * height) > max(height, width):
        if warn is not None:
            warn(f"IP-Adapter: the attn_mask ({masks.shape[2]}x{masks.shape[1]}) has another "
                 f"aspect ratio than the image ({8 * width}x{8 * height}); it is stretched "
                 "to fit. Draw it at the image's size to place it exactly")
        masks = F.interpolate(masks[:, None], size=(8 * height, 8 * width), mode="bilinear",
                              align_corners=False)[:, 0]
    return masks


def canvas_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[N, 1, 8H, 8W]``: the masks on the latent's pixel grid, which the region crops'
    state cuts to each crop (:func:`nodes.diffusion.multidiffusion.windowed_state`)."""
    import torch.nn.functional as F

    height, width = 8 * size[0], 8 * size[1]
    if tuple(masks.shape[-2:]) == (height, width):
        return masks[:, None]
    return F.interpolate(masks[:, None], size=(height, width), mode="bilinear",
                         align_corners=False)


def token_grid(tokens: int, latent: tuple[int, int]) -> tuple[int, int] | None:
    """The (h, w) of a ``tokens``-token layer of a UNet pass over ``latent``, or None."""
    from nodes.diffusion.attention import level_sizes

    return next(((h, w) for h, w in level_sizes(*latent, levels=5) if h * w == tokens), None)


def mask_weights(mask: torch.Tensor, grid: tuple[int, int] | None, tokens: int
                 ) -> torch.Tensor:
    """``[1, tokens, 1]``: ``mask`` ``[H, W]`` at a layer's token grid, bicubic, as
    diffusers' ``IPAdapterMaskProcessor.downsample`` (which guesses the grid from the
    mask's aspect ratio; the attention store knows it, so extreme shapes do not break)."""
    import torch.nn.functional as F

    if grid is None or grid[0] * grid[1] != tokens:
        from diffusers.image_processor import IPAdapterMaskProcessor

        try:
            return IPAdapterMaskProcessor.downsample(mask[None], 1, tokens, 1)
        except (ZeroDivisionError, RuntimeError) as exc:
            raise ValueError(f"the IP-Adapter mask ({mask.shape[1]}x{mask.shape[0]}) cannot "
                             "be fitted to this layer: give it the image's aspect ratio") from exc
    return F.interpolate(mask[None, None], size=tuple(grid), mode="bicubic")[0, 0] \
        .reshape(1, tokens, 1)


@dataclass(eq=False)
class _ImageTokenAttention(AttentionHook):
    """Adds ``scale · softmax(Q K_ipᵀ) V_ip`` to every cross-attention layer's output."""

    owner: IPAdapter
    layer_index: dict[str, int] = field(default_factory=dict)

    def selects(self, layer: AttentionLayer) -> bool:
        return layer.name in self.layer_index

    def on_output(self, call: AttentionCall, attended: torch.Tensor, value: torch.Tensor
                  ) -> torch.Tensor:
        state = call.run.state.get(self.owner)
        scale = state["scale"] if state else 0.0
        if not scale or call.query is None or call.module is None:
            return attended
        masks = state["masks"]
        if masks is None:
            return attended + scale * self._attend(call, state["tokens"], slice(None))
        # with masks, each image's tokens are attended apart and kept inside its mask
        # (diffusers' ip_adapter_masks)
        fitted = state["fitted"]  # masks at each token grid, made once per run
        grid = call.size
        latent = tuple(call.run.init_latents.shape[-2:])
        if latent != state["size"]:
            # a region's crop (Conditioning Set Area, mask bounds): the masks cut to it (the
            # crop's state holds them cropped), at the crop's own token grids
            masks = state["canvas_masks"][:, 0]
            grid = token_grid(call.query_tokens, latent)
        for i, mask in enumerate(masks):
            out = self._attend(call, state["tokens"], slice(i, i + 1))
            key = (i, grid, call.query_tokens, latent)
            if key not in fitted:
                fitted[key] = mask_weights(mask, grid, call.query_tokens)
            attended = attended + scale * out * fitted[key].to(device=out.device,
                                                               dtype=out.dtype)
        return attended

    def _attend(self, call: AttentionCall, tokens: dict[str, torch.Tensor],
                images: slice) -> torch.Tensor:
        """``softmax(Q K_ipᵀ) V_ip`` over the tokens of ``images`` (``[1, N, T, dim]``),
        each batch role's own (the negative image's for the unconditional rows)."""
        import torch

        attn = call.module
        to_k, to_v = self.owner.model.layers[self.layer_index[call.layer.name]]
        per_role = call.batch // attn.heads // len(call.roles)
        rows = torch.cat([tokens["uncond" if role == "uncond" else "cond"][:, images]
                          .flatten(1, 2).expand(per_role, -1, -1) for role in call.roles])
        rows = rows.to(device=call.query.device, dtype=to_k.weight.dtype)
        key = attn.head_to_batch_dim(to_k(rows)).to(call.query.dtype)
        val = attn.head_to_batch_dim(to_v(rows)).to(call.query.dtype)
        return torch.bmm(attn.get_attention_scores(call.query, key, None), val)


class IPAdapter(SamplerExtension):
    """One IP-Adapter with its image, weight and step window, for one sampler run."""

    priority = 30  # reads only the attention store; no prediction is changed here
    label = "IP-Adapter"
    step_state_only = True  # pre_step sets this step's weight

    def __init__(self, model: IPAdapterModel, positive: torch.Tensor, negative: torch.Tensor,
                 weight: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                 masks: torch.Tensor | None = None):
        self.model = model
        self.masks = masks  # [N, H, W], one per reference image, or None
        self.canvas_masks = masks is not None
        self.positive, self.negative = positive, negative
        self.weight = float(weight)
        self.start_percent, self.end_percent = float(start_percent), float(end_percent)
        self._hook = _ImageTokenAttention(self)

    def setup(self, run: SamplingRun) -> None:
        import torch
        from diffusers.models.embeddings import MultiIPAdapterImageProjection

        from nodes.diffusion.controlnet import controlnet_keep

        unet = run.model.unet
        layers = cross_attention_layers(unet)
        if len(layers) != len(self.model.layers) or \
                int(unet.config.cross_attention_dim) != self.model.cross_attention_dim:
            raise ValueError(f"IP-Adapter {self.model.name or ''} was made for another UNet "
                             f"({len(self.model.layers)} cross-attention layers of width "
                             f"{self.model.cross_attention_dim}; this one has {len(layers)} "
                             f"of width {unet.config.cross_attention_dim})")
        self._hook.layer_index = {name: k for k, (name, _) in enumerate(layers)}
        self.model.to(run.device, torch.float32)
        project = MultiIPAdapterImageProjection([self.model.image_proj])
        with torch.no_grad():
            pos, neg = (project([e.to(run.device)])[0] for e in (self.positive, self.negative))
        # the steps it acts on, as a ControlNet's start / end percent (diffusers' rule)
        keep = controlnet_keep(run.schedule_length, self.start_percent, self.end_percent)
        # tokens [1, N, T, dim]: without masks all images' tokens are attended together
        masks = None if self.masks is None else fit_masks(self.masks, self.positive.shape[1],
                                                         run.init_latents.shape[-2:], run.warn)
        masks = None if masks is None else masks.to(run.device, torch.float32)
        size = tuple(int(v) for v in run.init_latents.shape[-2:])
        run.state[self] = {"tokens": {"cond": pos, "uncond": neg}, "masks": masks, "fitted": {},
                           "scale": 0.0, "keep": keep or [1.0], "size": size,
                           "canvas_masks": None if masks is None else canvas_masks(masks, size)}

    def attention_hooks(self, run: SamplingRun) -> Sequence[AttentionHook]:
        # weight 0 or an empty window: the layers keep their own processors (no change
        # at all, not even the classic attention math's last bits)
        return (self._hook,) if self.weight and any(run.state[self]["keep"]) else ()

    def pre_step(self, run: SamplingRun, step: Step, latents: torch.Tensor) -> torch.Tensor:
        keep = run.state[self]["keep"]
        run.state[self]["scale"] = self.weight * keep[min(run.schedule_index(step),
                                                          len(keep) - 1)]
        return latents

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)
