"""ComfyUI's ``comfy.model_management``: devices, memory and interrupts.

The device is the run's (:attr:`engine.Environment.device`); ComfyUI's
"intermediate" and offload device is the CPU. Interrupts are Steerflow's per-prompt
flag: :func:`throw_exception_if_processing_interrupted` raises
:class:`InterruptProcessingException`, a subclass of :class:`engine.Interrupted`,
so the prompt ends as interrupted, not failed. Model loading and patching
(``load_models_gpu``, ``ModelPatcher``) are not provided.
"""

from __future__ import annotations

from typing import Any

from comfy_compat import runtime
from engine.context import Interrupted


class InterruptProcessingException(Interrupted):
    """Raised inside a node when its prompt was interrupted."""


def get_torch_device() -> Any:
    import torch

    return torch.device(runtime.current_environment().device)


def get_torch_device_name(device: Any = None) -> str:
    return str(device if device is not None else get_torch_device())


def intermediate_device() -> Any:
    import torch

    return torch.device("cpu")


def unet_offload_device() -> Any:
    return intermediate_device()


def text_encoder_offload_device() -> Any:
    return intermediate_device()


def vae_offload_device() -> Any:
    return intermediate_device()


def unet_inital_load_device(*_args: Any, **_kwargs: Any) -> Any:
    return get_torch_device()


def text_encoder_device() -> Any:
    return get_torch_device()


def vae_device() -> Any:
    return get_torch_device()


def is_device_cpu(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cpu"


def is_device_mps(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "mps"


def is_device_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def cpu_mode() -> bool:
    return is_device_cpu(get_torch_device())


def soft_empty_cache(force: bool = False) -> None:
    """Return cached, unused GPU memory to the driver."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    """Free memory on ``dev`` in bytes (the run's device by default)."""
    import torch

    device = dev if dev is not None else get_torch_device()
    if is_device_cuda(device):
        free, _total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (free + reserved, reserved) if torch_free_too else free + reserved
    import os

    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return (free, 0) if torch_free_too else free


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt the running prompt (``value=False`` is a no-op: flags are per prompt)."""
    ctx = runtime.current_context()
    if value and ctx is not None:
        ctx.interrupt_flag.set()


def processing_interrupted() -> bool:
    ctx = runtime.current_context()
    return ctx is not None and ctx.interrupt_flag.is_set()


def throw_exception_if_processing_interrupted() -> None:
    ctx = runtime.current_context()
    if ctx is not None and ctx.interrupt_flag.is_set():
        raise InterruptProcessingException(ctx.prompt_id)
