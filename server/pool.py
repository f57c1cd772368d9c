"""The run loop: a pool of workers behind the one queue, local processes or Ray actors.

``steerflow serve`` runs a pool of one local worker process; ``--workers N`` runs N
(one per device of ``--worker-devices``), ``--ray`` runs Ray actors. Every prompt
takes the same path whatever the pool's size: the worker's own thread takes it from
the queue, runs it on its worker and records its end (:class:`~server.runtime.Runtime`
relays the events and writes the history).

The head (this server) keeps the SQLite queue and history as the single source of
truth; workers only run prompts and send events and outputs back, over the one
protocol of :mod:`server.worker`. A worker is hosted one of two ways
(:mod:`server.hosts`):

- :class:`~server.hosts.LocalHost`: worker processes on this machine
  (:class:`~server.worker.WorkerProcess`);
- ``steerflow.ray_worker.RayHost``: ``--ray ADDRESS|auto|local``, one Ray actor per GPU
  (or CPU) slot, which connects back to the head's worker port
  (:class:`~server.worker.WorkerListener`, HMAC challenge under the token or a per-run secret) and
  sends the files it saves, which land in the head's output/; the head sends it the
  files of its input/ that each prompt names (:meth:`PoolRuntime._send_files`).

Routing (decided by each idle worker's thread, under the queue's lock, so that one
prompt is taken once and by the worker it is routed to; no thread in between adds
latency): a prompt goes to an idle worker whose cache holds its models (its model-file
inputs, :func:`~server.worker.prompt_models`, reported by the workers in
``ready``/``done``); otherwise to the least-loaded idle worker (the one holding the
fewest models, so warm workers stay warm). Prompts queued at the front go first;
the others are served round-robin across clients, so one client's burst cannot
starve another. An interrupt reaches the worker running that prompt: cooperative
first, then, ``interrupt_grace`` seconds later, its worker is killed (and restarted)
and the prompt is recorded as interrupted, never run again.

Faults: a worker that dies by itself mid-prompt (a segfault, out of memory, a kill -9,
a Ray node lost) is killed for sure (a Ray actor may outlive its connection), and its
prompt goes back in the queue with the attempt counted, as after a kill -9 of the
whole server; after ``max_attempts`` it is failed with the cause (e.g. "killed by
SIGSEGV"), so a prompt that crashes its worker every time ends, and the next prompts
run; each such retry leaves a ``steerflow_retry`` message in its history entry. A
worker that dies idle is logged and replaced; a prompt sent to it just before it died
(unacknowledged: the worker sent nothing for it) goes back in the queue with no attempt
counted. A dead local worker's half-written files (``.<name>.<pid>.<token>.tmp``) are
removed when it is replaced. A prompt is marked running on one worker only, and
re-queued only once its worker is dead, so none runs to completion twice unseen. A
worker that cannot start while prompts wait is started again after a short back-off
(``START_TRIES`` times, within a few seconds), the prompts waiting for it: a passing
fault (the new worker killed for another process's memory) loses nothing. Only when
the starts keep failing with no worker up are the queued prompts failed with the
cause, never left waiting silently; with nothing queued, the restarts back off further
(a prompt queued then cuts the wait short and gets fresh starts first).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from server.config import ServerConfig
from server.hosts import Slot, WorkerHost, make_host, wait_ready, worker_config
from server.prompt_queue import Pending, PromptQueue, QueueItem
from server.runtime import POLL, Running, Runtime, _class_type, _now_ms
from server.worker import (
    MAX_SENT_BYTES,
    MAX_SENT_FILE_BYTES,
    OOM_KILLED,
    Channel,
    Message,
    WorkerDied,
    WorkerProcess,
    is_model_input,
    prompt_files,
    prompt_models,
)
from server.ws import Hub, message

log = logging.getLogger(__name__)

MAX_ASSIGNMENTS = 10000  # prompt -> worker, kept for /system_stats and the tests
MAX_CLIENTS = 4096  # clients remembered for round-robin beyond those with prompts queued
RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds, by failed starts in a row
#: seconds a node that ignores the interrupt keeps its worker once the server is stopping
SHUTDOWN_GRACE = 1.0
# A start that fails while prompts wait is retried (the prompts wait for it) up to
# START_TRIES times per slot, START_RETRY_BACKOFF seconds apart, before they are failed.
START_TRIES = 3
START_RETRY_BACKOFF = (0.5, 1.5, 3.0)
#: the history message a prompt gets for each run cut off by its worker's death (ComfyUI's
#: shape, ``[type, {"prompt_id", "timestamp", ...}]``; its clients skip types they do not
#: know): the client sees that, and why, it ran again
RETRY_MESSAGE = "steerflow_retry"
MAX_NOTES = 10000  # prompts remembered for their retry messages and unacknowledged runs


class FailureEpisode:
    """A failure that repeats for as long as its cause lasts (a full disk), logged without
    flooding the log: the traceback once, then one line at most every ``every`` seconds,
    and one line when it is over. Shared by the threads that meet it."""

    def __init__(self, what: str, over: str, every: float = 60.0):
        self.what = what  # "cannot ...", logged with "; retrying"
        self.over = over  # what works again, logged when the episode ends
        self.every = every
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic start of the episode under way
        self._last = 0.0  # when it was last logged
        self._tries = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            first = self._since is None
            if first:
                self._since, self._tries = now, 0
            self._tries += 1
            due = first or now - self._last >= self.every
            if due:
                self._last = now
            since = self._since
        if first:
            log.error("%s; retrying", self.what, exc_info=exc)
        elif due:
            log.error("%s for %.0f s now (%s: %s); retrying", self.what, now - since,
                      type(exc).__name__, str(exc)[:200])

    def recovered(self) -> None:
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, tries, self._since = self._since, self._tries, None
        if since is not None:
            log.info("%s after %.0f s (%d failed tries)", self.over,
                     time.monotonic() - since, tries)


class PoolRuntime(Runtime):
    """The server's runtime: one thread per worker takes, runs and records the prompts
    routed to it; a supervising thread starts the host and winds it down."""

    def __init__(self, config: ServerConfig, queue: PromptQueue, hub: Hub, env: Any,
                 registry_factory: Callable[[], Any] | None = None,
                 host: WorkerHost | None = None):
        super().__init__(config, queue, hub, env, registry_factory)
        self.host = host
        self.slots: list[Slot] = []
        self.assignments: OrderedDict[str, str] = OrderedDict()
        self._pool = threading.Lock()
        self._served: dict[str | None, int] = {}  # client -> tick it was last served
        self._ticks = itertools.count(1)
        self._local = threading.local()  # .slot: the slot whose thread this is
        self._thread: threading.Thread | None = None
        self._wound_down = False
        self._failed_starts = 0  # failed starts in a row while prompts wait (no worker up)
        # By prompt: the retry messages of its runs cut off so far (for its history), and
        # how many times in a row its worker died before it acknowledged the prompt.
        self._retry_notes: OrderedDict[str, list[list[Any]]] = OrderedDict()
        self._unacked: OrderedDict[str, int] = OrderedDict()
        self._take_failures = FailureEpisode("cannot take a prompt from the queue",
                                             "prompts are taken from the queue again")

    @property
    def worker(self) -> Channel | None:
        """A live worker, an idle one first: what node packs' HTTP routes talk to."""
        slots = sorted(self.slots, key=lambda s: s.state != "idle")
        return next((s.worker for s in slots if s.worker is not None), None)

    # --- lifecycle -----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Recover the queue, load the packs (:meth:`Runtime.start`), start the pool."""
        super().start(loop)
        self._thread = threading.Thread(target=self._dispatch, name="steerflow-dispatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop taking prompts; running ones are interrupted and go back in the queue."""
        left = self.queue.remaining()
        # a warning, to be seen at the default level: work is carried over to the next start
        log.log(logging.WARNING if left else logging.INFO, "stopping: %s",
                f"{left} running/pending prompt(s) go back in the queue" if left
                else "no prompts are queued")
        self._stopping = True
        self.queue.close()
        # the server is going: a node that ignores the interrupt is not given the whole
        # interrupt_grace (its prompt goes back in the queue either way)
        self.interrupt(grace=min(SHUTDOWN_GRACE, self.config.interrupt_grace))
        if self._thread is not None:  # it winds the workers and the host down
            self._thread.join(self.config.interrupt_grace + 15.0)
        self._wind_down()  # in case it could not

    def _wind_down(self) -> None:
        """Wait for the workers' threads, stop the workers, then close the host (once)."""
        with self._pool:
            done, self._wound_down = self._wound_down, True
        if done:
            return
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(self.config.interrupt_grace + 5.0)
        for slot in self.slots:
            worker, slot.worker = slot.worker, None
            if worker is not None:
                worker.stop()
        if self.host is not None:
            self.host.close()

    def interrupt(self, prompt_id: str | None = None, *, grace: float | None = None) -> bool:
        """Interrupt the prompt ``prompt_id`` on the worker running it (None: all); its
        worker is killed if it has not stopped ``grace`` seconds later (default:
        ``interrupt_grace``; an earlier deadline stays)."""
        hits: list[tuple[Channel, str]] = []
        deadline = time.monotonic() + (self.config.interrupt_grace if grace is None else grace)
        with self._pool:
            for slot in self.slots:
                running = slot.running
                if running is None or (prompt_id is not None
                                       and running.item.prompt_id != prompt_id):
                    continue
                if running.hard_deadline is None or running.hard_deadline > deadline:
                    running.hard_deadline = deadline
                if slot.worker is not None:
                    hits.append((slot.worker, running.item.prompt_id))
        for worker, pid in hits:
            worker.send({"op": "interrupt", "prompt_id": pid})
        return bool(hits)

    def free(self, unload_models: bool, free_memory: bool) -> int:
        with self._pool:
            workers = [slot.worker for slot in self.slots if slot.worker is not None]
            # an idle worker frees at once and reports nothing until its next prompt, so
            # /system_stats shows it freed now; a busy one's next report says so
            for slot in self.slots:
                if slot.worker is not None and slot.running is None:
                    slot.models = set()
            if all(slot.running is None for slot in self.slots):
                self.worker_info.update(cache_entries=0, cache_bytes={}, models=[])
        for worker in workers:
            worker.send({"op": "free", "unload_models": unload_models,
                         "free_memory": free_memory})
        return len(workers)

    def workers(self) -> list[dict[str, Any]]:
        """Each worker's state, for /system_stats and the tests."""
        with self._pool:
            return [s.describe() for s in self.slots]

    # --- scheduling: each idle worker's thread takes the prompt routed to it -------------
    def _dispatch(self) -> None:
        """Start the host and the workers' threads, then wait for the stop.

        This thread lives until the stop, and closes the host itself, because children
        it spawned (a local Ray cluster's processes) are bound to it: PR_SET_PDEATHSIG
        fires when the thread that forked them ends, not the process.
        """
        try:
            if self.host is None:
                self.host = make_host(self.config)
            count = max(1, self.host.size())
        except Exception as exc:
            log.exception("cannot start the worker pool")
            self.worker_error = f"{type(exc).__name__}: {exc}"
            self._set(self._setup_done)
            while not self._stopping:  # no pool: every prompt fails with the cause
                item = self.queue.take_pick(lambda pending: pending.head(), timeout=1.0)
                if item is not None:
                    self._record_failure(item, f"no worker is available: "
                                         f"{self.worker_error}", "WorkerUnavailable")
            return
        self.slots = [Slot(i) for i in range(count)]
        for slot in self.slots:
            slot.kind = str(getattr(self.host, "kind", "local"))
            slot.thread = threading.Thread(target=self._slot_main, args=(slot,),
                                           name=f"steerflow-{slot.name}", daemon=True)
            slot.thread.start()
        while not self._stopping:
            time.sleep(POLL)
        self._wind_down()

    def _pick_for(self, slot: Slot, pending: Pending) -> QueueItem | None:
        """Called under the queue's lock by an idle ``slot``: the prompt routed to it, if
        any (marked busy here, so that no other worker routes to it meanwhile)."""
        with self._pool:
            idle = [s for s in self.slots if s.state == "idle"]
            if slot not in idle or slot.worker is None or not slot.worker.alive():
                return None  # (died idle: its thread restarts it at the next wake-up)
            item, client = self._fair(pending)
            target = self._route(item, idle)
            if target is not slot:
                self.queue.wake()  # the worker it is routed to takes it
                return None
            self._served[client] = next(self._ticks)
            slot.job, slot.state, slot.running = item, "busy", Running(item)
            self.assignments[item.prompt_id] = slot.name
            while len(self.assignments) > MAX_ASSIGNMENTS:
                self.assignments.popitem(last=False)
            return item

    def _fair(self, pending: Pending) -> tuple[QueueItem, str | None]:
        """Front-queued prompts first; then round-robin over clients, oldest first.
        Returns the prompt and its client (whose turn the caller records)."""
        head = pending.head()
        assert head is not None  # take_pick asks only while prompts are pending
        if head.number < 0 or not getattr(self.config, "fair_queue", False):
            return head, head.client_id  # ComfyUI's order: by number (front first)
        firsts = pending.heads()
        if len(self._served) > MAX_CLIENTS:  # forget clients with nothing queued
            self._served = {c: t for c, t in self._served.items() if c in firsts}
        client = min(firsts, key=lambda c: (self._served.get(c, 0), firsts[c].number,
                                            firsts[c].seq))
        return firsts[client], client

    @staticmethod
    def _route(item: QueueItem, idle: list[Slot]) -> Slot:
        models = set(prompt_models(item.prompt))
        warm = [s for s in idle if models & s.models]
        if warm:
            return max(warm, key=lambda s: (len(models & s.models), -len(s.models), -s.index))
        return min(idle, key=lambda s: (len(s.models), s.runs, s.index))

    # --- one worker's thread --------------------------------------------------------------
    def _slot_main(self, slot: Slot) -> None:
        self._local.slot = slot
        while not self._stopping:
            worker = slot.worker
            if worker is not None and not worker.alive() and not self._stopping:
                self._lost_idle(slot, worker)
            if slot.worker is None and not self._start_slot(slot):
                continue
            with self._pool:
                slot.state = "idle"
            try:
                item = self.queue.take_pick(lambda pending: self._pick_for(slot, pending),
                                            timeout=POLL)
            except Exception as exc:  # e.g. the disk is full: keep the prompt, retry later
                self._take_failures.failed(exc)
                with self._pool:
                    slot.job = slot.running = None
                time.sleep(1.0)
                continue
            if item is None:  # timed out (or closed): check the worker, wait again
                with self._pool:
                    if slot.job is not None:  # taken, then the storage failed: not run
                        slot.job = slot.running = None
                continue
            # only a prompt taken ends it: another worker's empty wait says nothing
            self._take_failures.recovered()
            try:
                if self._stopping:
                    self.queue.requeue(item)
                else:
                    self._run(slot, item)
            except BaseException as exc:  # the worker's thread must outlive any one prompt
                log.exception("prompt %s could not be processed", item.prompt_id)
                self._record_failure(item, f"internal error: {type(exc).__name__}: {exc}",
                                     type(exc).__name__)
            finally:
                with self._pool:
                    slot.job = slot.running = None
                    slot.runs += 1

    def _fail_all_pending(self, cause: str | None = None) -> None:
        """No worker can start: fail what is queued with the cause, never hang."""
        cause = cause or self.worker_error
        while not self._stopping:
            try:
                item = self.queue.take_pick(lambda pending: pending.head(), timeout=0)
            except Exception:  # e.g. the disk is full: the prompts stay queued
                log.exception("cannot take a prompt from the queue to fail it")
                return
            if item is None:
                return
            self._record_failure(item, f"no worker is available: {cause}",
                                 "WorkerUnavailable")

    def _all_down(self) -> bool:
        with self._pool:
            return all(s.state == "down" for s in self.slots)

    def _start_slot(self, slot: Slot) -> bool:
        """Start the slot's worker and wait for it; on failure, back off (False).

        A start that fails while prompts wait (a passing fault: the new worker killed
        for another process's memory) is retried after a short back-off, and the queued
        prompts wait for it; only after ``START_TRIES`` failed starts in a row (per slot,
        with no worker up) are they failed, with the cause."""
        with self._pool:
            slot.state, slot.worker, slot.models = "starting", None, set()
            slot.sent = {}
            slot.info = {"device": slot.info.get("device")}  # no pid until it is started
        attempt = slot.failures
        try:
            worker = self.host.start(slot, worker_config(self.config))  # type: ignore[union-attr]
            self.worker_starts += 1
            with self._pool:  # /system_stats shows the live process while it loads
                slot.info = {**slot.info, "pid": getattr(worker, "pid", None)}
            info = wait_ready(worker, self.config.worker_start_timeout,
                              lambda: self._stopping, lambda: self._set(self._setup_done))
        except Exception as exc:
            if self._stopping:
                return False
            cause = exc.cause if isinstance(exc, WorkerDied) else f"{type(exc).__name__}: {exc}"
            log.error("worker %s could not start: %s", slot.name, cause)
            queued = bool(self.queue.remaining())
            with self._pool:
                slot.state, slot.error = "down", cause
                # a failed start that queued prompts wait for, no worker being up
                waiting = queued and all(s.state in ("down", "starting") for s in self.slots)
                if waiting:
                    self._failed_starts += 1
                tries = self._failed_starts
                give_up = waiting and tries >= START_TRIES * len(self.slots) \
                    and all(s.state == "down" for s in self.slots)
                if give_up:
                    self._failed_starts = 0
            slot.failures = attempt + 1
            self.worker_error = cause
            self._set(self._setup_done)
            if give_up:
                self._fail_all_pending(f"the worker could not start, {tries} times in a row "
                                       f"(the last: {cause})")
            elif waiting:
                # Retry soon: the queued prompts wait for it (the back-off is not cut short).
                step = min((tries - 1) // max(1, len(self.slots)), len(START_RETRY_BACKOFF) - 1)
                deadline = time.monotonic() + START_RETRY_BACKOFF[step]
                while time.monotonic() < deadline and not self._stopping:
                    time.sleep(POLL)
                return False
            # Back off; a prompt queued meanwhile with no worker up cuts it short: it
            # gets fresh starts, and fails with the cause if those fail too.
            deadline = time.monotonic() + RESTART_BACKOFF[min(attempt, len(RESTART_BACKOFF) - 1)]
            while time.monotonic() < deadline and not self._stopping \
                    and not (self.queue.remaining() and self._all_down()):
                time.sleep(POLL)
            return False
        with self._pool:
            slot.worker, slot.info, slot.error = worker, info, None
            slot.models = _model_keys(info.get("models"))
            self._failed_starts = 0
        slot.failures = 0
        self.worker_error = None
        self.worker_info.update(info)
        self._match_packs(info.get("pack_sources"))
        return True

    def _run(self, slot: Slot, item: QueueItem) -> None:
        """Run one prompt on the slot's worker, relaying its events, until it ends."""
        worker, running = slot.worker, slot.running
        assert worker is not None and running is not None
        extra = {**item.extra_data, "preview": self.hub.has_clients}
        sent = worker.alive() and (worker.kind == "local"
                                   or self._send_files(slot, worker, item))
        if not sent or not worker.send({"op": "run", "prompt_id": item.prompt_id,
                                        "prompt": item.prompt, "extra": extra,
                                        "outputs": item.outputs}):
            self._lost_idle(slot, worker, item)  # gone before it got the prompt
            self._clear_running()
            self.queue.requeue(item)  # not an attempt
            return
        # The prompt has started once the worker acknowledged it: any message it sends
        # for it (``started``, the first events, a file, ``done``). A worker that dies
        # before (killed while idle, the run still in its socket) never ran it.
        acked = False
        messages = self._retry_notes.pop(item.prompt_id, [])
        held: list[tuple[str, str]] = []
        while True:
            try:
                msg = worker.recv(self._wait_time(running))
            except WorkerDied as exc:
                self._drop_worker(slot)
                if self._stopping:
                    self.queue.requeue(item)
                elif running.hard_deadline is not None:
                    self._record_interrupted(running, messages)
                elif not acked:
                    self._lost_unacknowledged(slot, item, exc.cause, messages)
                else:
                    self._worker_lost(item, exc.cause, messages, running.node)
                return
            if msg is None:
                kill_at = running.kill_at()
                if kill_at is not None and time.monotonic() >= kill_at:
                    log.warning("prompt %s did not stop within %.1f s of its interrupt; "
                                "killing worker %s", item.prompt_id,
                                self.config.interrupt_grace, slot.name)
                    self._drop_worker(slot)
                    if self._stopping:
                        self.queue.requeue(item)
                    else:
                        self._record_interrupted(running, messages, _killed_note(
                            self.config.interrupt_grace))
                    return
                continue
            if not acked:
                acked = True
                self._unacked.pop(item.prompt_id, None)
            if msg.op == "started":
                continue
            if msg.op == "file":
                self._store_output(msg)
                continue
            if msg.op == "done":
                with self._pool:
                    slot.models = _model_keys(msg.data.get("models"))
                self._relay(running, msg, messages, held)
                self._finish(running, msg, messages, held)
                return
            self._relay(running, msg, messages, held)

    def _send_files(self, slot: Slot, worker: Channel, item: QueueItem) -> bool:
        """Send a remote worker the head's files that the prompt names (input/, annotated
        output/ and temp/), those it lacks or that changed since; False: the worker is gone.

        The head pushes them with the run rather than the worker asking for them on the
        way: one message per file, no round trip, and the worker's own validation (which
        lists input/) sees them. A file over the bounds is not sent: the worker reports it
        missing unless its folder is shared (--remote-base-dir)."""
        total = 0
        for (role, name), path in prompt_files(item.prompt, self.env).items():
            try:
                st = path.stat()
                signature = (st.st_size, st.st_mtime_ns)
                if slot.sent.get((role, name)) == signature:
                    continue
                if st.st_size > MAX_SENT_FILE_BYTES or total + st.st_size > MAX_SENT_BYTES:
                    log.warning("not sending %s/%s (%d bytes) to worker %s: over the bound; "
                                "share the folder (--remote-base-dir) for such files",
                                role, name, st.st_size, slot.name)
                    continue
                data = path.read_bytes()
            except OSError as exc:
                log.warning("cannot read %s/%s for worker %s: %s", role, name, slot.name, exc)
                continue
            sub, _, filename = name.rpartition("/")
            if not worker.send_file({"type": role, "subfolder": sub, "filename": filename},
                                    data):
                return False
            total += len(data)
            slot.sent[(role, name)] = signature
        return True

    def _drop_worker(self, slot: Slot) -> None:
        """Kill the slot's worker for sure (its thread starts a new one), and remove the
        temp files of the writes it was making (a killed save's half-written image)."""
        with self._pool:
            worker, slot.worker, slot.models = slot.worker, None, set()
            slot.info = {**slot.info, "pid": None}
            # no worker now: never "idle" without one (its thread starts the next)
            slot.state = "down" if self._stopping else "starting"
        if worker is None:
            return
        worker.kill()
        if isinstance(worker, WorkerProcess):  # a remote worker's pid is another machine's
            # off this thread: output/ may hold many files, and the new worker waits
            threading.Thread(target=self._remove_writes_of, args=(worker.pid,),
                             name="steerflow-cleanup", daemon=True).start()

    def _remove_writes_of(self, pid: int) -> None:
        from server.files import remove_writes_of

        try:
            remove_writes_of(self.env, pid)
        except Exception:
            log.warning("cannot remove the temp files of worker process %d", pid,
                        exc_info=True)

    def _remember(self, notes: OrderedDict[str, Any], key: str, value: Any) -> None:
        """Keep ``value`` under ``key``, the oldest dropped past MAX_NOTES (a prompt
        deleted from the queue never takes its notes back)."""
        with self._pool:
            notes[key] = value
            notes.move_to_end(key)
            while len(notes) > MAX_NOTES:
                notes.popitem(last=False)

    def _lost_idle(self, slot: Slot, worker: Channel, item: QueueItem | None = None) -> None:
        """The slot's worker ended while it ran no prompt (``item``: the one it was about
        to get): say how, for the operator, and clear it away; its thread starts a new one."""
        cause = worker.exit_cause()
        pid = getattr(worker, "pid", None)
        if item is None:
            log.warning("worker %s (pid %s) ended while idle: %s; starting a new one",
                        slot.name, pid, cause)
        else:
            log.warning("worker %s (pid %s) ended before it got prompt %s: %s; the prompt "
                        "goes back in the queue (no attempt counted)", slot.name, pid,
                        item.prompt_id, cause)
        self._drop_worker(slot)

    def _lost_unacknowledged(self, slot: Slot, item: QueueItem, cause: str,
                             messages: list[list[Any]]) -> None:
        """The worker died before it acknowledged the prompt (killed while idle, the run
        still unread): not an attempt, the prompt goes back in the queue. The prompt may
        still be the cause (a pack's validation that crashes the worker): after
        ``max_attempts`` such deaths in a row it is failed with the cause."""
        count = self._unacked.pop(item.prompt_id, 0) + 1
        if count >= self.queue.max_attempts:
            self._record_failure(item, f"{cause} before it acknowledged this prompt, "
                                 f"{count} time(s) in a row; giving up on it", "WorkerDied",
                                 messages=messages)
            return
        self._remember(self._unacked, item.prompt_id, count)
        log.warning("worker %s: %s before it acknowledged prompt %s; the prompt goes back "
                    "in the queue (no attempt counted)", slot.name, cause, item.prompt_id)
        if messages:  # only earlier retry notes: nothing of this run was relayed
            self._remember(self._retry_notes, item.prompt_id, messages)
        self._clear_running()
        self.queue.requeue(item)

    def _worker_lost(self, item: QueueItem, cause: str, messages: list[list[Any]],
                     node: str | None) -> None:
        """The worker died mid-prompt: run it elsewhere, unless it ran out of attempts or
        of memory (run again, it would most likely take the host's memory again)."""
        if cause.startswith(OOM_KILLED):
            self._record_failure(item, f"{cause} while running this prompt; it is not run "
                                 "again: make it smaller (image size, batch, steps of a "
                                 "training node, prompt length)", "WorkerDied",
                                 messages=messages, node=node)
            return
        if item.attempts >= self.queue.max_attempts:
            self._record_failure(item, f"{cause} while running this prompt, "
                                 f"{item.attempts} time(s); giving up on it", "WorkerDied",
                                 messages=messages, node=node)
            return
        log.warning("%s while running prompt %s (attempt %d); it goes back in the queue",
                    cause, item.prompt_id, item.attempts)
        self._note_rerun(item, f"{cause} while running this prompt; it was run again",
                         node, [m for m in messages if m[0] == RETRY_MESSAGE])
        self._clear_running()
        self.queue.requeue(item, refund=False)

    def _note_rerun(self, item: QueueItem, message: str, node: str | None = None,
                    earlier: list[list[Any]] | None = None) -> None:
        """A ``steerflow_retry`` message for the prompt's history entry (ComfyUI's message
        shape): it ran again, after which attempt, and why."""
        notes = [*(earlier if earlier is not None else
                   self._retry_notes.get(item.prompt_id, []))]
        notes.append([RETRY_MESSAGE, {
            "prompt_id": item.prompt_id, "timestamp": _now_ms(), "attempt": item.attempts,
            "max_attempts": self.queue.max_attempts, "node_id": node,
            "node_type": _class_type(item, node), "message": message}])
        self._remember(self._retry_notes, item.prompt_id, notes)

    def _store_output(self, msg: Message) -> None:
        """A file a remote worker saved: written atomically into this head's output/
        (or temp/: previews, which /view serves too)."""
        from server.files import _write_temp

        data = msg.data
        try:
            role = data.get("type")
            if role not in ("output", "temp") or msg.payload is None:
                raise ValueError("not an output or temp file")
            path = self.env.resolve(role, str(data.get("subfolder") or ""),
                                    str(data.get("filename")))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _write_temp(path.parent, msg.payload)
            os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            log.error("cannot store an output file from a worker (%s): %s",
                      data.get("filename"), exc)

    # --- what Runtime asks of its run loop ----------------------------------------------
    def _clear_running(self) -> None:
        slot = getattr(self._local, "slot", None)
        if slot is not None:
            with self._pool:
                slot.running = None

    def _replay(self, sid: str) -> list[str]:
        out = []
        for slot in self.slots:
            running = slot.running
            if running is not None and running.item.client_id == sid and running.node:
                out.append(message("executing", {
                    "node": running.node, "display_node": running.node,
                    "prompt_id": running.item.prompt_id}))
        return out


def make_runtime(config: ServerConfig, queue: PromptQueue, hub: Hub, env: Any,
                 registry_factory: Callable[[], Any] | None = None) -> PoolRuntime:
    """The server's runtime: a pool of ``config.workers`` workers (one by default)."""
    return PoolRuntime(config, queue, hub, env, registry_factory)


def _model_keys(keys: Any) -> set[str]:
    """The ``input=value`` model keys a worker reported, its model-file inputs only (a
    worker of another version may report more: routing must not match a sampler)."""
    return {k for k in keys or () if isinstance(k, str)
            and is_model_input(k.partition("=")[0])}


def _killed_note(grace: float) -> str:
    return (f"the running node did not stop within {grace:g} s of the interrupt, so its "
            "worker was restarted; the next prompt waits while it loads its models again "
            "(--interrupt-grace sets how long a node may take to stop)")
