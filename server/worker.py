"""The worker process, seen from the server: start it, talk to it, kill it.

Prompts run in a separate process (``python -m steerflow.worker`` by default)
that owns the executor, its cache and the models, so no node — bigint maths,
a C extension holding the GIL, a segfault, an out-of-memory kill — can stall
or crash the server. The two sides exchange length-prefixed messages over a
socket pair (:class:`multiprocessing.connection.Connection`, which frames but
does not pickle when used through ``send_bytes``/``recv_bytes``):

- JSON objects (first byte ``{``), strict JSON both ways, never pickle;
- preview frames: ``P`` followed by a JPEG; full-size images (``SaveImageWebsocket``):
  ``N`` followed by a PNG. Both become the same binary websocket frame, with
  ComfyUI's image type 1 or 2.

Server → worker: ``config`` (first), ``run``, ``interrupt``.
Worker → server: ``setup`` (packs loaded, built-in models installed), then
``ready`` (the session is built) or ``failed``,
``events`` (batches of executor events: one leaves whenever a node starts or
reports progress), ``done`` (one per ``run``, with the last events).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from server.errors import dumps

log = logging.getLogger(__name__)

PREVIEW_TAG = b"P"
PNG_TAG = b"N"
IMAGE_TYPES = {PREVIEW_TAG: 1, PNG_TAG: 2}  # tag -> ComfyUI's image type (JPEG, PNG)
WORKER_MODULE = "steerflow.worker"


class WorkerDied(RuntimeError):
    """The worker process ended (or its channel broke); ``cause`` says how."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


@dataclass
class Message:
    """One message from the worker: a JSON object, or a preview frame (``preview``,
    encoded as ComfyUI's ``image_type``: 1 JPEG, 2 PNG)."""

    data: dict[str, Any]
    preview: bytes | None = None
    image_type: int = 1

    @property
    def op(self) -> str:
        return str(self.data.get("op", ""))


def encode(data: dict[str, Any]) -> bytes:
    return dumps(data).encode()


def decode(raw: bytes) -> Message:
    if raw[:1] in IMAGE_TYPES:
        return Message({"op": "preview"}, raw[1:], IMAGE_TYPES[raw[:1]])
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a worker message must be a JSON object")
    return Message(data)


class WorkerProcess:
    """One worker subprocess and its channel. Sends are thread-safe; receives are not."""

    def __init__(self, config: dict[str, Any], *, module: str = WORKER_MODULE):
        parent, child = socket.socketpair()
        env = dict(os.environ)
        # The child imports what this process can: node packs named by module
        # (a registry factory, entry points) resolve the same way on both sides.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
            [*paths, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "--fd", str(child.fileno())],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                start_new_session=False)
        finally:
            child.close()
        parent.setblocking(True)
        self.conn = Connection(os.dup(parent.fileno()))
        parent.close()
        # One poller for the channel's life: Connection.poll builds a selector per call,
        # which was the dispatcher's largest cost at hundreds of messages a second.
        self._poller = select.poll()
        self._poller.register(self.conn.fileno(), select.POLLIN)
        self._send_lock = threading.Lock()
        self.send({"op": "config", **config})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, data: dict[str, Any]) -> bool:
        """Send a message; False when the worker is gone (the caller learns why on recv)."""
        raw = encode(data)
        with self._send_lock:
            try:
                self.conn.send_bytes(raw)
                return True
            except (OSError, ValueError):
                return False

    def recv(self, timeout: float | None) -> Message | None:
        """The next message, or None after ``timeout``; raises :class:`WorkerDied`."""
        try:
            ms = None if timeout is None else max(0, int(timeout * 1000))
            if not self._poller.poll(ms):
                return None
            raw = self.conn.recv_bytes()
        except (EOFError, OSError, ValueError):
            raise WorkerDied(self.exit_cause()) from None
        try:
            return decode(raw)
        except ValueError as exc:
            self.kill()
            raise WorkerDied(f"the worker sent an unreadable message ({exc})") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, then reap: used for hard interrupts and shutdown."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not die after SIGKILL", self.proc.pid)
        self.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit (closing its channel), then kill it if it lingers."""
        self.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.conn.close()

    def exit_cause(self) -> str:
        """How the process ended, in words (waits briefly for it to be reaped)."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return "the worker process stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (killed: possibly out of memory)" if -code == signal.SIGKILL else ""
            return f"the worker process was killed by {name}{hint}"
        return f"the worker process exited with code {code}"
