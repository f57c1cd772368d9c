"""GLIGEN (Li et al. 2023): phrases grounded in boxes, with the math of diffusers'
``StableDiffusionGLIGENPipeline``.

A GLIGEN model adds a gated self-attention layer (``fuser``) after the self-attention
of every transformer block of an SD UNet, and a ``position_net`` that turns each box
(normalised xyxy, Fourier-embedded) and its phrase (the CLIP text encoder's pooled
output) into a grounding token. In diffusers a GLIGEN UNet is a
``UNet2DConditionModel(attention_type="gated")``; here the GLIGEN file holds only those
added weights (as ComfyUI's gligen files do) and the base checkpoint stays separate:
:class:`GLIGENGrounding` fits them to the run's UNet and attaches them for that run
only (:mod:`nodes.diffusion.module_patches`), then feeds the boxes to the UNet through
``cross_attention_kwargs["gligen"]`` as the pipeline does.

Boxes, as the pipeline batches them: up to 30 per conditioning, padded to 30 with
``masks`` 0; rows of the batch whose conditioning has no boxes (the unconditional half
with CFG, SEGA concepts, SAG's degraded pass) get masks 0 as well, so they see the
position net's learnt null tokens. Scheduled sampling (``gligen_scheduled_sampling_beta``):
the fusers act on the first ``int(beta * steps)`` steps, then the UNet runs without them.
Boxes are in pixels of the image as the user sized it: the latent times the 8x an Empty
Latent Image without its ``vae`` assumed (ComfyUI's rule, so its workflows keep their
boxes), else the downscale of the VAE the checkpoint loader paired with the UNet, else
SD's 8x; UNet passes on a crop of the latent (area prompts, MultiDiffusion
windows) run without grounding.

File layouts read (``models/gligen``): a ``.safetensors`` with diffusers' keys
``position_net.*`` and ``<block>.fuser.*`` (what filtering a diffusers GLIGEN UNet's
state dict gives; :func:`save_gligen` writes it); a whole diffusers GLIGEN UNet (a
folder, a pipeline folder's ``unet``, or its weights file), of which only those keys
are read; and ComfyUI's / the original repository's layout (``input_blocks.<i>.1.
transformer_blocks.<j>.fuser.*``, optionally under ``model.diffusion_model.``), mapped
onto the UNet's blocks when it is fitted. The text-image GLIGEN variant is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention import BasicTransformerBlock, GatedSelfAttentionDense
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection
from safetensors import safe_open

from nodes.diffusion import module_patches
from nodes.diffusion.combine import CombinedConditioning
from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall
from nodes.diffusion.loading import PICKLE_SUFFIXES, _empty, read_checkpoint_file
from nodes.diffusion.memory import compute_device, place_model
from nodes.diffusion.module_patches import ModulePatch
from nodes.diffusion.original_layout import LayoutError, unet_key_map
from nodes.diffusion.safetensors_io import checked

if TYPE_CHECKING:
    from nodes.diffusion.sampling import SamplingRun

#: the pipeline's ``max_objs``: grounding tokens per image
MAX_OBJS = 30
#: pixels per latent for the box coordinates when the UNet's VAE is unknown (SD's VAE, the
#: models GLIGEN exists for)
FAMILIES = ("sd1", "sd2")
FUSER = ".fuser."
POSITION = "position_net."
UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.")
DIFFUSERS_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")
ORIGINAL_BLOCKS = ("input_blocks.", "middle_block.", "output_blocks.")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class GLIGEN:
    """GLIGEN: the fusers' weights by transformer block, and the position net."""

    fusers: dict[str, StateDict]  # block path → its fuser's weights (keys after ".fuser.")
    layout: str  # "diffusers" (down_blocks...) or "original" (input_blocks...)
    position_net: Any  # GLIGENTextBoundingboxProjection
    name: str = ""
    #: fusers built for a UNet layout, device and dtype (see :func:`fit`)
    fitted: dict[Any, list[ModulePatch]] = field(default_factory=dict, repr=False)

    @property
    def phrase_dim(self) -> int:
        """Width of the phrase embeddings (the text encoder's pooled output)."""
        return int(self.position_net.positive_len)

    @property
    def context_dim(self) -> int:
        """Width of the grounding tokens: the UNet's cross-attention width."""
        return int(self.position_net.out_dim)

    @property
    def label(self) -> str:
        return self.name or "the GLIGEN model"


@dataclass(frozen=True, eq=False)
class GroundingBox:
    """One phrase in a box, in pixels of the generated image (ComfyUI's units)."""

    phrase: str
    embedding: torch.Tensor  # [phrase_dim]: the phrase's pooled text embedding
    x: int
    y: int
    width: int
    height: int

    def normalised(self, image_w: int, image_h: int) -> list[float]:
        """The pipeline's ``gligen_boxes`` entry: xyxy in 0..1."""
        return [self.x / image_w, self.y / image_h, (self.x + self.width) / image_w,
                (self.y + self.height) / image_h]


# --- files ----------------------------------------------------------------------------------

def _wanted(key: str) -> bool:
    return FUSER in key or key.startswith(POSITION) or f".{POSITION}" in key


def _folder_weights(folder: Path) -> list[Path]:
    """The weight files of a diffusers model folder (the plain, not fp16, variant first)."""
    plain = folder / "diffusion_pytorch_model.safetensors"
    if plain.is_file():
        return [plain]
    found = sorted(p for p in folder.glob("*.safetensors") if ".fp16." not in p.name)
    return found or sorted(folder.glob("*.safetensors")) or sorted(
        p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)


def read_gligen_state(path: Path, *, allow_pickle: bool = False) -> StateDict:
    """The GLIGEN tensors of a file or diffusers (UNet or pipeline) folder."""
    files = [path]
    if path.is_dir():
        folder = path / "unet" if (path / "model_index.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ValueError(f"{path.name} is a folder but not a diffusers UNet (no config.json)")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("attention_type") not in ("gated", None):
            raise ValueError(f"{path.name} is a {config['attention_type']!r} UNet; only the "
                             "text-box GLIGEN (attention_type 'gated') is supported")
        files = _folder_weights(folder)
        if not files:
            raise ValueError(f"no weights found in {folder}")
    state: StateDict = {}
    for file in files:
        if file.suffix.lower() == ".safetensors":  # read the GLIGEN keys only
            with checked(file), safe_open(str(file), framework="pt", device="cpu") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if _wanted(key):
                        state[key] = fh.get_tensor(key)
        else:
            tensors, _ = read_checkpoint_file(file, allow_pickle=allow_pickle)
            state.update((k, v) for k, v in tensors.items() if _wanted(k))
    return state


def gligen_from_state_dict(state: Mapping[str, torch.Tensor], name: str = "") -> GLIGEN:
    """Group the fusers by block and build the position net; a ValueError says what a file
    that is not a (text-box) GLIGEN lacks."""
    label = name or "the GLIGEN file"
    stripped: StateDict = {}
    for key, value in state.items():
        for prefix in UNET_PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    position = {k[len(POSITION):]: v for k, v in stripped.items() if k.startswith(POSITION)}
    if any(k.startswith(("linears_text.", "linears_image.")) for k in position):
        raise ValueError(f"{label} is a text-image GLIGEN; only the text-box GLIGEN is supported")
    if "null_positive_feature" not in position or "linears.4.weight" not in position:
        raise ValueError(f"{label} holds no GLIGEN position net (position_net.*): "
                         "not a GLIGEN file")
    fusers: dict[str, StateDict] = {}
    for key, value in stripped.items():
        if FUSER in key:
            block, sub = key.split(FUSER, 1)
            fusers.setdefault(block, {})[sub] = value
    if not fusers:
        raise ValueError(f"{label} holds no gated self-attention layers (*.fuser.*)")
    kinds = {"diffusers" if b.startswith(DIFFUSERS_BLOCKS) else
             "original" if b.startswith(ORIGINAL_BLOCKS) else "?" for b in fusers}
    if len(kinds) != 1 or "?" in kinds:
        raise ValueError(f"{label} names its layers in an unknown layout "
                         f"(e.g. {sorted(fusers)[0]}.fuser.*)")
    positive_len = int(position["null_positive_feature"].shape[0])
    out_dim = int(position["linears.4.weight"].shape[0])
    net = _empty(lambda: GLIGENTextBoundingboxProjection(positive_len, out_dim, "text-only"))
    try:
        net.load_state_dict({k: v.float() for k, v in position.items()}, strict=True,
                            assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{label}: its position net does not match GLIGEN's ({exc})") from exc
    return GLIGEN(fusers, kinds.pop(), net.eval(), name)


def load_gligen(path: Path, *, allow_pickle: bool = False,
                device: torch.device | str = "cpu", budget: int | None = None) -> GLIGEN:
    """Read a GLIGEN from a file or diffusers folder (see the module docstring). Its position
    net goes to ``device`` unless bigger than ``budget`` bytes (:func:`place_model`); the
    fusers stay CPU weights until :func:`fit` builds them for a UNet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GLIGEN model not found: {path}")
    gligen = gligen_from_state_dict(read_gligen_state(path, allow_pickle=allow_pickle),
                                    path.name)
    place_model(gligen.position_net, device, budget=budget)
    return gligen


def save_gligen(path: Path, unet: torch.nn.Module) -> None:
    """Write a gated (GLIGEN) diffusers UNet's ``position_net.*`` and ``*.fuser.*`` weights as
    one ``.safetensors`` file: Steerflow's GLIGEN file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in unet.state_dict().items()
               if _wanted(k)}
    if not any(FUSER in k for k in tensors):
        raise ValueError("this UNet has no GLIGEN layers (attention_type must be 'gated')")
    save_file(tensors, str(path), metadata={"format": "pt"})


# --- fitting to a UNet ----------------------------------------------------------------------

def _original_to_diffusers(unet: Any) -> dict[str, str]:
    """Original-layout attention prefixes (``input_blocks.1.1.``) → diffusers ones."""
    config = dict(unet.config)
    keys = {name for name, _ in unet.named_parameters()}
    try:
        mapping = unet_key_map(config, keys)
    except (LayoutError, KeyError) as exc:
        raise ValueError(f"an original-layout GLIGEN file cannot be mapped onto this UNet "
                         f"({exc})") from exc
    return {orig: diff for diff, (orig, _) in mapping.items() if ".attentions." in diff}


def _block_paths(gligen: GLIGEN, unet: Any) -> dict[str, str]:
    """The GLIGEN's block paths → the UNet's (diffusers) transformer block paths."""
    if gligen.layout == "diffusers":
        return {b: b for b in gligen.fusers}
    prefixes = _original_to_diffusers(unet)
    out = {}
    for block in gligen.fusers:
        head = next((p for p in prefixes if (block + ".").startswith(p)), None)
        out[block] = prefixes[head] + block[len(head):] if head else block
    return out


def fit(gligen: GLIGEN, unet: Any, family: str = "sd1") -> list[ModulePatch]:
    """The fusers and position net to attach to ``unet``, built once per UNet layout,
    device and dtype; a ValueError says why a GLIGEN does not fit the model."""
    label = gligen.label
    if family not in FAMILIES:
        raise ValueError(f"GLIGEN works with Stable Diffusion 1.x/2.x UNets; this model is "
                         f"{family!r}")
    blocks = {name: m for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)}
    cross = unet.config.cross_attention_dim
    if not blocks or not isinstance(cross, int):
        raise ValueError(f"{label} does not fit this model: its UNet has no SD-style "
                         "transformer blocks")
    if gligen.context_dim != cross:
        raise ValueError(f"{label} was made for a model with {gligen.context_dim}-wide text "
                         f"embeddings; this model has {cross} (a GLIGEN for another model?)")
    shapes = tuple((n, b.attn1.query_dim, b.attn1.heads, b.attn1.inner_dim) for n, b in
                   blocks.items())
    key = (shapes, unet.device, unet.dtype)
    if key in gligen.fitted:
        return gligen.fitted[key]
    paths = _block_paths(gligen, unet)
    by_block = {paths[b]: b for b in gligen.fusers}
    missing, extra = sorted(set(blocks) - set(by_block)), sorted(set(by_block) - set(blocks))
    if missing or extra:
        raise ValueError(
            f"{label} does not fit this model's blocks: the UNet has {len(blocks)} transformer "
            f"blocks, the file has layers for {len(by_block)}; missing "
            f"{missing[:3] or 'none'}, unknown {extra[:3] or 'none'} (a GLIGEN for another "
            "model?)")
    patches = []
    for path, block in blocks.items():
        attn = block.attn1
        fuser = _empty(lambda a=attn: GatedSelfAttentionDense(
            a.query_dim, cross, a.heads, a.inner_dim // a.heads))
        weights = gligen.fusers[by_block[path]]
        try:
            fuser.load_state_dict(weights, strict=True, assign=True)
        except RuntimeError as exc:
            raise ValueError(f"{label} does not fit this model: its layer for {path} has "
                             f"other sizes ({str(exc).splitlines()[-1].strip()})") from exc
        patches.append(ModulePatch(path, "fuser", fuser.to(unet.device, unet.dtype).eval()))
    net = gligen.position_net
    if compute_device(net) != unet.device or net.null_positive_feature.dtype != unet.dtype:
        net = _position_net_copy(net, unet.device, unet.dtype)  # the loaded one stays as it is
    patches.append(ModulePatch("", "position_net", net))
    gligen.fitted.clear()  # keep one fitted copy: a model is rarely used at two dtypes
    gligen.fitted[key] = patches
    return patches


def _position_net_copy(net: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A copy of the position net on ``device`` in ``dtype``, without the hooks of sequential
    offload that the loaded one may run with (:func:`~nodes.diffusion.memory.place_model`)."""
    out = _empty(lambda: GLIGENTextBoundingboxProjection(int(net.positive_len),
                                                         int(net.out_dim), "text-only"))
    weights = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype,
                       copy=True) for k, v in net.state_dict().items()}
    out.load_state_dict(weights, strict=True, assign=True)
    return out.eval()


# --- the sampler extension ------------------------------------------------------------------

def pixels_per_latent(unet: Any, latent: Any = None) -> int:
    """Image pixels per latent pixel, in the units the user sized the image in: the
    downscale an Empty Latent Image without its ``vae`` assumed (SD's 8, as ComfyUI: its
    workflows give boxes for that size), else that of the VAE the checkpoint loader
    paired with ``unet`` (a 4x VAE makes a 4x smaller image than SD's), else SD's 8
    (:func:`nodes.latent.downscale_of`)."""
    from nodes.latent import downscale_of

    return downscale_of(latent, None, unet)


@dataclass
class _Table:
    """One conditioning's boxes as the position net takes them, and its grounded steps."""

    boxes: torch.Tensor  # [MAX_OBJS, 4]
    embeds: torch.Tensor  # [MAX_OBJS, phrase_dim]
    masks: torch.Tensor  # [MAX_OBJS]
    steps: int


@dataclass
class _RunState:
    tables: dict[int, _Table]  # by id of the extension
    roles: dict[str, int] | None = None  # batch role → id of the extension grounding it
    inputs: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict)


class GLIGENGrounding(SamplerExtension):
    """Grounds one conditioning's phrases in its boxes (GLIGENTextBoxApply attaches it).

    Every conditioning entry with boxes carries one of these; the first in the run (the
    leader) fits the GLIGEN to the UNet, attaches it for the run and builds the position
    net's inputs for the whole batch, role by role.
    """

    handles_large_latents = True  # its boxes set the layout

    def __init__(self, gligen: GLIGEN, boxes: Sequence[GroundingBox], beta: float = 1.0):
        if len(boxes) > MAX_OBJS:
            raise ValueError(f"GLIGEN takes at most {MAX_OBJS} boxes per conditioning "
                             f"({len(boxes)} given)")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"gligen_scheduled_sampling_beta must be within 0..1, got {beta}")
        self.gligen = gligen
        self.boxes = tuple(boxes)
        self.beta = float(beta)

    def __cache_nbytes__(self) -> dict[str, int]:
        from engine.cache import value_nbytes

        return value_nbytes((self.gligen, [b.embedding for b in self.boxes]))

    def _leader(self, run: SamplingRun) -> GLIGENGrounding:
        return next(e for e in run.extensions if isinstance(e, GLIGENGrounding))

    def setup(self, run: SamplingRun) -> None:
        if self._leader(run) is not self:
            return
        grounding = [e for e in run.extensions if isinstance(e, GLIGENGrounding)]
        if any(e.gligen is not self.gligen for e in grounding):
            raise ValueError("one run can use one GLIGEN model; these conditionings carry "
                             "boxes of different GLIGEN models")
        unet = run.model.unet
        module_patches.attach(unet, fit(self.gligen, unet, run.model.family))
        scale = pixels_per_latent(unet, run.latent)
        h, w = (int(s) * scale for s in run.init_latents.shape[-2:])
        run.state[self] = _RunState({id(e): e._table(w, h, run.schedule_length, run)
                                     for e in grounding})

    def _table(self, image_w: int, image_h: int, steps: int, run: SamplingRun) -> _Table:
        boxes = torch.zeros(MAX_OBJS, 4)
        embeds = torch.zeros(MAX_OBJS, self.gligen.phrase_dim)
        masks = torch.zeros(MAX_OBJS)
        for i, box in enumerate(self.boxes):
            if box.x + box.width > image_w or box.y + box.height > image_h:
                raise ValueError(
                    f"GLIGEN box {box.phrase!r} (x {box.x}..{box.x + box.width}, y "
                    f"{box.y}..{box.y + box.height}) reaches outside the {image_w}x{image_h} "
                    "image; move or shrink it (GLIGEN boxes are in pixels of the image)")
            if box.embedding.shape[-1] != self.gligen.phrase_dim:
                raise ValueError(f"{self.gligen.label} takes {self.gligen.phrase_dim}-wide "
                                 f"phrase embeddings; the CLIP gave {box.embedding.shape[-1]}")
            boxes[i] = torch.tensor(box.normalised(image_w, image_h))
            embeds[i] = box.embedding.float()
            masks[i] = 1
        as_run = {"device": run.device, "dtype": run.dtype}
        return _Table(boxes.to(**as_run), embeds.to(**as_run), masks.to(**as_run),
                      int(self.beta * steps))

    def _roles(self, run: SamplingRun) -> dict[str, int]:
        """Batch role → the grounding extension of the conditioning entry that fills it."""
        combined = next((e for e in run.extensions if isinstance(e, CombinedConditioning)), None)
        # Conditioning Combine's entries are its extra rows, in order; region prompts'
        # rows are not (their entries are grounded only as the first entry of a side).
        extra = (list(run.roles_of(combined)) if combined is not None
                 and not getattr(combined, "regions", False) else [])
        slots: list[tuple[str, Any]] = [("cond", run.positive.entries[0])]
        if run.do_cfg:
            slots.append(("uncond", run.negative.entries[0]))
        rest = [*run.positive.entries[1:], *run.negative.entries[1:]]
        slots.extend(zip(extra, rest, strict=False))
        out = {}
        for role, entry in slots:
            ext = next((e for e in entry.options.get("extensions", ())
                        if isinstance(e, GLIGENGrounding)), None)
            if ext is not None:
                out[role] = id(ext)
        return out

    def unet_inputs(self, run: SamplingRun, step: Step, call: UNetCall) -> None:
        state: _RunState | None = run.state.get(self)
        if state is None:  # not the leader: it fills every row
            return
        if call.latent_input.shape[-2:] != run.init_latents.shape[-2:]:
            return  # a crop (area prompt, window): the boxes are for the whole image
        if state.roles is None:
            state.roles = self._roles(run)
        roles = run.attention.roles
        active = tuple(state.roles.get(r) if state.roles.get(r) is not None
                       and run.schedule_index(step) < state.tables[state.roles[r]].steps
                       else None
                       for r in roles)
        if all(a is None for a in active):
            return  # past scheduled sampling (or no grounded rows): the UNet skips its fusers
        per_role = call.sample.shape[0] // len(roles)
        key = (active, per_role)
        if key not in state.inputs:
            empty = next(iter(state.tables.values()))
            parts = [(state.tables[a] if a is not None else empty, a is not None)
                     for a in active]
            state.inputs[key] = {
                "boxes": torch.cat([t.boxes[None].expand(per_role, -1, -1) * on
                                    for t, on in parts]),
                "positive_embeddings": torch.cat([t.embeds[None].expand(per_role, -1, -1) * on
                                                  for t, on in parts]),
                "masks": torch.cat([t.masks[None].expand(per_role, -1) * on
                                    for t, on in parts]),
            }
        call.cross_attention_kwargs = {**(call.cross_attention_kwargs or {}),
                                       "gligen": dict(state.inputs[key])}

    def teardown(self, run: SamplingRun) -> None:
        run.state.pop(self, None)  # the fusers come off with the run's module scope
