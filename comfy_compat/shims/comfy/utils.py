"""ComfyUI's ``comfy.utils``: progress bars, resizing and loading weights.

- :class:`ProgressBar` reports to the running node's ``progress`` event (which also
  honours an interrupt, as ComfyUI's progress hook does).
- :func:`common_upscale` resizes ``[B, C, H, W]`` with nearest-exact, bilinear, area,
  bicubic or lanczos (PIL, per channel in float, so values are not rounded to
  8 bits as ComfyUI's are), after an optional center crop to the target aspect.
- :func:`load_torch_file` reads safetensors, or a torch file with
  ``weights_only=True`` (never unpickling code, whatever ``safe_load`` says).
"""

from __future__ import annotations

from typing import Any

from comfy_compat import runtime

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
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
    """Resize ``samples`` ``[B, C, H, W]`` to ``height`` x ``width``."""
    if upscale_method not in UPSCALE_METHODS:
        raise ValueError(f"upscale method {upscale_method!r} is not supported; use one of "
                         f"{', '.join(UPSCALE_METHODS)}")
    if crop not in CROP_METHODS:
        raise ValueError(f"crop {crop!r} is not supported; use 'disabled' or 'center'")
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if crop == "center":
        samples = _center_crop(samples, width, height)
    if upscale_method == "lanczos":
        return lanczos(samples, width, height)
    import torch.nn.functional as F

    return F.interpolate(samples, size=(height, width), mode=upscale_method)


def _center_crop(samples: Any, width: int, height: int) -> Any:
    """Crop the middle of ``samples`` to the aspect ratio of ``width`` x ``height``."""
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)


def lanczos(samples: Any, width: int, height: int) -> Any:
    """Lanczos resize of ``[B, C, H, W]`` with PIL, channel by channel in float."""
    import numpy as np
    import torch
    from PIL import Image

    source = samples.detach().float().cpu().numpy()
    out = np.empty((*source.shape[:2], height, width), dtype=np.float32)
    for b in range(source.shape[0]):
        for c in range(source.shape[1]):
            plane = Image.fromarray(source[b, c], mode="F")
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out).to(device=samples.device, dtype=samples.dtype)


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
