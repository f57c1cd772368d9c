"""What worker processes print, passed on to the server's terminal and to listeners.

A worker's stdout and stderr are pipes that a thread each drains: every chunk goes to the
server's own stream unchanged (the terminal shows what it showed before, progress bars'
carriage returns included) and, decoded, to each registered sink, such as the buffer
behind ComfyUI's Logs panel (:class:`server.comfy_frontend.LogBuffer`), so a custom
node's ``print`` shows there as in ComfyUI. A sink runs on the draining thread, so it
must be quick (the Logs buffer appends and posts); its errors are dropped.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

Sink = Callable[[str], None]

_SINKS: list[Sink] = []
_GUARD = threading.Lock()
CHUNK = 65536
POLL = 1.0  # seconds between checks that the worker still runs
GRACE = 2.0  # seconds its pipe is still read once it has ended


def add_sink(sink: Sink) -> None:
    """Call ``sink(text)`` with what any worker prints from now on."""
    with _GUARD:
        _SINKS.append(sink)


def remove_sink(sink: Sink) -> None:
    with _GUARD, contextlib.suppress(ValueError):
        _SINKS.remove(sink)


def pump(pipe: IO[bytes], stream_name: str, label: str,
         alive: Callable[[], bool] = lambda: True) -> threading.Thread:
    """Drain ``pipe`` (a worker's stdout or stderr) on a daemon thread until it closes, or
    until ``alive`` (the worker) has been false for :data:`GRACE` seconds: a process the
    worker started may hold the pipe open after the worker is gone."""
    thread = threading.Thread(target=_drain, args=(pipe, stream_name, alive),
                              name=f"steerflow-{label}-{stream_name}", daemon=True)
    thread.start()
    return thread


def _drain(pipe: IO[bytes], stream_name: str, alive: Callable[[], bool]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    fd = pipe.fileno()
    dead_since: float | None = None
    poller = select.poll()  # not select.select: a busy server's fds pass 1024
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    try:
        while True:
            ready = poller.poll(POLL * 1000)
            if ready:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                _write_through(stream_name, chunk)
                text = decoder.decode(chunk)
                if text:
                    _tell(text)
            if dead_since is None and not alive():
                dead_since = time.monotonic()
            if dead_since is not None and (not ready or time.monotonic() - dead_since > GRACE):
                break
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            pipe.close()


def _write_through(stream_name: str, chunk: bytes) -> None:
    # looked up at each write: tests and embedders swap sys.stdout / sys.stderr
    stream = getattr(sys, stream_name, None)
    if stream is None:
        return
    try:
        raw = getattr(stream, "buffer", None)
        if raw is not None:
            raw.write(chunk)
        else:
            stream.write(chunk.decode("utf-8", "replace"))
        stream.flush()
    except (OSError, ValueError):  # a closed or broken terminal must not stop the pipe
        pass


def _tell(text: str) -> None:
    with _GUARD:
        sinks = list(_SINKS)
    for sink in sinks:
        with contextlib.suppress(Exception):
            sink(text)
