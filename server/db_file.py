"""The database file stays where the server keeps it.

A database file deleted while the server runs (``rm data/steerflow.db*``, a clean-up
tool) goes on being written through the open connection, into a file no name reaches:
every prompt and history entry from then on is lost at the next start, silently. The
storage's lock is a :class:`FileGuard`: each time it is taken, the file is looked for,
and a missing one is written again from the open connection (SQLite's backup, so what
was written before the deletion is kept as well), then reopened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.storage import Storage

log = logging.getLogger(__name__)

#: after a failed rewrite, how long before the next try (each use would try otherwise)
RETRY_SECONDS = 30.0


class FileGuard:
    """The storage's lock; taking it checks that the database file is still there."""

    def __init__(self, storage: Storage):
        self._lock = threading.Lock()
        self._storage = storage
        self._identity: tuple[int, int] | None = None
        self._next_try = 0.0
        self._replaced_noted = False

    def opened(self) -> None:
        """Remember the file the connection was opened on."""
        st = os.stat(self._storage.path)
        self._identity = (st.st_dev, st.st_ino)

    def __enter__(self) -> FileGuard:
        self._lock.acquire()
        try:
            self._check()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()

    def _check(self) -> None:
        if self._identity is None:
            return  # not opened yet (the constructor's own use)
        path = self._storage.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if time.monotonic() >= self._next_try:
                self._write_again()
            return
        except OSError:
            return  # unreadable for now: the connection's own errors say more
        if (st.st_dev, st.st_ino) != self._identity and not self._replaced_noted:
            self._replaced_noted = True
            log.error("the database %s was replaced while the server ran: this server goes "
                      "on writing the file it opened, which a restart will not read; stop "
                      "the server before changing its data folder", path)

    def _write_again(self) -> None:
        from server.storage import connect

        storage = self._storage
        path = storage.path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.restore")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            copy = sqlite3.connect(tmp)
            try:
                storage._db.backup(copy)
            finally:
                copy.close()
            os.replace(tmp, path)
            old, storage._db = storage._db, connect(path, storage.fsync)
            old.close()
            self.opened()
        except (OSError, sqlite3.Error) as exc:
            self._next_try = time.monotonic() + RETRY_SECONDS
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.error("the database %s was deleted while the server ran and cannot be "
                      "written again (%s): the queue and history from now on are lost at a "
                      "restart unless it can be", path, exc)
            return
        log.error("the database %s was deleted while the server ran; it was written again "
                  "from the open connection, with everything it held", path)
