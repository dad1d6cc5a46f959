"""WAL checkpoints off the commit path (server/store/checkpointer.py), on real SQLite files: the checkpointer
keeps the WAL short while a writer commits, the writer's own checkpoints are left for when no checkpointer runs,
and an erasure's truncating checkpoint still empties the WAL when another connection is checkpointing."""
from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
import time

from server.store.checkpointer import Checkpointer, wal_backlog, wal_frames
from server.store.sqlite import SqliteStore
from server.store.writer import Writer

PAGE = 4096
ROW = "x" * 3000  # about one page per row


def wal_size(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0


def commit_rows(writer: Writer, n: int, on_commit: callable = lambda: None) -> None:
    """``n`` transactions of three pages of new rows each, one at a time."""
    for i in range(n):
        writer.run_sync(lambda s, i=i: s.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                                          [(f"k{i}-{j}", ROW) for j in range(3)]))
        on_commit()


def test_wal_backlog_counts_the_frames_not_yet_in_the_database_file(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "b.db", autocheckpoint=0)  # no checkpoint in the commits
    writer = Writer(store)
    writer.start()
    try:
        before = wal_backlog(store.path)
        commit_rows(writer, 20)
        grown = wal_backlog(store.path)
        assert grown >= before + 60  # at least three new pages per transaction
        store.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert wal_backlog(store.path) == 0
    finally:
        writer.stop()
        store.close()
    assert wal_backlog(str(tmp_path / "missing.db")) == 0


def test_the_checkpointer_keeps_the_wal_short_and_the_commits_never_checkpoint(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.db"
    fallback = 1000  # frames in the WAL from which the writer's commits would checkpoint themselves
    store = SqliteStore(path, autocheckpoint=fallback)
    writer = Writer(store)
    writer.start()
    cp = Checkpointer(str(path), frames=60, interval_s=0.002)
    cp.start()
    most_frames = 0
    largest_wal = 0

    def watch() -> None:
        nonlocal most_frames, largest_wal
        most_frames = max(most_frames, wal_frames(str(path))[0])
        largest_wal = max(largest_wal, wal_size(str(path)))

    try:
        commit_rows(writer, 1500, watch)  # about 4500 frames: a WAL of 17 MiB without any checkpoint
    finally:
        cp.stop()
        writer.stop()
        store.close()
    assert cp.stats.runs >= 10 and cp.stats.frames >= 3000
    # SQLite checkpoints in a commit once the WAL holds `fallback` frames: it never did, the thread did it all
    assert most_frames < fallback
    assert largest_wal < fallback * (PAGE + 24)  # the WAL restarted from its beginning, again and again
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] >= 4500


def test_without_a_checkpointer_the_commits_bound_the_wal_at_the_fallback(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f.db"
    store = SqliteStore(path, autocheckpoint=150)
    writer = Writer(store)
    writer.start()
    most_frames = 0

    def watch() -> None:
        nonlocal most_frames
        most_frames = max(most_frames, wal_frames(str(path))[0])

    try:
        commit_rows(writer, 400, watch)  # 1200 frames
        assert 100 * PAGE < wal_size(str(path)) < 2 * 150 * (PAGE + 24)
    finally:
        writer.stop()
        store.close()
    assert 150 <= most_frames < 2 * 150


def test_a_scrub_waits_for_another_connections_checkpoint(tmp_path: pathlib.Path) -> None:
    """SQLite answers a checkpoint that finds another one running with "busy" at once, without its busy handler:
    the erasure's truncating checkpoint retries instead of leaving the WAL for later."""
    path = tmp_path / "s.db"
    store = SqliteStore(path, autocheckpoint=0)
    writer = Writer(store)
    writer.start()
    other_writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    checkpointing = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        writer.run_sync(lambda s: s.meta_set("who", "raw-id-1618"))
        writer.run_sync(lambda s: s.meta_delete("who"))  # the erasure, committed; its scrub follows below
        other_writer.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock (not the flock: the scrub can start)
        checkpointing.execute("PRAGMA busy_timeout=5000")
        # a FULL checkpoint takes the checkpoint lock, then waits in its busy handler for the write lock
        full = threading.Thread(target=lambda: checkpointing.execute("PRAGMA wal_checkpoint(FULL)").fetchone())
        full.start()
        time.sleep(0.2)
        threading.Timer(0.3, other_writer.rollback).start()  # then the FULL checkpoint finishes, then the scrub
        t = time.monotonic()
        assert store.scrub_wal(wait_ms=5000)
        assert time.monotonic() - t > 0.2  # it did wait for the other checkpoint
        full.join(10)
        assert not store.scrub_pending and wal_size(str(path)) == 0
        assert b"raw-id-1618" not in pathlib.Path(path).read_bytes()
    finally:
        writer.stop()
        other_writer.close()
        checkpointing.close()
        store.close()
