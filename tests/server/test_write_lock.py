"""The cross-process write lock (server/store/write_lock.py) with real processes on one database file: a writer
waits for another process's transaction in the lock, not in SQLite's busy handler (the waiter's busy timeout is
0, so a wait in SQLite would fail at once), gets it when the holder commits or is killed with SIGKILL, and two
processes writing at once never collide."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from server.store.sqlite import SqliteStore
from server.store.write_lock import lock_path

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Holds a write transaction with one uncommitted meta row until a line arrives on stdin, then commits.
HOLDER = textwrap.dedent("""
    import sys
    from server.store.sqlite import SqliteStore
    store = SqliteStore(sys.argv[1])
    store.begin()
    store.meta_set("holder", "uncommitted until told")
    print("held", flush=True)
    sys.stdin.readline()
    store.commit()
    print("committed", flush=True)
    store.close()
""")

# Writes N transactions of one meta row each with SQLite's busy timeout at 0: only the write lock keeps it from
# colliding with another writer.
WRITER = textwrap.dedent("""
    import sys
    from server.store.sqlite import SqliteStore
    store = SqliteStore(sys.argv[1])
    store.conn.execute("PRAGMA busy_timeout=0")
    name, n = sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        store.begin()
        store.meta_set(f"{name}-{i}", str(i))
        store.commit()
    store.close()
""")


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def db(tmp_path: pathlib.Path) -> str:
    path = str(tmp_path / "lock.db")
    SqliteStore(path).close()  # schema and WAL mode in place before the processes start
    return path


@pytest.fixture
def holder(db: str):
    proc = _python(HOLDER, db)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held", proc.stderr
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


class Waiter:
    """This process's store, ``begin()`` called on a thread (busy timeout 0): ``got`` is set once it returned."""

    def __init__(self, db: str) -> None:
        self.store = SqliteStore(db)
        self.store.conn.execute("PRAGMA busy_timeout=0")
        self.got = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._begin, daemon=True)
        self.thread.start()

    def _begin(self) -> None:
        try:
            self.store.begin()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        self.got.set()


def test_a_writer_waits_in_the_lock_until_the_other_process_commits(db: str, holder: subprocess.Popen[str]) -> None:
    waiter = Waiter(db)
    try:
        assert not waiter.got.wait(0.5), f"begin() returned while another process held the lock: {waiter.error!r}"
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        assert waiter.got.wait(30) and waiter.error is None, waiter.error
        assert holder.stdout.readline().strip() == "committed"
        assert waiter.store.meta_get("holder") == "uncommitted until told"  # the holder's commit is seen
        waiter.store.meta_set("waiter", "after the holder")
        waiter.store.commit()
    finally:
        waiter.store.close()
    assert holder.wait(10) == 0


def test_killing_the_holder_lets_the_waiting_writer_go_on(db: str, holder: subprocess.Popen[str]) -> None:
    waiter = Waiter(db)
    try:
        assert not waiter.got.wait(0.5), f"begin() returned while another process held the lock: {waiter.error!r}"
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(10) == -signal.SIGKILL
        assert waiter.got.wait(30) and waiter.error is None, waiter.error
        assert waiter.store.meta_get("holder") is None  # the killed holder's transaction was never committed
        waiter.store.meta_set("waiter", "after the kill")
        waiter.store.commit()
    finally:
        waiter.store.close()
    reader = SqliteStore(db, readonly=True)
    try:
        assert reader.meta_get("waiter") == "after the kill"
    finally:
        reader.close()


def test_two_processes_writing_at_once_never_collide(db: str) -> None:
    n = 300
    procs = [_python(WRITER, db, name, str(n)) for name in ("a", "b")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr
        for p in procs:  # both start together
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err  # a collision would raise "database is locked" (busy timeout 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    reader = SqliteStore(db, readonly=True)
    try:
        assert all(reader.meta_get(f"{name}-{i}") == str(i) for name in ("a", "b") for i in range(n))
    finally:
        reader.close()


def test_rollback_releases_the_lock_and_a_reader_takes_none(db: str) -> None:
    first = SqliteStore(db)
    try:
        first.begin()
        waiter = Waiter(db)  # another connection of this process: flock is per open file, so it waits too
        try:
            assert not waiter.got.wait(0.3), f"begin() returned while the lock was held: {waiter.error!r}"
            first.rollback()
            assert waiter.got.wait(30) and waiter.error is None, waiter.error
            waiter.store.rollback()
        finally:
            waiter.store.close()
        reader = SqliteStore(db, readonly=True)
        assert reader.write_lock is None
        reader.close()
    finally:
        first.close()
    assert os.path.exists(lock_path(db))
