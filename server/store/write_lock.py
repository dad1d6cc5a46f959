"""The cross-process write lock of a SQLite database: an exclusive ``flock`` on a file beside it.

Every process that writes the database through :class:`~server.store.sqlite.SqliteStore` (each worker's and the
learner's writer thread, the offline commands) takes this lock before ``BEGIN IMMEDIATE`` and releases it after
``COMMIT`` or ``ROLLBACK``. A writer waiting for it sleeps in the kernel and is woken when the holder releases it;
waiting in SQLite's busy handler instead sleeps in fixed steps (up to 100 ms) and retries, so under two
workers' steady writes it woke late and the wait set the p99 (docs/benchmarks.md). SQLite's busy timeout stays
as the backstop for writes that do not take this lock (creating the schema at start, a statement run outside
``begin``). The WAL checkpoint SQLite runs inside a COMMIT now and then happens inside the lock; the
truncating checkpoint after an erasure (``SqliteStore.scrub_wal``) takes it too.

The kernel releases the lock when its holder's file descriptor closes, so also when the holder is killed: the
other writers go on (SQLite's own locks are released the same way). A waiter blocks, with the GIL released,
until it gets the lock: there is no timeout (a holder stopped but not dead, e.g. by SIGSTOP, holds up every
writer until it goes on).
"""
from __future__ import annotations

import fcntl
import os


def lock_path(db_path: str) -> str:
    """Where the write lock of the database at ``db_path`` lives: ``<db_path>.write-lock``."""
    return db_path + ".write-lock"


class WriteLock:
    """An exclusive ``flock`` on ``path`` (created if missing, never removed: removing it while a process holds it
    would let the next writer lock a new file). One instance per writing connection; not re-entrant across
    instances: two instances in one thread, the second acquired while the first is held, wait forever."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)  # empty; flock needs no write access
        self.held = False

    def acquire(self) -> None:
        """Block until this process holds the lock (at once when no one else does)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the lock and close the file (the file stays for the next writer)."""
        if self._fd >= 0:
            self.release()
            os.close(self._fd)
            self._fd = -1
