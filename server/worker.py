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

- files (workers on other machines, :mod:`server.pool`): ``F``, a JSON header
  ``{"type", "subfolder", "filename"}``, a newline, then the file's bytes: the
  outputs a worker saved (worker → head), and before a ``run``, the files in the
  head's input/ (or annotated output/, temp/) that the prompt names (head → worker,
  :func:`prompt_files`), so that no folder needs to be shared.

Server → worker: ``config`` (first), ``run``, ``interrupt``, ``http`` (a request
for a node pack's route, answered by ``http_reply``: :mod:`server.pack_routes`).
Worker → server: ``setup`` (packs loaded, built-in models installed), then
``ready`` (the session is built, the diffusion stack imported) or ``failed``,
``started`` (optional: a ``run`` was received; the pool takes any message for the
prompt as its acknowledgement, :meth:`server.pool.PoolRuntime._run`), ``events``
(batches of executor events: one leaves whenever a node starts or reports progress),
``done`` (one per ``run``, with the last events and the ``models`` its cache holds,
see :func:`prompt_models`).

A worker on another machine (a Ray actor) connects to the head over TCP instead
of inheriting a socket: the head sends ``challenge`` (a nonce), the worker
answers ``hello`` with an HMAC of the nonce under the shared secret; then the
same protocol follows. :class:`RemoteWorker` is that worker seen from the head.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from engine.paths import PathError
from server.errors import dumps
from server.worker_output import pump

log = logging.getLogger(__name__)

PREVIEW_TAG = b"P"
PNG_TAG = b"N"
FILE_TAG = b"F"
IMAGE_TYPES = {PREVIEW_TAG: 1, PNG_TAG: 2}  # tag -> ComfyUI's image type (JPEG, PNG)
# Inputs naming a model file, by ComfyUI's convention: ``<kind>_name`` (ckpt_name,
# lora_name, vae_name, unet_name, control_net_name, style_model_name, gligen_name, the
# upscale loader's model_name), numbered for several (clip_name1, clip_name2), and the
# packs' ``ipadapter_file``-style names. A name rule rather than the node schemas: a
# schema does not say which choice lists come from a models folder (native loaders' and
# ComfyUI packs' lists are callables, as input-image lists are), checking the values
# against the head's models/ would miss a Ray worker's own models folder, and the worker
# reports the models it holds with this same function, without a registry. The ``_name``
# inputs that name no model are excluded explicitly.
MODEL_INPUT = re.compile(r"(?:_name\d*|(?:^|_)(?:ipadapter|instantid|pulid)_file)\Z")
NOT_MODEL_INPUTS = frozenset({
    "sampler_name", "scheduler_name", "save_name", "folder_name", "config_name",
    "font_name", "preset_name", "style_name", "output_name", "node_name", "class_name",
    "type_name", "file_name", "image_name", "mask_name", "prefix_name"})
FILE_ROLES = ("input", "output", "temp")  # the folders files travel between
# Bounds on what the head sends a remote worker with a run (a larger file is left for
# a shared folder, --remote-base-dir) and on the string inputs it looks at.
MAX_SENT_FILE_BYTES = 512 << 20
MAX_SENT_BYTES = 1 << 30
MAX_NAME_CHARS = 4096
HELLO_TIMEOUT = 10.0  # seconds a connecting worker has to answer the challenge
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
    payload: bytes | None = None  # an output file's bytes (``op`` "file")

    @property
    def op(self) -> str:
        return str(self.data.get("op", ""))


def encode(data: dict[str, Any]) -> bytes:
    return dumps(data).encode()


def encode_file(header: dict[str, Any], data: bytes) -> bytes:
    return FILE_TAG + encode(header) + b"\n" + data


def decode(raw: bytes) -> Message:
    if raw[:1] in IMAGE_TYPES:
        return Message({"op": "preview"}, raw[1:], IMAGE_TYPES[raw[:1]])
    if raw[:1] == FILE_TAG:
        end = raw.find(b"\n")
        header = json.loads(raw[1:end]) if end > 0 else None
        if not isinstance(header, dict):
            raise ValueError("a file message needs a JSON header")
        return Message({**header, "op": "file"}, payload=raw[end + 1:])
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("a worker message must be a JSON object")
    return Message(data)


def prompt_models(prompt: Any) -> list[str]:
    """The model files a prompt loads, as ``input=value`` keys (``ckpt_name=sd15.safetensors``;
    model-file inputs only, :func:`is_model_input`, never ``sampler_name``): what routing
    matches against the models a worker's cache holds."""
    keys: set[str] = set()
    for node in prompt.values() if isinstance(prompt, dict) else ():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for name, value in inputs.items() if isinstance(inputs, dict) else ():
            if isinstance(value, str) and value and is_model_input(name):
                keys.add(f"{name}={value}")
    return sorted(keys)


def is_model_input(name: str) -> bool:
    """Whether an input of this name names a model file (:data:`MODEL_INPUT`)."""
    return name not in NOT_MODEL_INPUTS and MODEL_INPUT.search(name) is not None


def prompt_files(prompt: Any, env: Any) -> dict[tuple[str, str], Path]:
    """The files of this (head's) ``env`` that a prompt's string inputs name, as
    ``{(role, name): path}``: a file in input/ (or in output/, temp/ with ComfyUI's
    ``[output]``/``[temp]`` annotation), or the files directly in a subfolder of input/
    (folder inputs), one name per line of a multi-line input. Only names that resolve
    inside their folder, symlinks followed, count; anything else is not sent (the
    worker's own validation then refuses it)."""
    from engine.paths import split_annotated

    found: dict[tuple[str, str], Path] = {}
    for node in prompt.values() if isinstance(prompt, dict) else ():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        for value in inputs.values() if isinstance(inputs, dict) else ():
            if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
                continue
            for line in value.splitlines():
                role, rel = split_annotated(line)
                name = os.path.normpath(rel).replace(os.sep, "/") if rel else ""
                if not name or name == "." or role not in FILE_ROLES:
                    continue
                try:
                    path = env.resolve(role, name)
                except (PathError, KeyError):
                    continue
                if path.is_file():
                    found[(role, name)] = path
                elif role == "input" and path.is_dir() and path != env.folder(role).resolve():
                    for child in sorted(path.iterdir()):
                        sub = f"{name}/{child.name}"
                        with contextlib.suppress(PathError):
                            if not child.name.startswith(".") and \
                                    env.resolve(role, sub).is_file():
                                found[(role, sub)] = env.resolve(role, sub)
    return found


def auth_digest(secret: str, nonce: str) -> str:
    """The answer to the head's challenge: HMAC-SHA256 of the nonce under the secret."""
    return hmac.new(secret.encode(), nonce.encode(), hashlib.sha256).hexdigest()


class Channel:
    """The framed channel to one worker. Sends are thread-safe; receives are not."""

    kind = "local"  # where the worker runs: "local" (this machine's folders) or "ray"

    def __init__(self, conn: Connection):
        self.conn = conn
        # One poller for the channel's life: Connection.poll builds a selector per call,
        # which was the dispatcher's largest cost at hundreds of messages a second.
        self._poller = select.poll()
        self._poller.register(self.conn.fileno(), select.POLLIN)
        self._send_lock = threading.Lock()
        self._init_http()

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
        """The next message, or None after ``timeout``; raises :class:`WorkerDied`.
        (An ``http_reply`` goes to its :meth:`http` caller and returns None early.)"""
        with self._recv_lock:
            msg = self._stash.popleft() if self._stash else self._read(timeout)
        if msg is not None and msg.op == "http_reply":
            self._deliver(msg)
            return None
        return msg

    def _read(self, timeout: float | None) -> Message | None:
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

    def send_file(self, header: dict[str, Any], data: bytes) -> bool:
        """Send a file message (:func:`encode_file`); False when the worker is gone."""
        with self._send_lock:
            try:
                self.conn.send_bytes(encode_file(header, data))
                return True
            except (OSError, ValueError):
                return False

    def close(self) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self.conn.close()

    # --- node packs' HTTP routes (server.pack_routes) ------------------------------
    # A request goes out as an ``http`` message; its ``http_reply`` comes back on the
    # same channel, read by whoever reads: the dispatcher (during a prompt or a start)
    # delivers it from recv, and when nobody reads (an idle dispatcher) the caller
    # reads itself, keeping any other message for the next recv.
    def _init_http(self) -> None:
        self._recv_lock = threading.RLock()
        self._stash: collections.deque[Message] = collections.deque()
        self._replies: dict[str, dict[str, Any] | None] = {}  # id -> reply, None: awaited
        self._replied = threading.Condition()

    def _deliver(self, msg: Message) -> None:
        with self._replied:
            rid = str(msg.data.get("id"))
            if rid in self._replies:  # else its caller gave up: dropped
                self._replies[rid] = msg.data
                self._replied.notify_all()

    def http(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send an ``http`` message and wait for its reply: None after ``timeout``;
        raises :class:`WorkerDied` when the worker is gone."""
        rid = uuid.uuid4().hex
        with self._replied:
            self._replies[rid] = None
        deadline = time.monotonic() + timeout
        try:
            if not self.send({**request, "op": "http", "id": rid}):
                raise WorkerDied("the worker channel is closed")
            while (left := deadline - time.monotonic()) > 0:
                with self._replied:
                    if self._replies.get(rid) is not None:
                        return self._replies[rid]
                if self._recv_lock.acquire(timeout=min(left, 0.05)):
                    try:  # nobody else is reading: read one message ourselves
                        msg = self._read(min(left, 0.05))
                        if msg is not None and msg.op == "http_reply":
                            self._deliver(msg)
                        elif msg is not None:
                            self._stash.append(msg)
                    finally:
                        self._recv_lock.release()
                else:  # the dispatcher reads and delivers
                    with self._replied:
                        self._replied.wait(min(left, 0.05))
            return None
        finally:
            with self._replied:
                self._replies.pop(rid, None)  # a late reply is dropped

    def alive(self) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def exit_cause(self) -> str:
        raise NotImplementedError


class RemoteWorker(Channel):
    """A worker that connected over TCP (a Ray actor); ``kill`` ends its host (the actor).
    It has folders of its own: the head sends it the input files of each prompt."""

    def __init__(self, conn: Connection, config: dict[str, Any], *, pid: int, name: str,
                 kill: Callable[[], None] = lambda: None, kind: str = "ray"):
        super().__init__(conn)
        self.kind = kind
        self.pid = pid
        self.name = name
        self._kill = kill
        self._dead = False
        self.send({"op": "config", **config})

    def alive(self) -> bool:
        return not self._dead and not self.conn.closed

    def kill(self) -> None:
        """End the worker's host for sure (it may still run after its channel broke)."""
        self._dead = True
        self.close()
        try:
            self._kill()
        except Exception:
            log.warning("cannot kill worker %s", self.name, exc_info=True)

    def stop(self, timeout: float = 5.0) -> None:
        self.kill()  # closing the channel makes it exit; the kill makes sure

    def exit_cause(self) -> str:
        self._dead = True
        return f"the connection to worker {self.name} (pid {self.pid}) closed"


#: how :meth:`WorkerProcess.exit_cause` starts when the kernel's OOM killer ended it
OOM_KILLED = "the worker process was killed by the kernel for lack of memory"


def oom_kills() -> int | None:
    """The kernel's count of out-of-memory kills (Linux ``/proc/vmstat``); None elsewhere."""
    try:
        with open("/proc/vmstat", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class WorkerProcess(Channel):
    """One worker subprocess and its channel."""

    def __init__(self, config: dict[str, Any], *, module: str = WORKER_MODULE):
        self._oom_kills_at_start = oom_kills()
        parent, child = socket.socketpair()
        env = dict(os.environ)
        # The child imports what this process can: node packs named by module
        # (a registry factory, entry points) resolve the same way on both sides.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
            [*paths, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]))
        try:
            # its output goes through pipes: to this terminal and the Logs panel. Its own
            # process group: a kill takes the processes a node started along (they held
            # its pipes, and ran on, after a hard stop); it ignores Ctrl+C's SIGINT anyway
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "--fd", str(child.fileno())],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
        finally:
            child.close()
        label = f"worker-{self.proc.pid}"
        pump(self.proc.stdout, "stdout", label, self.alive)
        pump(self.proc.stderr, "stderr", label, self.alive)
        parent.setblocking(True)
        conn = Connection(os.dup(parent.fileno()))
        parent.close()
        super().__init__(conn)
        self.send({"op": "config", **config})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the worker and what it started, then reap: used for hard interrupts
        and shutdown."""
        self._kill_group()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not die after SIGKILL", self.proc.pid)
        self.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to exit (closing its channel), then kill it if it lingers; what
        it left running goes too."""
        self.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._kill_group()

    def _kill_group(self) -> None:
        # the group is the worker's pid (process_group=0); it lives while any member does
        with contextlib.suppress(OSError):
            os.killpg(self.proc.pid, signal.SIGKILL)

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
            if -code == signal.SIGKILL:
                before, now = self._oom_kills_at_start, oom_kills()
                if before is not None and now is not None and now > before:
                    return OOM_KILLED  # the counter moved while it lived: most likely it
                hint = " (killed: possibly out of memory)"
            else:
                hint = ""
            return f"the worker process was killed by {name}{hint}"
        return f"the worker process exited with code {code}"


class WorkerListener:
    """The head's TCP port for remote workers: challenge, check the HMAC, hand over.

    Each connection is authenticated in its own short thread (a stalled peer holds
    nothing up); an authenticated worker waits in ``_ready`` for :meth:`wait`.
    """

    def __init__(self, host: str, port: int, secret: str):
        self.secret = secret
        self.sock = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self.sock.getsockname()[:2]
        self._ready: dict[str, tuple[Connection, dict[str, Any]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._accept, name="steerflow-worker-port", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._greet, args=(sock, peer), daemon=True).start()

    def _greet(self, sock: socket.socket, peer: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock.detach())
        try:
            nonce = secrets.token_hex(32)
            conn.send_bytes(encode({"op": "challenge", "nonce": nonce}))
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
            if not poller.poll(int(HELLO_TIMEOUT * 1000)):
                raise ConnectionError("no answer to the challenge")
            hello = decode(conn.recv_bytes(4096)).data
            digest = hello.get("digest")
            if hello.get("op") != "hello" or not isinstance(digest, str) or \
                    not secrets.compare_digest(digest, auth_digest(self.secret, nonce)):
                raise ConnectionError("wrong secret")
        except (OSError, EOFError, ValueError, ConnectionError) as exc:
            log.warning("refused a worker connection from %s: %s", peer, exc)
            with contextlib.suppress(OSError):
                conn.close()
            return
        with self._cond:
            old = self._ready.pop(str(hello.get("worker")), None)
            self._ready[str(hello.get("worker"))] = (conn, hello)
            self._cond.notify_all()
        if old is not None:
            old[0].close()

    def wait(self, name: str, timeout: float, alive: Callable[[], bool] = lambda: True
             ) -> tuple[Connection, dict[str, Any]]:
        """The connection of worker ``name``, once it has authenticated."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while name not in self._ready:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed or not alive():
                    raise WorkerDied(f"worker {name} did not connect to the head's worker "
                                     f"port {self.host}:{self.port} within {timeout:.0f} s")
                self._cond.wait(min(left, 0.25))
            return self._ready.pop(name)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._cond:
            for conn, _ in self._ready.values():
                conn.close()
            self._ready.clear()
            self._cond.notify_all()


def worker_secret(config: Any) -> str:
    """What remote workers prove they know: the (server) config's token, else a secret
    made for this run."""
    return config.token or secrets.token_hex(32)
