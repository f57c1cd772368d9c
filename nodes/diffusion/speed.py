"""The UNet run faster: compiled with ``torch.compile`` (TorchCompileModel) or in another
compute precision (ModelComputeDtype).

:class:`TorchCompile` is a sampler extension: the MODEL handle keeps the cached UNet as
it is, and the step's main pass (``unet_forward``) runs ``torch.compile(unet)`` instead,
made once per handle on its first pass and kept by the extension (torch's guards then
compile once per input shape and dtype and reuse that). Should compiling or running the
compiled UNet fail (inductor without a C compiler, a backend without its device, a hook
torch cannot trace), the run goes on uncompiled with a warning in the log, and so does
every later run of that handle.

:func:`cast_copy` makes the ModelComputeDtype's UNet: a copy with every floating weight
and buffer in the new dtype, made without a full-precision intermediate copy; the
cached UNet is never changed.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import TYPE_CHECKING, Any

from nodes.diffusion.extensions import SamplerExtension, Step, UNetCall, UNetForward

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.sampling import SamplingRun

logger = logging.getLogger(__name__)

COMPILE_BACKENDS = ("inductor", "cudagraphs")


class TorchCompile(SamplerExtension):
    """The main UNet pass through ``torch.compile`` with ``backend`` (eager on failure)."""

    # innermost of the unet_forward wrappers: it is the UNet call itself (EasyCache,
    # outside it, skips it whole)
    priority = -1000

    def __init__(self, backend: str = "inductor"):
        if backend not in COMPILE_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(COMPILE_BACKENDS)}, "
                             f"not {backend!r}")
        self.backend = backend
        self._lock = threading.Lock()
        #: the compiled UNet, by the id of the UNet it wraps (kept alive with it)
        self._compiled: dict[int, tuple[Any, Any]] = {}
        self._failed = False

    @property
    def failed(self) -> bool:
        """Whether compiling failed for this handle (its runs are eager since)."""
        return self._failed

    def compiled(self, unet: Any) -> Any:
        """``torch.compile(unet)`` for this handle, made once (compiling itself happens
        lazily, on the first call of each input shape)."""
        import torch

        with self._lock:
            entry = self._compiled.get(id(unet))
            if entry is None or entry[0] is not unet:
                entry = (unet, torch.compile(unet, backend=self.backend))
                self._compiled[id(unet)] = entry
                while len(self._compiled) > 4:  # a few UNets (ModelComputeDtype copies)
                    self._compiled.pop(next(iter(self._compiled)))
            return entry[1]

    def unet_forward(self, run: SamplingRun, step: Step, call: UNetCall,
                     forward: UNetForward) -> torch.Tensor:
        if self._failed:
            return forward(call)
        from nodes.limits import is_out_of_memory

        try:
            return call.forward(self.compiled(run.model.unet))
        except Exception as exc:  # compiling must never break a run: eager instead
            if isinstance(exc, RuntimeError) and is_out_of_memory(exc):
                raise
            self._failed = True
            logger.warning("TorchCompileModel: the %s backend failed (%s: %s); running "
                           "the UNet uncompiled", self.backend, type(exc).__name__,
                           str(exc).strip().splitlines()[0][:300] if str(exc) else "")
            return forward(call)


class ComputeDtypeCheck(SamplerExtension):
    """ModelComputeDtype's guard: an operation the device cannot run in the chosen dtype
    (``"... not implemented for 'Half'"``) becomes a clear error naming the fix."""

    priority = -2000  # innermost: around the UNet call itself

    def __init__(self, name: str):
        self.name = name

    def unet_forward(self, run: SamplingRun, step: Step, call: UNetCall,
                     forward: UNetForward) -> torch.Tensor:
        try:
            return forward(call)
        except (RuntimeError, NotImplementedError) as exc:
            if "not implemented for" not in str(exc):
                raise
            raise ValueError(
                f"ModelComputeDtype's dtype {self.name}: {run.model.unet.device} cannot run "
                f"this UNet in {self.name} ({str(exc).splitlines()[0][:200]}); choose bf16 "
                "or fp32 on this device") from exc


def weights_bytes(module: Any, dtype: torch.dtype) -> int:
    """The bytes of ``module``'s floating weights and buffers stored in ``dtype``."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * dtype.itemsize for t in tensors if t.is_floating_point())


def cast_copy(module: Any, dtype: torch.dtype) -> Any:
    """A deep copy of ``module`` whose floating parameters and buffers are in ``dtype``
    (each cast straight from the original: no intermediate full copy); ``module`` itself
    is left as it is."""
    import torch

    memo: dict[int, Any] = {}
    for param in module.parameters():
        if param.is_floating_point() and id(param) not in memo:
            memo[id(param)] = torch.nn.Parameter(param.detach().to(dtype),
                                                 requires_grad=param.requires_grad)
    for buffer in module.buffers():
        if buffer.is_floating_point() and id(buffer) not in memo:
            memo[id(buffer)] = buffer.detach().to(dtype)
    return copy.deepcopy(module, memo)
