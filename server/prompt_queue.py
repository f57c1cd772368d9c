"""The persistent prompt queue: memory for speed, SQLite for durability.

The event loop puts prompts in; the dispatcher thread takes them out. Each
change is written to the database before it is visible in memory, so what a
client was told (queued, running, done) survives a crash. New prompts are
group-committed: requests that arrive while a commit is under way wait for the
next one and share it, so a burst of N prompts costs a few commits, not N, and
each prompt is still on disk before its request is answered. A prompt found
"running" at start-up was cut off by a crash: it is re-queued, or recorded as
failed once it has been tried ``max_attempts`` times (a prompt that kills the
process must not crash-loop the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from server.storage import Storage


class DuplicatePromptId(ValueError):
    """A prompt with this id is already queued."""


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
        # Prompts running on a worker pool's other workers (server/pool.py), by id.
        self._active: dict[str, QueueItem] = {}
        self._handoff: QueueItem | None = None  # given to the idle worker by put()
        self._idle = False  # the worker is waiting in take()
        self._closed = False
        self._batch: list[tuple[QueueItem, asyncio.Future[None]]] = []
        self._batch_lock = threading.Lock()
        self._writing = False
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="steerflow-commit")
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

    async def submit(self, item: QueueItem) -> None:
        """Persist (group commit), then queue; raises what the storage raises, or
        :class:`DuplicatePromptId` (nothing is queued then).

        Requests handled in the same event-loop turn share one commit. Without
        ``fsync`` a WAL commit is a ~50 µs write, cheaper than a hand-off to another
        thread, so it runs on the loop; with ``fsync`` it runs in a writer thread and
        the requests that arrive meanwhile share the next one.
        """
        if self._closed:
            raise RuntimeError("the queue is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        item.seq = next(self._seqs)
        with self._batch_lock:
            self._batch.append((item, future))
            start, self._writing = not self._writing, True
        if start:
            if self.storage.fsync:
                self._writer.submit(self._write_batches, loop)
            else:
                loop.call_soon(self._write_batches, None)
        await future

    def put(self, item: QueueItem) -> None:
        """:meth:`submit` for callers without an event loop (one commit)."""
        if self._closed:
            raise RuntimeError("the queue is closed")
        item.seq = next(self._seqs)
        error = self._put_many([item])[0]
        if error is not None:
            raise error

    def _write_batches(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Commit batches until none is left; ``loop``: resolve futures across threads."""
        while True:
            with self._batch_lock:
                batch, self._batch = self._batch, []
                if not batch:
                    self._writing = False
                    return
            errors = self._put_many([item for item, _ in batch])
            for (_, future), error in zip(batch, errors, strict=True):
                if loop is None:
                    _resolve(future, error)
                    continue
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_resolve, future, error)

    def _put_many(self, items: list[QueueItem]) -> list[BaseException | None]:
        with self._cond:
            # An idle worker gets the first prompt directly, stored as running (attempt
            # 1) by the insert itself: one write per prompt fewer on the latency path.
            direct = self._idle and self._running is None and not self._pending \
                and self._handoff is None
            first = items[0] if direct else None
            if first is not None:
                self._running = first
        try:
            # Written before it is visible: the worker never runs an unsaved prompt.
            # Outside the lock, so the dispatcher is not held up by this commit.
            inserted = self.storage.enqueue_many(
                [(i.prompt_id, i.number, i.seq, i.body(), i is first) for i in items])
        except BaseException as exc:
            if first is not None:
                with self._cond:
                    self._running = None
            return [exc] * len(items)
        errors: list[BaseException | None] = []
        with self._cond:
            for item, ok in zip(items, inserted, strict=True):
                if not ok:
                    if item is first:
                        self._running = None
                    errors.append(DuplicatePromptId(
                        f"prompt {item.prompt_id!r} is already queued"))
                    continue
                errors.append(None)
                if item is first:
                    item.attempts = 1
                    self._handoff = item
                else:
                    self._add(item)
            self._cond.notify_all()  # a pool's idle workers each decide if it is theirs
        self.on_change()
        return errors

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

    def take_pick(self, pick: Callable[[list[QueueItem]], QueueItem | None],
                  timeout: float | None = None) -> QueueItem | None:
        """A worker pool's :meth:`take`: ``pick`` chooses among the pending prompts (in run
        order, under the queue's lock); several prompts may run at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                pending = sorted(self._pending.values(), key=lambda i: (i.number, i.seq))
                item = pick(pending) if pending else None
                if item is not None:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            del self._pending[item.prompt_id]  # its heap entry is skipped as stale
            self._active[item.prompt_id] = item
        try:
            self.storage.mark_running(item.prompt_id)  # counts the attempt before it runs
        except BaseException:
            with self._cond:
                self._active.pop(item.prompt_id, None)
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
                self._active.pop(item.prompt_id, None)
            self.on_change()

    def requeue(self, item: QueueItem, *, refund: bool = True) -> None:
        """Put a running prompt back: stopped by a shutdown (``refund``: the attempt does
        not count), or cut off by its worker's death (it counts, as after a kill -9)."""
        with self._cond:
            self.storage.mark_pending(item.prompt_id, refund_attempt=refund)
            if self._running is item:
                self._running = None
            self._active.pop(item.prompt_id, None)
            if refund:
                item.attempts -= 1
            self._add(item)
            self._cond.notify_all()
        if not refund:
            self.on_change()

    def wake(self) -> None:
        """Make a waiting :meth:`take_pick` ask its ``pick`` again (a worker became idle)."""
        with self._cond:
            self._cond.notify_all()

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
        self._writer.shutdown(wait=True)  # commits under way finish and are queued
        with self._cond:
            self._closed = True
            handoff, self._handoff = self._handoff, None
            self._cond.notify_all()
        if handoff is not None:  # never started: not an attempt
            self.storage.mark_pending(handoff.prompt_id, refund_attempt=True)

    # --- views -----------------------------------------------------------------
    def remaining(self) -> int:
        with self._cond:
            return len(self._pending) + (self._running is not None) + len(self._active)

    def running(self) -> QueueItem | None:
        return self._running

    def __contains__(self, prompt_id: object) -> bool:
        with self._cond:
            return prompt_id in self._pending or prompt_id in self._active or (
                self._running is not None and self._running.prompt_id == prompt_id)

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running, pending) as ComfyUI's queue lists, pending in run order."""
        with self._cond:
            running = [self._running.as_list()] if self._running else []
            running += [i.as_list() for i in self._active.values()]
            pending = sorted(self._pending.values(), key=lambda i: (i.number, i.seq))
            return running, [i.as_list() for i in pending]

    def _live(self, entry: tuple[float, int, str]) -> bool:
        item = self._pending.get(entry[2])
        return item is not None and item.seq == entry[1]

    def _add(self, item: QueueItem) -> None:
        self._pending[item.prompt_id] = item
        heapq.heappush(self._heap, (item.number, item.seq, item.prompt_id))


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the request was cancelled; the prompt is queued all the same
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
