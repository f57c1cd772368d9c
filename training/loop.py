"""A resumable, seeded training loop shared by every stage (diffusers-example style).

A stage supplies its modules, an optimizer over the trainable ones and a
``loss(step)`` closure; the loop runs AdamW steps with an LR schedule, an
optional EMA, a tqdm bar, and writes checkpoints (modules + optimizer + LR
schedule + EMA + step + RNG states) every ``save_every`` steps. Batches must
depend only on the step (the shapes dataset is indexed by it) and randomness
only on the RNG states saved here, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)\.pt$")


@dataclass
class LoopConfig:
    """Settings of one stage's optimisation."""

    steps: int
    lr: float
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    ema_decay: float | None = None  # None: no EMA
    progress: bool = True
    #: stop after this step (the LR schedule still spans ``steps``): what a run of
    #: ``steps`` holds at that step, and a later call without it continues bit-identically
    stop_at: int | None = None
    #: wall-clock budget in seconds: stop (checkpointed, EMA kept) after the step that
    #: crosses it; for lent machines, where a run must end inside its lease
    max_seconds: float | None = None


@dataclass
class LoopResult:
    """Loss per step run in this call (resumed steps are not repeated), and timing."""

    losses: list[float] = field(default_factory=list)
    start_step: int = 0
    seconds: float = 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(1, len(self.losses))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _rng_state() -> dict[str, object]:
    state: dict[str, object] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]
    random.setstate(state["python"])  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])  # type: ignore[arg-type]


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in ``folder``, if any."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("checkpoint-*.pt")
             if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(path: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer,
                    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
                    ema: EMAModel | None) -> None:
    """Write everything a resume needs; written to a temporary name, then renamed."""
    state = {
        "step": step,
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": _rng_state(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer,
                    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
                    ema: EMAModel | None) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its step."""
    # Our own files, but still no pickled code: tensors, numbers and tuples only.
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    _set_rng_state(state["rng"])
    return int(state["step"])


def _prune(folder: Path, keep: int) -> None:
    found = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint-*.pt")
                   if (m := CHECKPOINT_PATTERN.search(p.name)))
    for _, path in found[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: LoopConfig
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.steps)
    return optimizer, scheduler


def train_loop(name: str, cfg: LoopConfig, modules: dict[str, torch.nn.Module],
               trainable: list[torch.nn.Parameter], loss_fn: Callable[[int], torch.Tensor],
               checkpoint_dir: Path, *, ema_params: list[torch.nn.Parameter] | None = None,
               ema: EMAModel | None = None) -> tuple[LoopResult, EMAModel | None]:
    """Run steps ``[resumed step, cfg.steps)`` (or up to ``cfg.stop_at``) of ``loss_fn``,
    checkpointing as it goes.

    ``modules`` are saved and restored whole (trained or not); ``trainable`` are
    optimised; ``ema_params`` (default: ``trainable``) get an EMA when
    ``cfg.ema_decay`` is set. Returns the losses of this call and the EMA.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    optimizer, lr_scheduler = make_optimizer(trainable, cfg)
    if ema is None and cfg.ema_decay is not None:
        # foreach: one fused update instead of a few kernels per tensor (launch-bound on GPU).
        ema = EMAModel(ema_params or trainable, decay=cfg.ema_decay, use_ema_warmup=True,
                       foreach=True)
    step = 0
    resume = latest_checkpoint(checkpoint_dir)
    if resume is not None:
        step = load_checkpoint(resume, modules, optimizer, lr_scheduler, ema)
        if ema is not None:
            ema.to(trainable[0].device)  # its shadow weights were read onto the CPU
    result = LoopResult(start_step=step)
    for module in modules.values():
        module.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=name, disable=not cfg.progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps
    while step < end:
        loss = loss_fn(step)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step}")
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(ema_params or trainable)
        step += 1
        result.losses.append(float(loss.item()))
        bar.update(1)
        if step % cfg.log_every == 0 or step == end:
            recent = result.losses[-cfg.log_every:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}",
                            lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            if not cfg.progress and step % (cfg.log_every * 5) == 0:
                # A plain line for logs, where a redrawn bar would be noise.
                elapsed = time.perf_counter() - t0
                print(f"{name} {step}/{cfg.steps} loss {sum(recent) / len(recent):.4f} "
                      f"{elapsed / (step - result.start_step):.3f} s/step", flush=True)
        if step % cfg.save_every == 0 or step == end:
            save_checkpoint(checkpoint_dir / f"checkpoint-{step}.pt", step, modules, optimizer,
                            lr_scheduler, ema)
            _prune(checkpoint_dir, cfg.keep_checkpoints)
        if cfg.max_seconds is not None and time.perf_counter() - t0 >= cfg.max_seconds:
            if step % cfg.save_every and step != end:
                save_checkpoint(checkpoint_dir / f"checkpoint-{step}.pt", step, modules,
                                optimizer, lr_scheduler, ema)
                _prune(checkpoint_dir, cfg.keep_checkpoints)
            print(f"{name}: stopped at step {step}/{cfg.steps}, the --max-seconds budget",
                  flush=True)
            break
    bar.close()
    result.seconds = time.perf_counter() - t0
    for module in modules.values():
        module.eval()
    return result, ema
