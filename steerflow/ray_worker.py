"""Workers as Ray actors: ``steerflow serve --ray ADDRESS|auto|local``.

Ray places the workers (one actor per GPU, else per CPU slot, of the cluster) and
restarts nothing on its own: the head's pool (:mod:`server.pool`) decides. Each
actor runs the very worker loop of :mod:`steerflow.worker`, over a TCP connection
it opens to the head's worker port (:class:`server.worker.WorkerListener`), where it
authenticates with an HMAC under the server's token (or a secret made for this
run, handed to the actors by Ray). Workers connect only to the head; the head
connects to nothing but the Ray cluster. Files a worker saves are sent back over
that connection and written into the head's output/; the files of the head's input/
that a prompt names come to the worker the same way, before the prompt.

When the head dies, Ray ends its actors (they belong to the head's job) and their
connections close (the worker exits); the next head starts new ones and re-queues
what was running, as after a kill -9.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from typing import Any

import ray

from server.config import ServerConfig
from server.hosts import Slot
from server.worker import Channel, RemoteWorker, WorkerDied, WorkerListener, worker_secret

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0)
class WorkerActor:
    """One worker: connects to the head and serves prompts until the head lets go."""

    def serve(self, host: str, port: int, name: str, secret: str) -> int:
        from steerflow.worker import connect, serve_channel

        return serve_channel(connect(host, port, name, secret))


class RayHost:
    """Starts workers as :class:`WorkerActor` s; connects to (or starts) the Ray cluster."""

    kind = "ray"

    def __init__(self, config: ServerConfig):
        self.config = config
        self._owned = False
        self._names = itertools.count()
        local = config.ray == "local"
        if not ray.is_initialized():
            if local:
                # Actors are processes of the raylet started here: they import what we do.
                paths = [p for p in sys.path if p and os.path.isdir(p)]
                os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
                    [*paths, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
            ray.init(address=config.ray, include_dashboard=False,
                     num_cpus=(config.workers or os.cpu_count() or 1) if local else None,
                     _node_ip_address="127.0.0.1" if local else None,
                     log_to_driver=config.verbose, logging_level=logging.WARNING)
            self._owned = True
        resources = ray.cluster_resources()
        self.gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        slots = int(resources.get("GPU", 0)) or int(resources.get("CPU", 1))
        self.count = config.workers or max(1, slots)
        host = config.worker_host or ("127.0.0.1" if local or self._loopback_cluster()
                                      else ray.util.get_node_ip_address())
        self.secret = worker_secret(config)
        self.listener = WorkerListener(host, config.worker_port, self.secret)
        log.info("Ray workers: %d (%s), connecting to %s:%d", self.count,
                 "GPU" if self.gpus else "CPU", self.listener.host, self.listener.port)

    @staticmethod
    def _loopback_cluster() -> bool:
        return all(str(n.get("NodeManagerAddress", "")).startswith("127.")
                   for n in ray.nodes() if n.get("Alive"))

    def size(self) -> int:
        return self.count

    def start(self, slot: Slot, config: dict[str, Any]) -> Channel:
        cfg = {**config, "send_outputs": True}
        if self.config.remote_base_dir is not None:
            cfg.update(base_dir=str(self.config.remote_base_dir), models_dir=None)
        if self.gpus:
            cfg["device"] = None  # the GPU Ray gave the actor (CUDA_VISIBLE_DEVICES)
        name = f"{slot.name}.{next(self._names)}"
        actor = WorkerActor.options(num_cpus=1, num_gpus=self.gpus).remote()  # type: ignore[attr-defined]
        done = actor.serve.remote(self.listener.host, self.listener.port, name, self.secret)

        def running() -> bool:
            return not ray.wait([done], timeout=0)[0]

        try:
            conn, hello = self.listener.wait(name, self.config.worker_start_timeout, running)
        except WorkerDied as exc:
            ray.kill(actor, no_restart=True)
            raise WorkerDied(f"{exc.cause}{_failure(done)}") from None
        return RemoteWorker(conn, cfg, pid=int(hello.get("pid") or 0), name=name,
                            kill=lambda: ray.kill(actor, no_restart=True))

    def close(self) -> None:
        self.listener.close()
        if self._owned:
            ray.shutdown()


def _failure(ref: Any) -> str:
    """Why an actor's call ended, if it did."""
    try:
        ready, _ = ray.wait([ref], timeout=0)
        if ready:
            ray.get(ref)
    except Exception as exc:
        return f": {type(exc).__name__}: {str(exc)[:500]}"
    return ""
