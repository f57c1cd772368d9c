"""ComfyUI's ``comfy.utils``: progress bars, resizing and loading weights.

- :class:`ProgressBar` reports to the running node's ``progress`` event (which also
  honours an interrupt, as ComfyUI's progress hook does).
- :func:`common_upscale` resizes ``[B, C, H, W]`` with nearest-exact, bilinear, area,
  bicubic or lanczos (PIL, per channel in float, so values are not rounded to
  8 bits as ComfyUI's are), after an optional center crop to the target aspect.
- :func:`load_torch_file` reads safetensors, or a torch file with
  ``weights_only=True`` (never unpickling code, whatever ``safe_load`` says);
  :func:`save_torch_file` writes safetensors.
- State-dict and module helpers: :func:`state_dict_prefix_replace`, :func:`get_attr`,
  :func:`set_attr`, :func:`get_tiled_scale_steps`.

Other names (model conversion helpers and the like) raise an ``AttributeError`` that
names them.
"""

from __future__ import annotations

from typing import Any

from comfy_compat import runtime
from comfy_compat.shims._missing import missing_attributes

PROGRESS_BAR_ENABLED = True


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


class ProgressBar:
    """``ProgressBar(total)``; ``update(n)`` steps, ``update_absolute(value, total, preview)``.

    ``preview`` is ComfyUI's ``(format, PIL image, max_size)`` tuple or a PIL image.
    """

    def __init__(self, total: int, node_id: str | None = None):
        self.total = int(total)
        self.current = 0
        self.node_id = node_id
        self._ctx = runtime.current_context()  # packs may update from their own threads

    def update_absolute(self, value: int, total: int | None = None,
                        preview: Any = None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total)
        ctx = self._ctx or runtime.current_context()
        if ctx is None or not PROGRESS_BAR_ENABLED:
            return
        image = preview[1] if isinstance(preview, tuple) and len(preview) > 1 else preview
        ctx.progress(self.current, self.total, preview=image)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + int(value))


def common_upscale(samples: Any, width: int, height: int, upscale_method: str,
                   crop: str) -> Any:
    """Resize ``samples`` ``[B, C, H, W]`` to ``height`` x ``width``: Steerflow's own
    implementation of ComfyUI's function (:mod:`nodes.diffusion.resize`), bislerp
    included."""
    from nodes.diffusion.resize import common_upscale as resize

    return resize(samples, int(width), int(height), upscale_method, crop)


def lanczos(samples: Any, width: int, height: int) -> Any:
    from nodes.diffusion.resize import lanczos as resize

    return resize(samples, int(width), int(height))


def repeat_to_batch_size(tensor: Any, batch_size: int, dim: int = 0) -> Any:
    """Repeat (or cut) ``tensor`` along ``dim`` to ``batch_size`` items."""
    size = tensor.shape[dim]
    if size > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if size < batch_size:
        reps = [1] * tensor.dim()
        reps[dim] = -(-batch_size // size)
        return tensor.repeat(*reps).narrow(dim, 0, batch_size)
    return tensor


def reshape_mask(input_mask: Any, output_shape: Any, expand: bool = True) -> Any:
    """A mask brought to ``output_shape`` ``[B, C, *spatial]``: resized (linear, bilinear
    or trilinear for 1, 2 or 3 spatial dims), its batch repeated to ``B``, and, with
    ``expand``, its one channel repeated to ``C`` (ComfyUI's helper of that name)."""
    import torch.nn.functional as F

    dims = len(output_shape) - 2
    if dims not in (1, 2, 3):
        raise ValueError(f"reshape_mask: a shape of 1 to 3 spatial dims, got {output_shape}")
    mode = ("linear", "bilinear", "trilinear")[dims - 1]
    mask = input_mask.reshape((-1, 1, *input_mask.shape[-dims:]))
    mask = F.interpolate(mask.float(), size=tuple(output_shape[2:]), mode=mode)
    if expand and mask.shape[1] < output_shape[1]:
        mask = mask.repeat((1, output_shape[1]) + (1,) * dims)[:, :output_shape[1]]
    return repeat_to_batch_size(mask, int(output_shape[0]))


def load_torch_file(ckpt: str, safe_load: bool = False, device: Any = None,
                    return_metadata: bool = False) -> Any:
    """A state dict from a ``.safetensors`` file or a torch file (``weights_only=True``)."""
    import torch

    device = torch.device("cpu") if device is None else device
    metadata: dict[str, str] | None = None
    if str(ckpt).lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="pt", device=str(device)) as f:
            sd = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
            metadata = f.metadata() if return_metadata else None
    else:
        # weights_only=True always: a .ckpt/.pt must not run code on load.
        loaded = torch.load(str(ckpt), map_location=device, weights_only=True)
        sd = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd: dict[str, Any], ckpt: str, metadata: dict[str, str] | None = None
                    ) -> None:
    """Write a state dict as safetensors (with ``metadata``, string to string)."""
    from safetensors.torch import save_file

    save_file(sd, str(ckpt), metadata=metadata)


def state_dict_prefix_replace(state_dict: dict[str, Any], replace_prefix: dict[str, str],
                              filter_keys: bool = False) -> dict[str, Any]:
    """Rename keys that start with each ``replace_prefix`` key to start with its value.

    In place (the renamed keys are popped from ``state_dict``) unless ``filter_keys``,
    when a new dict of only the renamed keys is returned.
    """
    out: dict[str, Any] = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old):]] = state_dict.pop(key)
    return out


def get_attr(obj: Any, attr: str) -> Any:
    """``obj.a.b.c`` for ``attr="a.b.c"``."""
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    """Set ``obj.a.b.c = value`` for ``attr="a.b.c"``; returns the previous value."""
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    previous = getattr(obj, last)
    setattr(obj, last, value)
    return previous


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int,
                          overlap: int) -> int:
    """How many tiles of ``tile_x`` x ``tile_y`` (overlapping by ``overlap``) cover an
    image of ``width`` x ``height``: a progress bar's total for tiled processing."""
    import math

    rows = math.ceil(height / (tile_y - overlap)) if tile_y > overlap else 1
    cols = math.ceil(width / (tile_x - overlap)) if tile_x > overlap else 1
    return rows * cols


# ComfyUI helpers that run its models tile by tile, or convert its state dicts
COMFY_NAMES = ("tiled_scale", "tiled_scale_multidim", "calculate_parameters",
               "weight_dtype", "state_dict_key_replace", "transformers_convert",
               "clip_text_transformers_convert", "unet_to_diffusers", "flux_to_diffusers",
               "mmdit_to_diffusers", "copy_to_param", "set_attr_param", "bislerp",
               "set_progress_bar_global_hook", "resize_to_batch_size")
__getattr__ = missing_attributes(__name__, comfy_names=COMFY_NAMES)
