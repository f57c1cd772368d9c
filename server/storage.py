"""The queue and the history, in one SQLite database (WAL).

Every write is a committed transaction before the caller goes on, so a prompt
acknowledged to a client survives ``kill -9``. With ``synchronous=NORMAL``
(the default) WAL commits are not fsync'ed: they survive a crash of the
process, not of the machine; ``fsync=True`` makes them survive power loss too.
The database is opened in exclusive locking mode: one server per data folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.db_file import FileGuard
from server.errors import dumps

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_NUMBER = 2**53  # queue numbers beyond it are clamped (see max_counters)
# ComfyUI's execution.SENSITIVE_EXTRA_DATA_KEYS: API credentials a client may put in a
# prompt's extra_data (its basic_api_example.py shows how); never stored nor shown
SENSITIVE_EXTRA_DATA_KEYS = frozenset({"auth_token_comfy_org", "api_key_comfy_org"})
_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,  -- rowid: max+1, so newest last (no AUTOINCREMENT write)
    prompt_id TEXT NOT NULL UNIQUE,
    number REAL NOT NULL,
    entry TEXT NOT NULL,
    finished REAL NOT NULL
);
-- Recording a prompt in the history takes it off the queue in the same statement:
-- one atomic INSERT instead of a four-statement transaction on the hot path.
CREATE TRIGGER IF NOT EXISTS history_dequeues AFTER INSERT ON history BEGIN
    DELETE FROM queue WHERE prompt_id = NEW.prompt_id;
END;
"""
# A finished prompt's job status (see history_status), so that /jobs filters, counts and
# pages in SQL. Added to older databases at start-up (a nullable column: versions that
# do not know it still write rows, with NULL, which the next start fills in), hence
# added here and not in _SCHEMA, and no new SCHEMA_VERSION.
_STATUS_INDEX = "CREATE INDEX IF NOT EXISTS history_status ON history(status, seq)"
# The same for /jobs' sorting and workflow_id filter: create_time and execution duration
# (ms, 0 where unknown, as ComfyUI's sort keys) and the workflow id, read off the entry.
_JOB_COLUMNS = {"created": "INTEGER", "duration": "INTEGER", "workflow_id": "TEXT"}
_JOB_INDEXES = (
    "CREATE INDEX IF NOT EXISTS history_created ON history(created, seq)",
    "CREATE INDEX IF NOT EXISTS history_status_created ON history(status, created, seq)",
)
#: /jobs' sort_by values (ComfyUI's) → the history column each sorts on.
JOB_SORT_COLUMNS = {"created_at": "created", "execution_duration": "duration"}
_INT64 = (1 << 63) - 1
HISTORY_STATUSES = ("completed", "failed", "cancelled")
END_EVENTS = {"execution_success": "completed", "execution_error": "failed",
               "execution_interrupted": "cancelled"}


def history_status(entry: Any) -> str:
    """A history entry's job status (ComfyUI's /jobs): ``completed``, ``failed`` or
    ``cancelled``. ``status_str`` first, then the last end event among its messages
    (an interrupted run is ``cancelled``); never raises, whatever the entry holds."""
    status_info = entry.get("status") if isinstance(entry, dict) else None
    if not isinstance(status_info, dict):
        return "failed"
    status = "completed" if status_info.get("status_str") == "success" else "failed"
    messages = status_info.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, list | tuple) and message:
            event = message[0]
            if isinstance(event, str) and event in END_EVENTS:
                status = END_EVENTS[event]
    return status


def millis(value: Any) -> int | None:
    """A finite JSON number as whole milliseconds within SQLite's integers, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        return None
    return max(-_INT64, min(int(value), _INT64))


def entry_times(entry: Any) -> dict[str, int]:
    """Each event's timestamp (ms) among a history entry's status messages, the last of
    each; never raises, whatever the entry holds."""
    status_info = entry.get("status") if isinstance(entry, dict) else None
    messages = status_info.get("messages") if isinstance(status_info, dict) else None
    times: dict[str, int] = {}
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, list | tuple) and len(message) >= 2 \
                and isinstance(message[0], str) and isinstance(message[1], dict):
            stamp = millis(message[1].get("timestamp"))
            if stamp is not None:
                times[message[0]] = stamp
    return times


def entry_extra(entry: Any) -> dict[str, Any]:
    """A history entry's ``extra_data`` (the prompt's 4th item), {} when it has none."""
    prompt = entry.get("prompt") if isinstance(entry, dict) else None
    extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 else None
    return extra if isinstance(extra, dict) else {}


def workflow_id(extra: dict[str, Any]) -> str | None:
    """The UI workflow's id in ``extra_data``, as ComfyUI's jobs report it."""
    # extra_data is the client's: entries stored before /prompt checked extra_pnginfo
    # may hold any JSON there, and one such entry must not break the whole listing
    pnginfo = extra.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return value if isinstance(value, str) else None


def job_keys(entry: Any) -> tuple[int, int, str | None]:
    """(create_time, execution duration, workflow id) of a history entry: what /jobs sorts
    and filters on. create_time falls back to the start, as the job shows it; either
    time unknown is 0, as ComfyUI's sort keys."""
    times = entry_times(entry)
    extra = entry_extra(entry)
    created = millis(extra.get("create_time")) or times.get("execution_start") or 0
    start = times.get("execution_start")
    end = next((times[e] for e in END_EVENTS if e in times), None)
    duration = end - start if start and end else 0
    return created, max(-_INT64, min(duration, _INT64)), workflow_id(extra)


@dataclass
class StoredItem:
    """A queue row as loaded at start-up."""

    prompt_id: str
    number: int | float
    seq: int
    body: dict[str, Any]
    state: str
    attempts: int


class StorageError(RuntimeError):
    """The database could not be opened or written."""


def is_damaged(exc: BaseException) -> bool:
    """Whether a sqlite error says the file is damaged (a page overwritten, the file cut
    short or not a database at all), not that it is busy, locked or on a full disk."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or "malformed" in text \
        or "not a database" in text


def damage_hint(path: Path, *, running: bool = False) -> str:
    """What to do about a damaged database file (nothing is deleted or repaired in place);
    ``running``: said to a running server's client, who must stop it first."""
    return (f"the file is damaged: {'stop the server, then ' if running else ''}move it "
            f"(and {path.name}-wal, {path.name}-shm if present) out of the folder to start "
            "with an empty queue and history; nothing was deleted")


def not_writable(path: Path) -> str | None:
    """Why the database file, its -wal/-shm files or its folder cannot be written (a
    read-only file system, or permissions), or None; sqlite says only "disk I/O error"
    or "readonly database"."""
    for item in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"),
                 path.parent):
        try:
            read_only = bool(os.statvfs(item).f_flag & os.ST_RDONLY)
        except OSError:  # absent: sqlite creates it, if the folder lets it
            continue
        if read_only:
            return (f"{item} is on a read-only file system: mount it read-write, or use "
                    "another --base-dir")
        if not os.access(item, os.W_OK):
            return (f"{item} is not writable by this user: change its permissions or "
                    "owner, or use another --base-dir")
    return None


def connect(path: Path, fsync: bool) -> sqlite3.Connection:
    """The server's connection to its database file, holding it for good."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1)
    # Exclusive: one server per data folder (a second one would run the same queue
    # twice), and no file-lock or shared-memory calls per transaction.
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    db.execute("BEGIN IMMEDIATE")  # takes the lock now, not at the first write
    db.execute("COMMIT")
    return db


def open_error(path: Path, exc: BaseException) -> StorageError:
    """The one-line error for a database that start-up cannot read: names the file and
    says what to do about a damaged file, or a read-only or forbidden one."""
    text = f"cannot open the database {path}: {exc}"
    if is_damaged(exc):
        text += f"; {damage_hint(path)}"
    elif (reason := not_writable(path)) is not None:
        text += f"; {reason}"
    return StorageError(text)


def _history_text(raw: bytes) -> str:
    """A stored history entry's text, if it is a strict JSON object (else ValueError):
    /history splices it into its answer as it is."""
    text = raw.decode()
    if not isinstance(json.loads(text, parse_constant=_reject_constant), dict):
        raise ValueError("not a JSON object")
    return text


class Storage:
    """Thread-safe access to the database (one connection, one lock)."""

    def __init__(self, path: Path, *, fsync: bool = False):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the data folder {path.parent}: "
                               f"{exc.strerror or exc}") from None
        self.path = path
        self.fsync = fsync
        self._lock = FileGuard(self)  # every use of the connection checks the file is there
        # History rows (by seq) whose text is known to be a strict JSON object, so
        # /history splices them unchecked: those this server wrote, and those read once.
        self._sound: set[int] = set()
        self._damaged: set[int] = set()  # rows found damaged, each logged once
        try:
            self._db = connect(path, fsync)
            self._lock.opened()
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(f"{path} was written by a newer Steerflow "
                                   f"(schema {version} > {SCHEMA_VERSION})")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(history)")}
            for column, kind in {"status": "TEXT", **_JOB_COLUMNS}.items():
                if column not in columns:
                    self._db.execute(f"ALTER TABLE history ADD COLUMN {column} {kind}")
            for index in (_STATUS_INDEX, *_JOB_INDEXES):
                self._db.execute(index)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StorageError(f"{path} is in use by another Steerflow server; stop it "
                                   "or use another --base-dir") from exc
            raise open_error(path, exc) from exc
        except sqlite3.Error as exc:
            raise open_error(path, exc) from exc
        self._statuses_filled = False
        self.fill_statuses(at_start=True)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- queue -----------------------------------------------------------------
    def enqueue(self, prompt_id: str, number: float, seq: int, body: dict[str, Any], *,
                running: bool = False) -> None:
        """Insert a prompt; ``running`` records it as started (attempt 1) in the same write."""
        text = dumps(body)
        with self._lock:
            self._db.execute(
                "INSERT INTO queue(prompt_id, number, seq, body, state, attempts, created) "
                "VALUES (?,?,?,?,?,?,?)", (prompt_id, number, seq, text,
                                           "running" if running else "pending", int(running),
                                           time.time()))

    def enqueue_many(self, rows: list[tuple[str, float, int, dict[str, Any]]]) -> list[bool]:
        """Insert pending ``(prompt_id, number, seq, body)`` rows in ONE transaction.

        Group commit: a burst of prompts costs one commit, not one each. Returns,
        per row, whether it was inserted (False: that prompt id is already queued).
        """
        texts = [dumps(body) for _, _, _, body in rows]
        now = time.time()
        inserted: list[bool] = []
        with self._tx() as db:
            for (prompt_id, number, seq, _), text in zip(rows, texts, strict=True):
                cur = db.execute(
                    "INSERT OR IGNORE INTO queue(prompt_id, number, seq, body, state, "
                    "attempts, created) VALUES (?,?,?,?,'pending',0,?)",
                    (prompt_id, number, seq, text, now))
                inserted.append(cur.rowcount == 1)
        return inserted

    def mark_running(self, prompt_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE queue SET state='running', attempts=attempts+1 "
                             "WHERE prompt_id=?", (prompt_id,))

    def mark_pending(self, prompt_id: str, *, refund_attempt: bool = False) -> None:
        with self._lock:
            self._db.execute("UPDATE queue SET state='pending', attempts=attempts-? "
                             "WHERE prompt_id=?", (int(refund_attempt), prompt_id))

    def dequeue(self, prompt_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM queue WHERE prompt_id=?", [(p,) for p in prompt_ids])

    def load_queue(self) -> list[StoredItem]:
        """The stored queue, at start-up; first repairs rows of older versions.
        Raises :class:`StorageError` (the file named) if the database cannot be read."""
        try:
            self.repair_nonfinite()
            self.scrub_credentials()
            with self._lock:
                rows = self._db.execute(
                    "SELECT CAST(prompt_id AS BLOB), number, seq, CAST(body AS BLOB), state, "
                    "attempts FROM queue ORDER BY number, seq").fetchall()
        except sqlite3.Error as exc:
            raise open_error(self.path, exc) from exc
        items = []
        for pid, number, seq, body, state, attempts in rows:
            try:
                prompt_id, value = pid.decode(), json.loads(body.decode())
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, RecursionError) as exc:  # a bit flip, a bad sector
                # left in the file (nothing is deleted), out of the queue
                log.error("queued prompt %s in %s is damaged (%s) and is not run",
                          pid.decode(errors="replace"), self.path, exc)
                continue
            items.append(StoredItem(prompt_id, _num(number), seq, value, state, attempts))
        return items

    def max_counters(self) -> tuple[int, int]:
        """(largest |number|, largest seq) in use, to continue numbering after a restart.

        Numbers beyond MAX_NUMBER (older versions accepted 1e300) are ignored: numbering
        from them would overflow SQLite's integers and refuse every new prompt. Called at
        start-up: raises :class:`StorageError` if the database cannot be read.
        """
        try:
            with self._lock:
                n_q, s_q = self._db.execute(
                    "SELECT MAX(CASE WHEN ABS(number) <= ? THEN ABS(number) END), MAX(seq) "
                    "FROM queue", (MAX_NUMBER,)).fetchone()
                (n_h,) = self._db.execute("SELECT MAX(ABS(number)) FROM history "
                                          "WHERE ABS(number) <= ?", (MAX_NUMBER,)).fetchone()
        except sqlite3.Error as exc:
            raise open_error(self.path, exc) from exc
        return int(max(n_q or 0, n_h or 0)), min(int(s_q or 0), MAX_NUMBER)

    def repair_nonfinite(self) -> int:
        """Rewrite stored JSON holding bare NaN/Infinity as strict JSON (those values
        become null); returns the number of rows fixed.

        Older versions stored them, and /history splices the stored text into its
        answer: one such row broke every browser client's JSON.parse.
        """
        fixed = 0
        for table, column in (("queue", "body"), ("history", "entry")):
            with self._lock:  # ids only: the candidates' text is read one at a time
                ids = [pid for (pid,) in self._db.execute(
                    f"SELECT prompt_id FROM {table} WHERE instr({column}, 'NaN') > 0 "
                    f"OR instr({column}, 'Infinity') > 0")]
            for prompt_id in ids:
                with self._tx() as db:
                    row = db.execute(f"SELECT {column} FROM {table} WHERE prompt_id=?",
                                     (prompt_id,)).fetchone()
                    text = _strict_text(row[0]) if row else None
                    if text is not None:
                        db.execute(f"UPDATE {table} SET {column}=? WHERE prompt_id=?",
                                   (text, prompt_id))
                        fixed += 1
        return fixed

    def scrub_credentials(self) -> int:
        """Remove comfy.org credentials that older versions stored with a prompt's
        extra_data (and /queue, /history and /jobs then showed to every client); returns
        the number of rows rewritten."""
        fixed = 0
        for table, column in (("queue", "body"), ("history", "entry")):
            where = " OR ".join(f"instr({column}, '{key}') > 0"
                                for key in sorted(SENSITIVE_EXTRA_DATA_KEYS))
            with self._lock:
                ids = [pid for (pid,) in self._db.execute(
                    f"SELECT prompt_id FROM {table} WHERE {where}")]
            for prompt_id in ids:
                with self._tx() as db:
                    row = db.execute(f"SELECT {column} FROM {table} WHERE prompt_id=?",
                                     (prompt_id,)).fetchone()
                    try:
                        value = json.loads(row[0]) if row else None
                    except ValueError:
                        continue
                    if value is not None and _drop_keys(value, SENSITIVE_EXTRA_DATA_KEYS):
                        db.execute(f"UPDATE {table} SET {column}=? WHERE prompt_id=?",
                                   (dumps(value), prompt_id))
                        fixed += 1
        return fixed

    # --- history ---------------------------------------------------------------
    def finish(self, prompt_id: str, number: float, entry: dict[str, Any]) -> None:
        """Move a prompt from the queue into the history, atomically."""
        text = dumps(entry)
        status = history_status(entry)
        with self._lock:
            cur = self._db.execute(
                "INSERT OR REPLACE INTO history(prompt_id, number, entry, finished, status,"
                " created, duration, workflow_id) VALUES (?,?,?,?,?,?,?,?)",
                (prompt_id, number, text, time.time(), status, *job_keys(entry)))
            if cur.lastrowid is not None:
                self._sound.add(cur.lastrowid)
                self._damaged.discard(cur.lastrowid)

    def prune_history(self, keep: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM history WHERE seq <= (SELECT seq FROM history "
                             "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (keep,))

    def drop_oldest(self, count: int) -> int:
        """Delete the ``count`` oldest history entries (never read: a damaged one goes
        too); returns how many were deleted."""
        with self._tx() as db:
            seqs = [seq for (seq,) in db.execute(
                "SELECT seq FROM history ORDER BY seq LIMIT ?", (count,))]
            db.executemany("DELETE FROM history WHERE seq=?", [(seq,) for seq in seqs])
        self._sound.difference_update(seqs)  # bounded: the history's rows, not all written
        self._damaged.difference_update(seqs)
        return len(seqs)

    def history(self, max_items: int | None = None, offset: int | None = None, *,
                max_bytes: int | None = None) -> list[tuple[str, str]]:
        """(prompt_id, entry JSON) oldest first; ComfyUI's paging (no offset: the newest).

        ``max_bytes``: stop adding entries once their text passes it (one is always
        returned), so a few 20 MB prompts cannot make a gigabyte answer. A damaged
        entry is left out (see :meth:`_checked`).
        """
        newest = max_items is not None and (offset is None or offset < 0)
        # Bytes, decoded here: sqlite's own decoding fails the whole query on one bad row.
        columns = "seq, CAST(prompt_id AS BLOB), CAST(entry AS BLOB)"
        with self._lock:
            if newest:
                cursor = self._db.execute(f"SELECT {columns} FROM history "
                                          "ORDER BY seq DESC LIMIT ?", (max_items,))
            else:
                cursor = self._db.execute(
                    f"SELECT {columns} FROM history ORDER BY seq LIMIT ? OFFSET ?",
                    (-1 if max_items is None else max_items, max(offset or 0, 0)))
            raw: list[tuple[int, bytes, bytes]] = []
            size = 0
            for row in cursor:  # row by row: the budget bounds memory too
                size += len(row[2])
                if raw and max_bytes is not None and size > max_bytes:
                    break
                raw.append(row)
        rows: list[tuple[str, str]] = []
        for seq, prompt_id, entry in reversed(raw) if newest else raw:
            text = self._checked(seq, prompt_id, entry)
            if text is not None:
                rows.append((prompt_id.decode(), text))
        return rows

    def _checked(self, seq: int, prompt_id: bytes, entry: bytes) -> str | None:
        """A history row's entry text, or None if the row is damaged (a bit flip, a bad
        sector: not UTF-8, not a JSON object), logged once per row.

        Each row is parsed once (those this server wrote not at all), then spliced as
        text; one damaged row must not make the whole /history answer invalid JSON.
        """
        if seq in self._damaged:
            return None
        try:
            prompt_id.decode()
            if seq in self._sound:
                return entry.decode()
            text = _history_text(entry)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included
            self._report_damaged(seq, prompt_id, exc)
            return None
        self._sound.add(seq)
        return text

    def _report_damaged(self, seq: int, prompt_id: bytes, exc: BaseException) -> None:
        if seq in self._damaged:
            return
        self._damaged.add(seq)
        name = prompt_id.decode(errors="replace")
        log.warning("history entry %s (row %d) in %s is damaged (%s: %s); /history and /jobs "
                    "leave it out. POST /history {\"delete\": [%s]} deletes it", json.dumps(name),
                    seq, self.path, type(exc).__name__, str(exc)[:200], json.dumps(name))

    def fill_statuses(self, *, at_start: bool = False) -> int:
        """Set the job status and sort keys of history rows that have none (written by a
        version before those columns, or by an older version since); returns the number
        of rows set.

        One row at a time, so memory stays bounded whatever the entries hold; on a
        database error (a full disk) the rest waits for the next call. A damaged file
        found ``at_start`` raises :class:`StorageError`: the server is not going to run.
        """
        if self._statuses_filled:
            return 0
        filled = 0
        try:
            while True:
                with self._lock:
                    seqs = [seq for (seq,) in self._db.execute(
                        "SELECT seq FROM history WHERE status IS NULL OR created IS NULL"
                        " OR duration IS NULL LIMIT 500")]
                if not seqs:
                    break
                with self._tx() as db:
                    for seq in seqs:
                        row = db.execute("SELECT CAST(entry AS BLOB) FROM history "
                                         "WHERE seq=?", (seq,)).fetchone()
                        if row is None:
                            continue
                        try:
                            entry = json.loads(row[0])
                        except (ValueError, RecursionError):
                            entry = None
                        db.execute("UPDATE history SET status=?, created=?, duration=?,"
                                   " workflow_id=? WHERE seq=?",
                                   (history_status(entry), *job_keys(entry), seq))
                        filled += 1
        except sqlite3.Error as exc:
            if at_start and is_damaged(exc):
                raise open_error(self.path, exc) from exc
            log.warning("cannot record the job status of older history entries yet (%s); "
                        "/jobs filtered by status may miss them until it can", exc)
            return filled
        self._statuses_filled = True
        if filled:
            log.info("recorded the job status of %d history entries", filled)
        return filled

    def history_jobs(self, statuses: Collection[str] | None, limit: int, offset: int
                     ) -> tuple[int, list[str]]:
        """(how many history entries have one of ``statuses``, the prompt ids of the
        page ``offset``..``offset + limit`` among them, newest first)."""
        total, rows = self.history_job_rows(statuses, limit, offset)
        return total, [row[0] for row in rows]

    def history_job_rows(self, statuses: Collection[str] | None, limit: int, offset: int, *,
                         sort_by: str = "created_at", descending: bool = True,
                         workflow: str | None = None
                         ) -> tuple[int, list[tuple[str, int, int, int]]]:
        """(how many history entries have one of ``statuses`` and the ``workflow`` id,
        (prompt_id, sort key, created, seq) of the page ``offset``..``offset + limit``
        among them in /jobs' order: ``sort_by`` (:data:`JOB_SORT_COLUMNS`), then
        create_time, then the order they finished in).

        ``statuses`` None: every entry. The filter, the count and the page are SQL on
        an index, so a big history costs neither memory nor a walk through its JSON.
        """
        if not self._statuses_filled:
            self.fill_statuses()
        column = JOB_SORT_COLUMNS[sort_by]  # a fixed name: never the client's text
        direction = "DESC" if descending else "ASC"
        order = ", ".join(f"{c} {direction}" for c in dict.fromkeys((column, "created", "seq")))
        conditions, args = [], []
        if statuses is not None:
            wanted = sorted(set(statuses))
            conditions.append(f"status IN ({','.join('?' * len(wanted))})")
            args += wanted
        if workflow is not None:
            conditions.append("workflow_id = ?")
            args.append(workflow)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._lock:
            (total,) = self._db.execute(f"SELECT COUNT(*) FROM history {where}",
                                        args).fetchone()
            raw = self._db.execute(
                f"SELECT CAST(prompt_id AS BLOB), {column}, created, seq FROM history "
                f"{where} ORDER BY {order} LIMIT ? OFFSET ?",
                (*args, limit, offset)).fetchall() if limit > 0 else []
        rows = []
        for pid, key, created, seq in raw:
            try:
                rows.append((pid.decode(), key or 0, created or 0, seq))
            except UnicodeDecodeError as exc:  # a damaged row: left out of the page
                self._report_damaged(seq, pid, exc)
        return total, rows

    def temp_outputs(self) -> frozenset[str]:
        """The files in temp/ the history's outputs name (``subfolder/filename``): its
        previews, which a restart keeps so the history still shows them."""
        keep: set[str] = set()
        with self._lock:  # read as stored: the checks of history() come after the repairs
            rows = [raw for (raw,) in self._db.execute(
                "SELECT CAST(entry AS BLOB) FROM history")]
        for raw in rows:
            try:
                outputs = json.loads(raw.decode()).get("outputs")
            except (ValueError, AttributeError, RecursionError):
                continue
            for node in outputs.values() if isinstance(outputs, dict) else ():
                for items in node.values() if isinstance(node, dict) else ():
                    for item in items if isinstance(items, list) else ():
                        if isinstance(item, dict) and item.get("type") == "temp" \
                                and isinstance(item.get("filename"), str):
                            sub = str(item.get("subfolder") or "").strip("/")
                            keep.add(f"{sub}/{item['filename']}" if sub else item["filename"])
        return frozenset(keep)

    def history_entry(self, prompt_id: str) -> str | None:
        """The entry's JSON text; None if there is none, or it is damaged (logged)."""
        with self._lock:
            row = self._db.execute("SELECT seq, CAST(entry AS BLOB) FROM history "
                                   "WHERE prompt_id=?", (prompt_id,)).fetchone()
        return self._checked(row[0], prompt_id.encode(), row[1]) if row else None

    def in_history(self, prompt_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM history WHERE prompt_id=?",
                                    (prompt_id,)).fetchone() is not None

    def history_value(self, prompt_id: str) -> dict[str, Any] | None:
        """The entry, decoded; None if there is none, or it is damaged (logged)."""
        with self._lock:
            row = self._db.execute("SELECT seq, CAST(entry AS BLOB) FROM history "
                                   "WHERE prompt_id=?", (prompt_id,)).fetchone()
        if row is None or row[0] in self._damaged:
            return None
        try:
            value = json.loads(row[1].decode(), parse_constant=_reject_constant)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except (ValueError, RecursionError) as exc:
            self._report_damaged(row[0], prompt_id.encode(), exc)
            return None
        self._sound.add(row[0])
        return value

    def delete_history(self, prompt_ids: list[str] | None = None) -> None:
        """Delete the given entries, or all of them."""
        with self._tx() as db:
            if prompt_ids is None:
                db.execute("DELETE FROM history")
                self._sound.clear()
                self._damaged.clear()
            else:
                db.executemany("DELETE FROM history WHERE prompt_id=?",
                               [(p,) for p in prompt_ids])


def _drop_keys(value: Any, keys: frozenset[str], depth: int = 0) -> bool:
    """Remove ``keys`` from every dict in ``value``, in place; whether any was removed.
    Only the first levels are walked: extra_data sits near the top of a stored row."""
    if depth > 6:
        return False
    found = False
    if isinstance(value, dict):
        for key in keys & value.keys():
            del value[key]
            found = True
        children = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return False
    for child in children:
        found = _drop_keys(child, keys, depth + 1) or found
    return found


def _num(value: float) -> int | float:
    # Clamped: older versions stored numbers such as 1e300 (and inf would not be JSON).
    value = max(-float(MAX_NUMBER), min(float(value), float(MAX_NUMBER)))
    return int(value) if value.is_integer() else value


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def _strict_text(text: str) -> str | None:
    """``text`` as strict JSON if it holds NaN/Infinity constants, else None (as is)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
        return None  # the tokens were inside strings
    except _NonFinite:
        return dumps(json.loads(text))  # dumps turns non-finite floats into null
    except (ValueError, RecursionError):
        return None  # not JSON at all: not ours to guess at
