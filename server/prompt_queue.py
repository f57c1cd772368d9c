"""The persistent prompt queue: memory for speed, SQLite for durability.

The event loop puts prompts in; the single worker thread takes them out. Each
change is written to the database before it is visible in memory, so what a
client was told (queued, running, done) survives a crash. A prompt found
"running" at start-up was cut off by a crash: it is re-queued, or recorded as
failed once it has been tried ``max_attempts`` times (a prompt that kills the
process must not crash-loop the server).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.storage import Storage


@dataclass
class QueueItem:
    """One queued prompt; ``as_list`` is ComfyUI's queue tuple."""

    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    seq: int = 0
    attempts: int = 0
    validated: Any = field(default=None, repr=False)  # ValidatedPrompt, memory only

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return cid if isinstance(cid, str) else None

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def body(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "extra_data": self.extra_data, "outputs": self.outputs}


class PromptQueue:
    """Pending prompts ordered by (number, arrival), plus the one running."""

    def __init__(self, storage: Storage, *, on_change: Callable[[], None] = lambda: None,
                 max_attempts: int = 3):
        self.storage = storage
        self.on_change = on_change
        self.max_attempts = max_attempts
        self._cond = threading.Condition()
        self._pending: dict[str, QueueItem] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._running: QueueItem | None = None
        self._handoff: QueueItem | None = None  # given to the idle worker by put()
        self._idle = False  # the worker is waiting in take()
        self._closed = False
        top_number, top_seq = storage.max_counters()
        self._numbers = itertools.count(top_number + 1)
        self._seqs = itertools.count(top_seq + 1)

    def recover(self) -> list[QueueItem]:
        """Load the stored queue; returns the items that ran out of attempts (not queued)."""
        failed: list[QueueItem] = []
        with self._cond:
            for row in self.storage.load_queue():
                body = row.body
                item = QueueItem(row.number, row.prompt_id, body.get("prompt") or {},
                                 body.get("extra_data") or {}, body.get("outputs") or [],
                                 row.seq, row.attempts)
                if row.state == "running" and row.attempts >= self.max_attempts:
                    failed.append(item)
                    continue
                if row.state == "running":
                    self.storage.mark_pending(row.prompt_id)
                self._add(item)
        return failed

    def next_number(self, front: bool = False) -> int:
        number = next(self._numbers)
        return -number if front else number

    def put(self, item: QueueItem) -> None:
        """Persist, then queue; raises what the storage raises (nothing is queued then)."""
        if self._closed:
            raise RuntimeError("the queue is closed")
        item.seq = next(self._seqs)
        with self._cond:
            # An idle worker gets the prompt directly, stored as running (attempt 1) by
            # the insert itself: one write per prompt fewer on the latency path.
            direct = self._idle and self._running is None and not self._pending
            if direct:
                self._running = item
        # Written before it is visible: the worker never runs an unsaved prompt. Outside
        # the lock, so the worker is not held up by this commit.
        try:
            self.storage.enqueue(item.prompt_id, item.number, item.seq, item.body(),
                                 running=direct)
        except BaseException:
            if direct:
                with self._cond:
                    self._running = None
            raise
        with self._cond:
            if direct:
                item.attempts = 1
                self._handoff = item
            else:
                self._add(item)
            self._cond.notify()
        self.on_change()

    def take(self, timeout: float | None = None) -> QueueItem | None:
        """Block until a prompt is pending; mark it running. None when closed or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._handoff is not None:
                    item, self._handoff = self._handoff, None
                    return item  # already stored as running
                while self._heap and not self._live(self._heap[0]):
                    heapq.heappop(self._heap)  # deleted (or re-submitted) while pending
                if self._heap:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._idle = True
                try:
                    self._cond.wait(left)
                finally:
                    self._idle = False
            item = self._pending.pop(heapq.heappop(self._heap)[2])
            self._running = item
        try:
            self.storage.mark_running(item.prompt_id)  # counts the attempt before it runs
        except BaseException:
            with self._cond:
                self._running = None
                self._add(item)
            raise
        item.attempts += 1
        self.on_change()
        return item

    def finish(self, item: QueueItem, entry: dict[str, Any]) -> None:
        """Record the history entry and drop the prompt from the queue (one transaction)."""
        try:
            self.storage.finish(item.prompt_id, item.number, entry)
        finally:
            with self._cond:
                if self._running is item:
                    self._running = None
            self.on_change()

    def requeue(self, item: QueueItem) -> None:
        """Put a prompt that was stopped by a shutdown back, not counting the attempt."""
        with self._cond:
            self.storage.mark_pending(item.prompt_id, refund_attempt=True)
            if self._running is item:
                self._running = None
            item.attempts -= 1
            self._add(item)

    def delete(self, prompt_ids: list[str]) -> int:
        """Remove pending prompts (the running one is interrupted, not deleted)."""
        with self._cond:
            hits = [p for p in prompt_ids if p in self._pending]
            if hits:
                self.storage.dequeue(hits)
                for p in hits:
                    del self._pending[p]
        if hits:
            self.on_change()
        return len(hits)

    def clear(self) -> int:
        with self._cond:
            ids = list(self._pending)
        return self.delete(ids)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            handoff, self._handoff = self._handoff, None
            self._cond.notify_all()
        if handoff is not None:  # never started: not an attempt
            self.storage.mark_pending(handoff.prompt_id, refund_attempt=True)

    # --- views -----------------------------------------------------------------
    def remaining(self) -> int:
        with self._cond:
            return len(self._pending) + (self._running is not None)

    def running(self) -> QueueItem | None:
        return self._running

    def __contains__(self, prompt_id: object) -> bool:
        with self._cond:
            return prompt_id in self._pending or (
                self._running is not None and self._running.prompt_id == prompt_id)

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running, pending) as ComfyUI's queue lists, pending in run order."""
        with self._cond:
            running = [self._running.as_list()] if self._running else []
            pending = sorted(self._pending.values(), key=lambda i: (i.number, i.seq))
            return running, [i.as_list() for i in pending]

    def _live(self, entry: tuple[float, int, str]) -> bool:
        item = self._pending.get(entry[2])
        return item is not None and item.seq == entry[1]

    def _add(self, item: QueueItem) -> None:
        self._pending[item.prompt_id] = item
        heapq.heappush(self._heap, (item.number, item.seq, item.prompt_id))
