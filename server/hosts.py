"""Where the pool's workers run, and how one is started (:mod:`server.pool`).

A :class:`Slot` is one worker position of the pool; a :class:`WorkerHost` starts the
worker of a slot and returns its :class:`~server.worker.Channel`:

- :class:`LocalHost`: worker processes on this machine (the default: one; ``--workers
  N``: N, spread over ``--worker-devices``);
- ``steerflow.ray_worker.RayHost``: ``--ray``, Ray actors that connect back to the head.

Every worker gets :func:`worker_config` first and reports ``ready`` (:func:`wait_ready`)
before it is given a prompt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from server.config import ServerConfig
from server.prompt_queue import QueueItem
from server.runtime import POLL, Running
from server.worker import Channel, WorkerDied, WorkerProcess


class Slot:
    """One worker position in the pool: its channel, state and warm models."""

    def __init__(self, index: int):
        self.index = index
        self.name = f"w{index}"
        self.worker: Channel | None = None
        self.info: dict[str, Any] = {}
        self.models: set[str] = set()
        self.state = "starting"  # starting | idle | busy | down
        self.job: QueueItem | None = None  # the prompt it took, until done
        self.running: Running | None = None
        self.runs = 0
        self.failures = 0  # failed starts in a row: the back-off grows with them
        self.error: str | None = None
        self.thread: threading.Thread | None = None
        self.kind = "local"  # the host: "local" or "ray"
        # Files sent to its worker (a remote one), (role, name) -> (size, mtime_ns):
        # each is sent once per worker, again only when it changes on the head.
        self.sent: dict[tuple[str, str], tuple[int, int]] = {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.kind, "state": self.state,
                "pid": self.info.get("pid"),
                "device": self.info.get("device"), "runs": self.runs,
                "models": sorted(self.models), "error": self.error,
                "prompt_id": self.job.prompt_id if self.job else None}


class WorkerHost(Protocol):
    """Starts workers: returns a channel whose worker will report ``ready``."""

    def size(self) -> int: ...

    def start(self, slot: Slot, config: dict[str, Any]) -> Channel: ...

    def close(self) -> None: ...


class LocalHost:
    """Worker processes on this machine; ``devices`` spreads them over the GPUs."""

    kind = "local"

    def __init__(self, count: int, module: str, devices: list[str] | None = None):
        self.count = count
        self.module = module
        self.devices = devices or []

    def size(self) -> int:
        return self.count

    def start(self, slot: Slot, config: dict[str, Any]) -> Channel:
        if self.devices and not config.get("device"):
            config = {**config, "device": self.devices[slot.index % len(self.devices)]}
        # the server imported the same pack files and logged their failures: the worker's
        # output reaches the same log and Logs panel, so it does not repeat them
        return WorkerProcess({**config, "pack_errors_logged": True}, module=self.module)

    def close(self) -> None:
        pass


def make_host(config: ServerConfig) -> WorkerHost:
    """Ray actors with ``--ray``, else local worker processes (one by default)."""
    if config.ray:
        from steerflow.ray_worker import RayHost  # imports ray: only when asked for

        return RayHost(config)
    return LocalHost(config.workers, config.worker_module, config.worker_devices)


def worker_config(config: ServerConfig) -> dict[str, Any]:
    """The ``config`` message every worker gets first."""
    return {
        "base_dir": str(config.base_dir), "models_dir": _str(config.models_dir),
        "device": config.device, "allow_pickle": config.allow_pickle,
        "custom_nodes": _str(config.custom_nodes), "registry_factory": config.registry_factory,
        "cache_budget": config.cache_budget, "cache_max_entries": config.cache_max_entries,
        "dtype": config.dtype, "verbose": config.verbose}


def wait_ready(worker: Channel, timeout: float, stopping: Callable[[], bool],
               on_setup: Callable[[], None]) -> dict[str, Any]:
    """Wait for a started worker's ``ready`` and return what it reports; raises
    :class:`WorkerDied` (the worker killed) if it fails, takes over ``timeout`` seconds
    or ``stopping()`` turns true. ``on_setup``: its set-up (the built-in models) is done."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            if stopping():
                raise WorkerDied("the server is stopping")
            if time.monotonic() > deadline:
                raise WorkerDied(f"the worker did not start within {timeout:.0f} s")
            msg = worker.recv(POLL)
            if msg is None:
                continue
            if msg.op == "setup":
                on_setup()
            elif msg.op == "ready":
                on_setup()
                return dict(msg.data)
            elif msg.op == "failed":
                raise WorkerDied(f"the worker could not load the node packs: "
                                 f"{msg.data.get('error')}")
    except BaseException:
        worker.kill()
        raise


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
