"""WAL checkpoints off the commit path: :class:`Checkpointer`, a thread with its own connection that copies the
write-ahead log into the database file while the writers go on.

By default SQLite checkpoints inside a COMMIT once the WAL holds 1000 frames: that commit copies the pages into
the database file and syncs it, inside the cross-process write lock, so the decisions of that commit and every
writer waiting for the lock wait too (a few milliseconds, and far more when the disk is busy). The serving
connections therefore checkpoint only past :data:`FALLBACK_AUTOCHECKPOINT_FRAMES` (a bound for when no
checkpointer runs, e.g. while the supervisor restarts the learner process), and one checkpointer per database
(in the process that runs the learner) keeps the WAL short:

1. every ``interval_s`` it reads the WAL's length and how much of it is in the database file already (the
   wal-index header in ``<db>-shm``: a read of 100 bytes, no lock); from ``frames`` frames on, with some not
   yet copied,
2. PASSIVE checkpoints without the write lock copy them while writers commit (a passive checkpoint never waits
   for writers or readers), again while commits landed during the previous one (up to
   :data:`UNLOCKED_PASSES` times, each shorter),
3. and when commits still landed, one more inside the write lock copies those few frames.
   With every frame copied and no commit in between, the next write transaction starts the WAL over from its
   beginning, so the file stays at its size instead of growing under steady writes (SQLite restarts a WAL only
   when every frame is in the database file as a write transaction begins, and no reader still needs one: a
   reader in the middle of a read keeps the frames it reads, and the next round tries again).

An erasure's truncating checkpoint (:meth:`server.store.sqlite.SqliteStore.scrub_wal`) is unchanged; it retries
while this one holds SQLite's checkpoint lock.
"""
from __future__ import annotations

import logging
import sqlite3
import struct
import threading
from dataclasses import dataclass

from server.store.write_lock import WriteLock, lock_path

log = logging.getLogger(__name__)

CHECKPOINT_FRAMES = 1000  # WAL frames from which a checkpoint runs (SQLite's own default threshold)
UNLOCKED_PASSES = 3  # passive checkpoints while writers commit, before one inside the write lock
CHECKPOINT_INTERVAL_S = 0.05  # how often the checkpointer looks at the WAL
# The serving connections' PRAGMA wal_autocheckpoint: SQLite checkpoints inside a commit only past this many
# frames (about 32 MiB of 4 KiB pages), which a running checkpointer never lets the WAL reach.
FALLBACK_AUTOCHECKPOINT_FRAMES = 8000

# The wal-index header (https://www.sqlite.org/walformat.html, "The WAL-Index Header"), in native byte order:
# mxFrame (the last valid frame) at byte 16 of the first header copy, nBackfill (frames copied into the
# database file) at byte 96, the first field of the checkpoint info after the two 48-byte header copies.
_U32 = struct.Struct("=I")
_MX_FRAME_AT = 16
_BACKFILL_AT = 96


def wal_frames(db_path: str) -> tuple[int, int]:
    """The WAL of ``db_path`` as (frames in it, frames of them already copied into the database file), read from
    the wal-index header in ``<db>-shm`` without taking any lock (an estimate: the header may be changing);
    (0, 0) without a WAL index."""
    try:
        with open(db_path + "-shm", "rb") as f:
            head = f.read(_BACKFILL_AT + 4)
    except FileNotFoundError:
        return 0, 0
    if len(head) < _BACKFILL_AT + 4:
        return 0, 0
    return _U32.unpack_from(head, _MX_FRAME_AT)[0], _U32.unpack_from(head, _BACKFILL_AT)[0]


def wal_backlog(db_path: str) -> int:
    """WAL frames of ``db_path`` not yet copied into the database file (:func:`wal_frames`)."""
    frames, copied = wal_frames(db_path)
    return max(0, frames - copied)


@dataclass(slots=True)
class CheckpointStats:
    """What a :class:`Checkpointer` did (for tests and the bench)."""

    runs: int = 0  # rounds that checkpointed (step 2)
    locked: int = 0  # of which ended with the pass inside the write lock (step 3)
    frames: int = 0  # frames waiting when they started
    failures: int = 0


class Checkpointer:
    """Checkpoints the WAL of the database at ``path`` from a thread of its own (see the module docstring)."""

    def __init__(self, path: str, *, frames: int = CHECKPOINT_FRAMES,
                 interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.path = path
        self.frames = frames
        self.interval_s = interval_s
        self.stats = CheckpointStats()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = WriteLock(lock_path(path))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="onramp-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (after the checkpoint it may be running) and close the connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._conn.close()
        self._lock.close()

    def run_once(self) -> bool:
        """One look at the WAL, and a checkpoint when it holds at least ``frames`` frames and some are not yet
        copied; returns whether it ran."""
        frames, copied = wal_frames(self.path)
        if frames < self.frames or copied >= frames:
            return False
        self.stats.runs += 1
        self.stats.frames += frames - copied
        for _ in range(UNLOCKED_PASSES):
            self._passive()
            if wal_backlog(self.path) == 0:  # no commit landed meanwhile: the next write transaction restarts the WAL
                return True
        self._lock.acquire()  # commits kept landing: copy the last ones with the writers held
        try:
            self._passive()
        finally:
            self._lock.release()
        self.stats.locked += 1
        return True

    def _passive(self) -> None:
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except (sqlite3.Error, OSError):  # e.g. the file went away; the writers' fallback still bounds the WAL
                self.stats.failures += 1
                if self.stats.failures in (1, 10, 100) or self.stats.failures % 1000 == 0:
                    log.exception("WAL checkpoint failed (%d so far); retrying", self.stats.failures)
