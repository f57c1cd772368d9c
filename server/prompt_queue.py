"""The persistent prompt queue: memory for speed, SQLite for durability.

The event loop puts prompts in; each worker's thread (server/pool.py) takes the
one routed to it out. Each
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
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from server.storage import Storage

log = logging.getLogger(__name__)

#: seconds before a refused history entry is written again, doubling up to the maximum
UNSAVED_RETRY_FIRST = 1.0
UNSAVED_RETRY_MAX = 30.0


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


class Pending:
    """The pending prompts as a worker's ``pick`` sees them, under the queue's lock.

    Both views cost O(log n) per stale entry skipped, not a sort of the whole queue:
    a deep queue must not slow every take down.
    """

    def __init__(self, queue: PromptQueue):
        self._queue = queue

    def head(self) -> QueueItem | None:
        """The first prompt in run order (number, then arrival)."""
        return self._queue._head(self._queue._heap)

    def heads(self) -> dict[str | None, QueueItem]:
        """Each client's first prompt in run order."""
        heads: dict[str | None, QueueItem] = {}
        for client, heap in list(self._queue._by_client.items()):
            item = self._queue._head(heap)
            if item is None:
                del self._queue._by_client[client]
            else:
                heads[client] = item
        return heads


class PromptQueue:
    """Pending prompts ordered by (number, arrival), plus those running."""

    def __init__(self, storage: Storage, *, on_change: Callable[[], None] = lambda: None,
                 max_attempts: int = 3):
        self.storage = storage
        self.on_change = on_change
        self.max_attempts = max_attempts
        self._cond = threading.Condition()
        self._pending: dict[str, QueueItem] = {}
        # Run order, and each client's run order (for fair share); entries of prompts
        # taken or deleted meanwhile are stale and skipped lazily.
        self._heap: list[tuple[float, int, str]] = []
        self._by_client: dict[str | None, list[tuple[float, int, str]]] = {}
        self._active: dict[str, QueueItem] = {}  # running on the pool's workers, by id
        self._closed = False
        self._batch: list[tuple[QueueItem, asyncio.Future[None]]] = []
        self._batch_lock = threading.Lock()
        self._writing = False
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="steerflow-commit")
        #: finished prompts whose history entry the database refused, by id (see finish)
        self._unsaved: dict[str, tuple[QueueItem, dict[str, Any]]] = {}
        self._retrying = False
        top_number, top_seq = storage.max_counters()
        self._numbers = itertools.count(top_number + 1)
        self._seqs = itertools.count(top_seq + 1)

    def recover(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """Load the stored queue; returns the items that ran out of attempts (not queued)
        and those that were running when the server stopped (queued to run again)."""
        failed: list[QueueItem] = []
        rerun: list[QueueItem] = []
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
                    rerun.append(item)
                self._add(item)
        return failed, rerun

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
        try:
            # Written before it is visible: a worker never runs an unsaved prompt.
            # Outside the lock, so the workers are not held up by this commit.
            inserted = self.storage.enqueue_many(
                [(i.prompt_id, i.number, i.seq, i.body()) for i in items])
        except BaseException as exc:
            return [exc] * len(items)
        errors: list[BaseException | None] = []
        with self._cond:
            for item, ok in zip(items, inserted, strict=True):
                if not ok:
                    errors.append(DuplicatePromptId(
                        f"prompt {item.prompt_id!r} is already queued"))
                    continue
                errors.append(None)
                self._add(item)
            # Under the lock: the status that counts these prompts is posted before a
            # worker can take one and post its execution_start (ComfyUI's order).
            self.on_change()
            self._cond.notify_all()  # the idle workers each decide if it is theirs
        return errors

    def take_pick(self, pick: Callable[[Pending], QueueItem | None],
                  timeout: float | None = None) -> QueueItem | None:
        """Block until ``pick`` chooses a pending prompt (it is called under the queue's
        lock, again after each change or :meth:`wake`); mark it running and return it.
        None when closed or timed out. Several prompts may run at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view = Pending(self)
        with self._cond:
            while True:
                if self._closed:
                    return None
                item = pick(view) if self._pending else None
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
        """Record the history entry and drop the prompt from the queue (one transaction).

        When the write fails (the disk is full), the prompt stays in the queue as running
        with its entry held in memory, written again every few seconds until it lands:
        it never drops out of both /queue and /history, and its client is told how it
        ended. A restart before then runs it again, as one cut off.
        """
        try:
            self.storage.finish(item.prompt_id, item.number, entry)
        except Exception as exc:
            self._hold_unsaved(item, entry, exc)
            return
        with self._cond:
            self._active.pop(item.prompt_id, None)
        self.on_change()

    def _hold_unsaved(self, item: QueueItem, entry: dict[str, Any], exc: Exception) -> None:
        log.error("cannot record the end of prompt %s (%s: %s); it stays in the queue and "
                  "is written again until the database takes it", item.prompt_id,
                  type(exc).__name__, exc)
        with self._cond:
            self._unsaved[item.prompt_id] = (item, entry)
            start = not self._retrying and not self._closed
            self._retrying = self._retrying or start
        if start:
            threading.Thread(target=self._write_unsaved, name="steerflow-history-retry",
                             daemon=True).start()

    def _write_unsaved(self) -> None:
        delay = UNSAVED_RETRY_FIRST
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed, delay)
                if self._closed or not self._unsaved:
                    self._retrying = False
                    return
                held = list(self._unsaved.values())
            for item, entry in held:
                try:
                    self.storage.finish(item.prompt_id, item.number, entry)
                except Exception:
                    continue
                with self._cond:
                    self._unsaved.pop(item.prompt_id, None)
                    self._active.pop(item.prompt_id, None)
                log.info("recorded the end of prompt %s", item.prompt_id)
                self.on_change()
            delay = min(delay * 2, UNSAVED_RETRY_MAX)

    def requeue(self, item: QueueItem, *, refund: bool = True) -> None:
        """Put a running prompt back: stopped by a shutdown (``refund``: the attempt does
        not count), or cut off by its worker's death (it counts, as after a kill -9)."""
        with self._cond:
            self.storage.mark_pending(item.prompt_id, refund_attempt=refund)
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
        """Remove pending prompts (running ones are interrupted, not deleted)."""
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
            self._cond.notify_all()
            unsaved = list(self._unsaved)
        if unsaved:
            log.error("the end of prompt(s) %s could not be recorded; they run again at the "
                      "next start", ", ".join(unsaved))

    # --- views -----------------------------------------------------------------
    @property
    def lock(self) -> threading.Condition:
        """The queue's lock (re-entrant): every change to it is made holding it."""
        return self._cond

    def remaining(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._active)

    def __contains__(self, prompt_id: object) -> bool:
        with self._cond:
            return prompt_id in self._pending or prompt_id in self._active

    def snapshot(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """(running, pending) as ComfyUI's queue lists, pending in run order."""
        with self._cond:
            running = [i.as_list() for i in self._active.values()]
            pending = sorted(self._pending.values(), key=lambda i: (i.number, i.seq))
            return running, [i.as_list() for i in pending]

    def _live(self, entry: tuple[float, int, str]) -> bool:
        item = self._pending.get(entry[2])
        return item is not None and item.seq == entry[1]

    def _head(self, heap: list[tuple[float, int, str]]) -> QueueItem | None:
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)  # taken, deleted or re-submitted since
        return self._pending[heap[0][2]] if heap else None

    def _add(self, item: QueueItem) -> None:
        self._pending[item.prompt_id] = item
        entry = (item.number, item.seq, item.prompt_id)
        heapq.heappush(self._heap, entry)
        heapq.heappush(self._by_client.setdefault(item.client_id, []), entry)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the request was cancelled; the prompt is queued all the same
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
