"""The worker process: owns the engine session (executor, cache, models) and runs prompts.

Started by the server (:mod:`server.worker`) as ``python -m steerflow.worker
--fd N``; it speaks that module's protocol over the inherited socket. A worker
hosted elsewhere (a Ray actor, :mod:`steerflow.ray_worker`) runs the same loop
over a TCP connection to the head (:func:`connect`, :func:`serve_channel`). The main
thread runs prompts one at a time; a reader thread takes ``interrupt``
messages while a prompt runs (cooperative: nodes see the flag at their next
check) and exits the process when the server's end of the channel closes.
The server kills this process outright when a cooperative interrupt is not
honoured in time, so nothing here needs to be interruptible by force.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from server.worker import (
    FILE_ROLES,
    PNG_TAG,
    PREVIEW_TAG,
    auth_digest,
    decode,
    encode,
    encode_file,
    prompt_models,
)

log = logging.getLogger("steerflow.worker")


def _die_with_parent() -> None:
    """Linux: be SIGKILLed when the server dies, even mid-way through a GIL-holding node."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


#: the write end of the group guard's pipe, open for this process's life (see below)
_group_guard: int | None = None


def _take_group_along() -> None:
    """Have the processes a node started die with this worker, however it ends.

    The server gives the worker a process group of its own and kills the group when it
    stops the worker; but a kill -9 of the server SIGKILLs the worker (PR_SET_PDEATHSIG),
    which no handler of ours sees, and a tool a node had started ran on. A sentinel in
    the group waits on a pipe whose write end only this process holds; at its end of file
    (the worker gone, by any death) it kills the group.
    """
    global _group_guard
    if sys.platform != "linux" or _group_guard is not None or os.getpgrp() != os.getpid():
        return  # not a group of its own (a Ray worker, run by hand): others share it
    read, write = os.pipe()  # non-inheritable: a node's subprocesses never hold it
    try:
        subprocess.Popen(["/bin/sh", "-c", "read _; kill -9 0"], stdin=read,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        os.close(write)
        log.warning("no guard for the processes nodes start: they may outlive a kill -9")
        return
    finally:
        os.close(read)
    _group_guard = write


@contextlib.contextmanager
def _quiet_pack_errors(quiet: bool) -> Iterator[None]:
    """Pack import failures unlogged here while ``quiet`` (a local worker: the server
    logged the same files' failures, and this process's output joins its log); they
    still go to the server in ``ready``'s ``pack_errors``."""
    logger = logging.getLogger("engine.registry")
    level = logger.level
    if quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class Worker:
    """The session plus the channel back to the server."""

    def __init__(self, conn: Connection, config: dict[str, Any]):
        self.conn = conn
        self.config = config
        self.session: Any = None
        self.runs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        # Interrupts that arrive before their prompt has started running.
        self.interrupted: set[str] = set()
        # Model keys (server.worker.prompt_models) of the prompts run here, newest last:
        # reported so that the head routes prompts to the worker that has them loaded.
        self.models: dict[str, None] = {}
        self._send_lock = threading.Lock()

    def send(self, data: dict[str, Any]) -> None:
        raw = encode(data)
        with self._send_lock:
            self.conn.send_bytes(raw)

    def send_preview(self, data: bytes, tag: bytes = PREVIEW_TAG) -> None:
        with self._send_lock:
            self.conn.send_bytes(tag + data)

    # --- start-up ----------------------------------------------------------------
    def load(self) -> None:
        """Node packs, their set-up (installing the built-in models), then the session.

        ``setup`` is reported before the session is built (which imports torch to
        pick the device): the server's model lists wait for the set-up only.
        """
        from engine.environment import Environment
        from engine.registry import load_registry
        from engine.session import Session

        cfg = self.config
        folders = Environment.create(cfg["base_dir"], models_dir=cfg.get("models_dir"),
                                     device="cpu")
        with _quiet_pack_errors(bool(cfg.get("pack_errors_logged"))):
            registry = load_registry(cfg.get("registry_factory"), cfg.get("custom_nodes"),
                                     env=folders)
        registry.setup(folders)
        self.send({"op": "setup"})
        budgets = None
        if cfg.get("cache_budget"):
            from engine.cache import parse_budget

            budgets = parse_budget(cfg["cache_budget"])
        session = Session(cfg["base_dir"], models_dir=cfg.get("models_dir"),
                          device=cfg.get("device"), allow_pickle=bool(cfg.get("allow_pickle")),
                          registry=registry, cache_budgets=budgets)
        if cfg.get("cache_max_entries"):
            session.executor.cache.max_entries = int(cfg["cache_max_entries"])
        if cfg.get("dtype"):
            session.env.options["dtype"] = str(cfg["dtype"])
        session.executor.ensure_setup()  # file checks now: the hooks ran above
        self.session = session

    def prewarm(self) -> None:
        """Import the diffusion stack before the first prompt needs it.

        A cold import of torch, diffusers and transformers takes seconds that the
        first prompt would otherwise spend between its submission and its first
        step. Done before the worker reports ``ready``, only when the real packs are
        loaded.
        """
        if "CheckpointLoaderSimple" not in self.session.registry:
            return
        try:
            import nodes.diffusion.loading
            import nodes.diffusion.sampling  # noqa: F401
        except Exception:  # the prompt that needs them reports it properly
            log.warning("pre-importing the diffusion stack failed", exc_info=True)

    # --- the reader thread -------------------------------------------------------
    def read_forever(self) -> None:
        while True:
            try:
                msg = decode(self.conn.recv_bytes())
            except (EOFError, OSError):
                # The server closed the channel (or died): nothing is left to report to.
                os._exit(0)
            except ValueError:
                log.error("unreadable message from the server; ignored")
                continue
            if msg.op == "run":
                self.runs.put(msg.data)
            elif msg.op == "interrupt" and self.session is not None:
                prompt_id = str(msg.data.get("prompt_id"))
                self.interrupted.add(prompt_id)
                self.session.executor.interrupt(prompt_id)
            elif msg.op == "free":  # after the running prompt, in the prompts' order
                self.runs.put({"free": msg.data})
            elif msg.op == "http":
                self._answer_http(msg.data)
            elif msg.op == "file":
                self._store_file(msg.data, msg.payload or b"")

    def _store_file(self, header: dict[str, Any], data: bytes) -> None:
        """A file of the head's that the next prompt names (a remote worker): written
        atomically into this worker's folder of that role, confined to it, unless the
        same bytes are already there (a folder shared with the head)."""
        from server.files import _write_temp

        role = header.get("type")
        try:
            if role not in FILE_ROLES or self.session is None:
                raise ValueError(f"unexpected file type {role!r}")
            path = self.session.env.resolve(str(role), str(header.get("subfolder") or ""),
                                            str(header.get("filename") or ""))
            if path.is_file() and path.stat().st_size == len(data) and \
                    path.read_bytes() == data:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(_write_temp(path.parent, data), path)
        except (OSError, ValueError) as exc:  # the prompt then reports the file missing
            log.error("cannot store %s file %r from the head: %s", role,
                      header.get("filename"), exc)

    def _answer_http(self, data: dict[str, Any]) -> None:
        """A request for a node pack's route: answered on the bridge's own thread (a
        prompt may be running), the reply sent as ``http_reply`` (server.pack_routes)."""
        bridge = getattr(self, "_http_bridge", None)
        if bridge is None:
            from comfy_compat.http_bridge import HttpBridge

            bridge = self._http_bridge = HttpBridge(self.send)
        bridge.submit(data)

    # --- the main loop -----------------------------------------------------------
    def serve(self) -> None:
        while (job := self.runs.get()) is not None:
            if "free" in job:
                self.free(bool(job["free"].get("free_memory")))
            else:
                self.run(job)

    def free(self, free_memory: bool) -> None:
        """ComfyUI's /free: ``unload_models`` alone moves the cached models off the
        accelerator (they stay cached in RAM, so the next prompt still reuses every
        output); ``free_memory`` drops every cached output, the loaded models too, and
        returns the allocators' cached blocks."""
        if self.session is None:
            return
        cache = self.session.executor.cache
        if free_memory:
            cache.clear()
            self.models.clear()
        else:
            cache.offload_all()
        import gc

        gc.collect()
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("%s (free_memory=%s)", "freed the cache" if free_memory
                 else "moved the cached models off the accelerator", free_memory)

    def run(self, job: dict[str, Any]) -> None:
        from engine.validation import PromptValidationError, describe_issues, to_node_errors

        prompt_id = str(job.get("prompt_id"))
        extra = job.get("extra") or {}
        previews = bool(extra.get("preview"))
        # the pool counts an attempt against a prompt only once its worker took it up:
        # a worker that dies before this line never ran it
        self.send({"op": "started", "prompt_id": prompt_id})

        # Events are sent in batches: each batch leaves when a node starts or reports
        # progress (what a user watches), and the rest go with ``done``. A trivial
        # prompt then costs 4 messages instead of 9; nothing a node does can hold back
        # the news that it started.
        pending: list[list[Any]] = []

        def flush() -> None:
            if pending:
                self.send({"op": "events", "events": pending[:]})
                pending.clear()

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "execution_start" and prompt_id in self.interrupted:
                executor.interrupt(prompt_id)  # its flag exists from here on
            if name == "preview":
                if previews:
                    flush()
                    self._preview(data.get("image"), data.get("format"))
                return
            pending.append([name, data])
            # "finishing": the pool must know at once that a stop waits for this work
            if name in ("progress", "finishing") or (
                    name == "executing" and data.get("node") is not None):
                flush()

        executor = self.session.executor
        self.interrupted.intersection_update({prompt_id})  # older ids are finished
        try:
            result = executor.run(job.get("prompt") or {}, prompt_id=prompt_id, extra=extra,
                                  on_event=on_event, outputs=job.get("outputs") or None)
        except PromptValidationError as exc:
            self.send({"op": "done", "prompt_id": prompt_id, "status": "invalid",
                       "error": describe_issues(exc.issues),
                       "node_errors": to_node_errors(exc.issues), **self._stats()})
            return
        if self.config.get("send_outputs"):
            self._send_outputs(result.outputs)
        if result.status == "success":
            for key in prompt_models(job.get("prompt")):
                self.models.pop(key, None)
                self.models[key] = None
        self.send({"op": "done", "prompt_id": prompt_id, "status": result.status,
                   "outputs": result.outputs, "events": pending, **self._stats()})

    def _send_outputs(self, outputs: Any) -> None:
        """Send the files this prompt saved in output/ (and temp/: previews) to the head
        (another machine)."""
        roots = {role: self.session.env.folder(role).resolve() for role in ("output", "temp")}
        for ui in outputs.values() if isinstance(outputs, dict) else ():
            for items in ui.values() if isinstance(ui, dict) else ():
                for ref in items if isinstance(items, list) else ():
                    role = ref.get("type") if isinstance(ref, dict) else None
                    if role not in ("output", "temp") or not isinstance(ref.get("filename"), str):
                        continue
                    sub = str(ref.get("subfolder") or "")
                    root = roots[role]
                    path = (root / sub / ref["filename"]).resolve()
                    if not path.is_relative_to(root) or not path.is_file():
                        continue
                    header = {"type": role, "subfolder": sub, "filename": ref["filename"]}
                    data = path.read_bytes()
                    with self._send_lock:
                        self.conn.send_bytes(encode_file(header, data))

    def _preview(self, image: Any, fmt: Any = None) -> None:
        from server.imaging import encode_png, encode_preview

        try:
            if fmt == "PNG":  # SaveImageWebsocket: the full image, lossless
                self.send_preview(encode_png(image), PNG_TAG)
            else:
                self.send_preview(encode_preview(image))
        except (TypeError, ValueError, OSError):
            log.debug("cannot encode a preview", exc_info=True)

    def _stats(self) -> dict[str, Any]:
        cache = self.session.executor.cache
        if not len(cache):
            self.models.clear()  # evicted or cleared: nothing is warm any more
        stats: dict[str, Any] = {"cache_entries": len(cache), "cache_bytes": dict(cache.used),
                                 "models": list(self.models)}
        device = self.session.env.device
        if device.startswith("cuda"):  # the server imports no torch: it asks here
            import torch

            with contextlib.suppress(Exception):
                free, total = torch.cuda.mem_get_info(device)
                stats.update(vram_free=int(free), vram_total=int(total))
        return stats


def pack_routes() -> list[list[str]]:
    """``[[method, path], ...]``: the HTTP routes ComfyUI packs registered at import,
    which the server forwards here (none unless such a pack was loaded)."""
    if "comfy_compat.prompt_server" not in sys.modules:
        return []
    from comfy_compat.http_bridge import registered_routes

    return registered_routes()


def connect(host: str, port: int, name: str, secret: str, timeout: float = 30.0
            ) -> Connection:
    """Connect to the head's worker port and authenticate (its challenge, our HMAC)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    conn = Connection(sock.detach())
    challenge = decode(conn.recv_bytes(4096))
    if challenge.op != "challenge" or not isinstance(challenge.data.get("nonce"), str):
        conn.close()
        raise ConnectionError("the head did not send a challenge")
    conn.send_bytes(encode({"op": "hello", "worker": name, "pid": os.getpid(),
                            "digest": auth_digest(secret, challenge.data["nonce"])}))
    return conn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="steerflow-worker")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    _take_group_along()
    # SIGINT goes to the whole process group on Ctrl+C; the server decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return serve_channel(Connection(args.fd))


def serve_channel(conn: Connection) -> int:
    """Read the ``config``, load, report ``ready``, then run prompts until the head
    closes the channel (the process exits then: see :meth:`Worker.read_forever`)."""
    try:
        first = decode(conn.recv_bytes())
    except (EOFError, OSError, ValueError):
        return 1
    config = first.data
    from steerflow import tune_process

    tune_process()
    logging.basicConfig(level=logging.INFO if config.get("verbose") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not config.get("verbose"):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    worker = Worker(conn, config)
    threading.Thread(target=worker.read_forever, name="steerflow-worker-reader",
                     daemon=True).start()
    try:
        worker.load()
    except BaseException as exc:  # a pack's SystemExit included: report, then exit
        log.error("the worker could not load the node packs:\n%s", traceback.format_exc())
        with contextlib.suppress(OSError):
            worker.send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    # Before ``ready``: a worker reported idle runs its first prompt without the seconds
    # of imports (a prompt that arrives meanwhile waits in the queue, as it would anyway).
    worker.prewarm()
    registry = worker.session.registry
    worker.send({"op": "ready", "pid": os.getpid(), **worker._stats(),
                 "device": worker.session.env.device,
                 "pack_errors": [{"pack": e.pack, "message": e.message}
                                 for e in registry.errors],
                 "pack_routes": pack_routes(), "pack_sources": registry.sources})
    try:
        worker.serve()
    except (OSError, EOFError):
        return 0  # the server went away mid-send
    return 0


if __name__ == "__main__":
    sys.exit(main())
