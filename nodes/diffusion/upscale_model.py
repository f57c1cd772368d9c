"""Upscale models (ESRGAN, SwinIR, HAT, Compact, ...) through spandrel, and ComfyUI's tiling.

spandrel detects a model's architecture and hyperparameters from its state dict and
builds it; it is what ComfyUI's Load Upscale Model uses, so the same files load here.

**Without torchvision.** spandrel 0.4.2 declares torchvision as a requirement, yet only
two of its 42 architectures import it: LaMa (inpainting) and RestoreFormer (face
restoration). But ``import spandrel`` builds its main registry eagerly, importing every
architecture, so without torchvision the whole package fails to import. When that
happens, :func:`spandrel_api` loads spandrel's package *without its* ``__init__`` (the
real modules, untouched: nothing of torchvision is stubbed) and builds its own
``spandrel.ArchRegistry`` of every architecture that imports, in the main registry's
order (read from spandrel's ``main_registry.py``, so an upgrade keeps it in step). A
LaMa or RestoreFormer file then fails with a message naming torchvision. Where
torchvision is installed, spandrel's own ``MAIN_REGISTRY`` is used as is.

Files: ``.safetensors``; pickles (``.pth``/``.pt``/``.ckpt``/``.bin``) only with the
allow-pickle opt-in, read with ``torch.load(weights_only=True)`` (never spandrel's own
unpickler or TorchScript loading).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.nbytes import register_members
from nodes.diffusion.interrupt_hooks import make_interruptible
from nodes.diffusion.loading import PICKLE_SUFFIXES, SAFE_SUFFIXES, UnsafeCheckpointError
from nodes.limits import is_out_of_memory
from nodes.upscale_model import UPSCALE_SUFFIXES

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: ComfyUI's ImageUpscaleWithModel: 512-pixel tiles overlapping by 32, halved on OOM
#: down to 128.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 128

#: Keys that identify the architectures that need torchvision (spandrel's own detection
#: conditions), to name the missing dependency instead of "unknown architecture".
_NEEDS_TORCHVISION = {
    "LaMa": (any, ("model.model.1.bn_l.running_mean", "generator.model.1.bn_l.running_mean")),
    "RestoreFormer": (all, ("quantize.embedding.weight", "encoder.conv_in.weight",
                            "quant_conv.weight", "decoder.conv_out.weight")),
}


class UnsupportedUpscaleModelError(ValueError):
    """The file is not a single-image model of an architecture spandrel can build here."""


@dataclass(frozen=True)
class SpandrelApi:
    """What Steerflow uses of spandrel, whichever way it was imported."""

    registry: Any  # spandrel.ArchRegistry
    image_descriptor: type  # spandrel.ImageModelDescriptor
    canonicalize: Callable[[dict[str, Any]], dict[str, Any]]
    unsupported_error: type[Exception]
    version: str
    #: architectures that could not be imported, with why (e.g. LaMa: torchvision)
    unavailable: Mapping[str, str]


@functools.cache
def spandrel_api() -> SpandrelApi:
    """spandrel's registry and descriptor types, importing spandrel once per process."""
    api = _import_spandrel()
    # the output cache weighs a descriptor by its model and can offload it like any model
    register_members(api.image_descriptor, lambda descriptor: [descriptor.model])
    return api


def _import_spandrel() -> SpandrelApi:
    try:
        import spandrel
    except ImportError as exc:
        if "torchvision" not in str(exc) and getattr(exc, "name", "") != "torchvision":
            raise
        return _without_torchvision()
    return SpandrelApi(spandrel.MAIN_REGISTRY, spandrel.ImageModelDescriptor,
                       spandrel.canonicalize_state_dict, spandrel.UnsupportedModelError,
                       spandrel.__version__, {})


def _main_registry_order(source: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(module, class, before)`` of each ``ArchSupport.from_architecture(M.C(), before=...)``
    in spandrel's ``MAIN_REGISTRY.add(...)``, in order."""
    entries: list[tuple[str, str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "MAIN_REGISTRY"):
            continue
        for arg in node.args:
            if not (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute)
                    and arg.func.attr == "from_architecture" and arg.args
                    and isinstance(arg.args[0], ast.Call)
                    and isinstance(arg.args[0].func, ast.Attribute)
                    and isinstance(arg.args[0].func.value, ast.Name)):
                raise RuntimeError("unexpected entry in spandrel's main registry: "
                                   + ast.unparse(arg))
            before: tuple[str, ...] = ()
            for kw in arg.keywords:
                if kw.arg == "before":
                    before = tuple(ast.literal_eval(kw.value))
            call = arg.args[0].func
            entries.append((call.value.id, call.attr, before))  # type: ignore[union-attr]
    if not entries:
        raise RuntimeError("spandrel's main registry lists no architecture")
    return entries


def _without_torchvision() -> SpandrelApi:
    """spandrel without its eager ``__init__``: the package module is created from its spec
    but not executed, so its submodules (and their ``from spandrel.util import ...``)
    import as usual; the registry holds every architecture that imports."""
    spec = importlib.util.find_spec("spandrel")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("spandrel is not installed")
    package = sys.modules.get("spandrel")
    if package is None:
        package = importlib.util.module_from_spec(spec)
        sys.modules["spandrel"] = package
    registry_mod = importlib.import_module("spandrel.__helpers.registry")
    descriptor_mod = importlib.import_module("spandrel.__helpers.model_descriptor")
    canonical_mod = importlib.import_module("spandrel.__helpers.canonicalize")
    root = Path(spec.submodule_search_locations[0])
    registry = registry_mod.ArchRegistry()
    unavailable: dict[str, str] = {}
    supports = []
    for module_name, class_name, before in _main_registry_order(
            (root / "__helpers" / "main_registry.py").read_text()):
        try:
            module = importlib.import_module(f"spandrel.architectures.{module_name}")
        except ImportError as exc:
            unavailable[module_name] = f"needs {exc.name or exc}"
            continue
        supports.append(registry_mod.ArchSupport.from_architecture(
            getattr(module, class_name)(), before=before))
    registry.add(*supports)
    version = "unknown"
    try:
        from importlib.metadata import version as dist_version

        version = dist_version("spandrel")
    except Exception:  # metadata missing: only the messages use it
        pass
    # The public names spandrel's __init__ would have set, those that need no main
    # registry, so `from spandrel import ImageModelDescriptor` works for custom nodes too.
    for name in ("ArchRegistry", "ArchSupport", "UnsupportedModelError",
                 "DuplicateArchitectureError"):
        setattr(package, name, getattr(registry_mod, name))
    for name in ("ImageModelDescriptor", "MaskedImageModelDescriptor", "ModelDescriptor",
                 "ModelBase", "Architecture", "ArchId", "SizeRequirements", "ModelTiling",
                 "StateDict", "Purpose", "UnsupportedDtypeError"):
        if hasattr(descriptor_mod, name):
            setattr(package, name, getattr(descriptor_mod, name))
    package.canonicalize_state_dict = canonical_mod.canonicalize_state_dict
    package.__version__ = version
    # Submodules imported by the failed `import spandrel` hang on the discarded package
    # object; hang them on this one so `spandrel.architectures.X` attribute access works.
    for full_name, module in list(sys.modules.items()):
        parent, _, child = full_name.rpartition(".")
        if parent == "spandrel" and not hasattr(package, child):
            setattr(package, child, module)
    if unavailable:
        log.info("spandrel %s without torchvision: %d architectures, not %s", version,
                 len(supports), ", ".join(f"{k} ({v})" for k, v in unavailable.items()))
    return SpandrelApi(registry, descriptor_mod.ImageModelDescriptor,
                       canonical_mod.canonicalize_state_dict, registry_mod.UnsupportedModelError,
                       version, unavailable)


def read_state_dict(path: Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """A model file's state dict: safetensors, or (opt-in) a pickle read with
    ``torch.load(weights_only=True)``; wrappers (``params_ema``, ``state_dict``, a
    ``module.`` prefix, ...) are removed as spandrel does."""
    from safetensors.torch import load_file

    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from nodes.diffusion.safetensors_io import checked

        with checked(path):
            data: Any = load_file(str(path), device="cpu")
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle file, which can run arbitrary code when loaded; "
                "convert it to .safetensors, or opt in to loading pickles (--allow-pickle: "
                "it is then read with torch.load(weights_only=True))")
        from nodes.diffusion.loading import torch_load_weights_only

        data = torch_load_weights_only(path)
    else:
        raise ValueError(f"unsupported upscale model file {path.name!r}: expected one of "
                         f"{', '.join(UPSCALE_SUFFIXES)}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{path.name} does not hold a state dict")
    return dict(spandrel_api().canonicalize(dict(data)))


def _needs_torchvision(state_dict: Mapping[str, Any], api: SpandrelApi) -> str | None:
    for arch, (quantifier, keys) in _NEEDS_TORCHVISION.items():
        if arch in api.unavailable and quantifier(k in state_dict for k in keys):
            return arch
    return None


def descriptor_from_state_dict(state_dict: dict[str, Any], name: str) -> Any:
    """spandrel's ``ImageModelDescriptor`` for ``state_dict`` (eval mode, on the CPU)."""
    api = spandrel_api()
    try:
        descriptor = api.registry.load(state_dict)
    except api.unsupported_error:
        arch = _needs_torchvision(state_dict, api)
        if arch is not None:
            raise UnsupportedUpscaleModelError(
                f"{name} is a {arch} model; spandrel's {arch} needs torchvision, which is not "
                "installed (no torchvision build fits this torch); every other architecture "
                "works without it") from None
        raise UnsupportedUpscaleModelError(
            f"{name} is not a model spandrel {api.version} recognises (ESRGAN, Real-ESRGAN, "
            "SwinIR, HAT, DAT, Compact/SRVGG, SPAN, OmniSR, ... are)"
            + (f"; unavailable here: {', '.join(api.unavailable)} (torchvision is not "
               "installed)" if api.unavailable else "")) from None
    if not isinstance(descriptor, api.image_descriptor):
        raise UnsupportedUpscaleModelError(
            f"{name} is a {descriptor.architecture.name} model "
            f"({type(descriptor).__name__}); an upscale model must be a single-image model")
    return descriptor.eval()


def load_upscale_model(path: Path, *, allow_pickle: bool = False,
                       device: torch.device | str = "cpu", budget: int | None = None) -> Any:
    """Load an upscale model file as spandrel's ``ImageModelDescriptor`` on ``device`` (kept
    on the CPU with sequential offload when bigger than ``budget`` bytes: :func:`place_model`)."""
    from nodes.diffusion.memory import place_model

    descriptor = descriptor_from_state_dict(
        read_state_dict(path, allow_pickle=allow_pickle), path.name)
    place_model(descriptor.model, device, budget=budget)
    make_interruptible(descriptor.model)  # one 512-pixel tile takes seconds on a CPU
    return descriptor


def tiled_steps(height: int, width: int, tile: int, overlap: int) -> int:
    """Tiles one image takes (ComfyUI's ``get_tiled_scale_steps``)."""
    def count(size: int) -> int:
        return 1 if size <= tile else len(range(0, size - overlap, tile - overlap))
    return count(height) * count(width)


def tiled_scale(image: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor],
                scale: int, out_channels: int, tile: int = DEFAULT_TILE,
                overlap: int = DEFAULT_OVERLAP,
                on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Upscale ``[B, C, H, W]`` by ``scale`` with ``function`` on overlapping tiles, blended
    with linear feathers over the scaled overlap (ComfyUI's ``tiled_scale``: tiles start
    every ``tile - overlap`` pixels, the last one is cut short at the border, an image
    that fits in one tile runs whole). ``on_tile`` is called after every tile."""
    import torch

    batch, _, height, width = image.shape
    out_shape = (1, out_channels, round(height * scale), round(width * scale))
    output = torch.empty((batch, *out_shape[1:]), device=image.device, dtype=image.dtype)
    feather = round(overlap * scale)
    for b in range(batch):
        sample = image[b:b + 1]
        if height <= tile and width <= tile:
            output[b:b + 1] = function(sample)
            if on_tile is not None:
                on_tile()
            continue
        acc = torch.zeros(out_shape, device=image.device, dtype=image.dtype)
        weight = torch.zeros(out_shape, device=image.device, dtype=image.dtype)
        rows = range(0, height - overlap, tile - overlap) if height > tile else [0]
        cols = range(0, width - overlap, tile - overlap) if width > tile else [0]
        for y0 in rows:
            for x0 in cols:
                y = max(0, min(height - overlap, y0))
                x = max(0, min(width - overlap, x0))
                part = sample[:, :, y:y + min(tile, height - y), x:x + min(tile, width - x)]
                scaled = function(part)
                mask = torch.ones_like(scaled)
                for dim in (2, 3):
                    size = mask.shape[dim]
                    if feather >= size:
                        continue
                    for t in range(feather):
                        ramp = (t + 1) / feather
                        mask.narrow(dim, t, 1).mul_(ramp)
                        mask.narrow(dim, size - 1 - t, 1).mul_(ramp)
                oy, ox = round(y * scale), round(x * scale)
                region = (slice(None), slice(None), slice(oy, oy + scaled.shape[2]),
                          slice(ox, ox + scaled.shape[3]))
                acc[region] += scaled * mask
                weight[region] += mask
                if on_tile is not None:
                    on_tile()
        output[b:b + 1] = acc / weight.clamp(min=1e-8)
    return output


@dataclass
class _TileCounter:
    total: int
    progress: Callable[[int, int], None] | None
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def upscale_image(descriptor: Any, image: torch.Tensor,
                  progress: Callable[[int, int], None] | None = None,
                  tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> torch.Tensor:
    """IMAGE ``[B, H, W, C]`` → ``[B, H·s, W·s, C]`` clamped to 0..1, as ComfyUI's
    ImageUpscaleWithModel: tiled, the tile halved on out-of-memory down to 128 pixels.
    ``progress(done, total)`` is called after each tile (and may raise to interrupt)."""
    import torch

    from nodes.diffusion.memory import compute_device

    channels = image.shape[-1]
    if channels != descriptor.input_channels:
        raise ValueError(
            f"this upscale model takes {descriptor.input_channels}-channel images, the image "
            f"has {channels} channels")
    param = next(iter(descriptor.model.parameters()), None)
    device = compute_device(descriptor.model) if param is not None else image.device
    dtype = param.dtype if param is not None else torch.float32
    pixels = image.movedim(-1, 1).to(device=device, dtype=dtype)
    while True:
        counter = _TileCounter(
            image.shape[0] * tiled_steps(image.shape[1], image.shape[2], tile, overlap),
            progress)
        try:
            with torch.no_grad():
                out = tiled_scale(pixels, descriptor, descriptor.scale,
                                  descriptor.output_channels, tile, overlap, counter.step)
            break
        except Exception as exc:
            if not is_out_of_memory(exc) or tile // 2 < MIN_TILE:
                raise
            tile //= 2
            log.info("upscale model: out of memory, retrying with %d-pixel tiles", tile)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return out.movedim(1, -1).clamp(0, 1).to(image.dtype)
