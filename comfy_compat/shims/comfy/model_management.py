"""ComfyUI's ``comfy.model_management``: devices, memory and interrupts.

The device is the run's (:attr:`engine.Environment.device`); ComfyUI's
"intermediate" and offload device is the CPU. Interrupts are Steerflow's per-prompt
flag: :func:`throw_exception_if_processing_interrupted` raises
:class:`InterruptProcessingException`, a subclass of :class:`engine.Interrupted`,
so the prompt ends as interrupted, not failed. Model loading and patching
(``load_models_gpu``, ``ModelPatcher``, dtype policies) are not provided: naming them
raises an ``AttributeError`` that says so. ``unload_all_models`` / ``free_memory``
return cached GPU memory (Steerflow's model cache is the engine's, not the pack's).
"""

from __future__ import annotations

from typing import Any

from comfy_compat import runtime
from comfy_compat.shims._missing import missing_attributes
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


def unload_all_models() -> None:
    """ComfyUI drops its loaded models; here the pack's cached GPU memory is returned
    (Steerflow's models live in the engine's cache, which it manages itself)."""
    soft_empty_cache()


def free_memory(memory_required: int, device: Any, keep_loaded: Any = ()) -> list[Any]:
    """ComfyUI unloads models until ``memory_required`` bytes are free on ``device``;
    here cached GPU memory is returned and nothing is unloaded."""
    soft_empty_cache()
    return []


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    """Total memory on ``dev`` in bytes (the run's device by default)."""
    import torch

    device = dev if dev is not None else get_torch_device()
    if is_device_cuda(device):
        total = torch.cuda.get_device_properties(device).total_memory
        return (total, torch.cuda.memory_reserved(device)) if torch_total_too else total
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (total, 0) if torch_total_too else total


def intermediate_dtype() -> Any:
    import torch

    return torch.float32


def is_intel_xpu() -> bool:
    return is_device_type(get_torch_device(), "xpu")


def is_directml_enabled() -> bool:
    return False


def is_device_type(device: Any, kind: str) -> bool:
    return getattr(device, "type", str(device)) == kind


def get_autocast_device(dev: Any) -> str:
    return getattr(dev, "type", "cuda")


def should_use_fp16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    """Whether fp16 compute suits ``device``: a CUDA device, not the CPU or MPS."""
    return is_device_cuda(device if device is not None else get_torch_device())


def should_use_bf16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    import torch

    device = device if device is not None else get_torch_device()
    return is_device_cuda(device) and torch.cuda.is_bf16_supported()


def xformers_enabled() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


# ComfyUI's model loading and dtype policy, placeholders (inpaint-nodes imports
# cast_to_device at its top)
COMFY_NAMES = ("load_models_gpu", "load_model_gpu", "LoadedModel", "current_loaded_models",
               "cleanup_models", "cast_to_device", "cast_to", "vae_dtype", "unet_dtype",
               "text_encoder_dtype", "unet_manual_cast", "module_size", "VRAMState",
               "vram_state", "supports_fp8_compute", "device_supports_non_blocking",
               "sage_attention_enabled", "flash_attention_enabled", "pick_weight_dtype")
_missing = missing_attributes(
    __name__, "ComfyUI's model loading and patching (ModelPatcher) are internals",
    COMFY_NAMES)


def __getattr__(name: str) -> Any:
    # OOM_EXCEPTION (what packs catch around a large allocation) is torch's, read on
    # first use: this module is imported without torch (nodes.interrupt_processing).
    if name == "OOM_EXCEPTION":
        import torch

        return torch.cuda.OutOfMemoryError
    return _missing(name)
