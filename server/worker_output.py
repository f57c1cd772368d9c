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
import sys
import threading
from collections.abc import Callable
from typing import IO

Sink = Callable[[str], None]

_SINKS: list[Sink] = []
_GUARD = threading.Lock()
CHUNK = 65536


def add_sink(sink: Sink) -> None:
    """Call ``sink(text)`` with what any worker prints from now on."""
    with _GUARD:
        _SINKS.append(sink)


def remove_sink(sink: Sink) -> None:
    with _GUARD, contextlib.suppress(ValueError):
        _SINKS.remove(sink)


def pump(pipe: IO[bytes], stream_name: str, label: str) -> threading.Thread:
    """Drain ``pipe`` (a worker's stdout or stderr) on a daemon thread until it closes."""
    thread = threading.Thread(target=_drain, args=(pipe, stream_name),
                              name=f"steerflow-{label}-{stream_name}", daemon=True)
    thread.start()
    return thread


def _drain(pipe: IO[bytes], stream_name: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    fd = pipe.fileno()
    try:
        while chunk := os.read(fd, CHUNK):
            _write_through(stream_name, chunk)
            text = decoder.decode(chunk)
            if text:
                _tell(text)
    except OSError:
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
