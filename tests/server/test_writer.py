"""The single writer thread: futures resolve after COMMIT, jobs are grouped, a failing job is isolated,
stop flushes everything queued, an erasure's job truncates the WAL (retried while readers hold it)."""
from __future__ import annotations

import asyncio
import logging
import pathlib
import sqlite3
import threading
import time

import pytest

from server.base.clock import now_ms
from server.base.records import StoredEvent
from server.store.sqlite import SqliteStore
from server.store.writer import Writer, WriterClosed


def ev(eid: str) -> StoredEvent:
    return StoredEvent(eid, "u1", "feature_used", NOW, NOW, user_id="u1")


NOW = now_ms()  # inside the dedupe window: a repeated id in the newest dedupe level raises


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "w.db")
    yield s
    s.close()


def committed_ids(path: str) -> set[str]:
    reader = SqliteStore(path, readonly=True)
    try:
        return {e.event_id for _, e in reader.iter_events()}
    finally:
        reader.close()


def test_result_arrives_after_commit_and_is_visible_to_other_connections(store: SqliteStore) -> None:
    writer = Writer(store)
    writer.start()
    seen_at_resolution: list[set[str]] = []
    fut = writer.submit(lambda s: s.append_events([ev("a"), ev("b")]) or 2,
                        after_commit=lambda _r: seen_at_resolution.append(committed_ids(store.path)))
    assert fut.result(10) == 2
    assert seen_at_resolution == [{"a", "b"}]  # after_commit runs after COMMIT, before the future resolves
    writer.stop()


def test_jobs_waiting_together_share_one_transaction(store: SqliteStore) -> None:
    writer = Writer(store)
    gate = threading.Event()
    writer.start()
    blocker = writer.submit(lambda s: gate.wait(10))
    futures = [writer.submit(lambda s, i=i: s.append_events([ev(f"e{i}")])) for i in range(50)]
    commits_before = writer.commits
    gate.set()
    for f in futures:
        f.result(10)
    blocker.result(10)
    assert writer.commits - commits_before <= 2  # the blocker's group, then all 50 queued jobs in one
    assert len(committed_ids(store.path)) == 50
    writer.stop()


def test_a_failing_job_fails_alone(store: SqliteStore) -> None:
    rollbacks: list[int] = []
    writer = Writer(store, on_rollback=lambda: rollbacks.append(1))
    gate = threading.Event()
    writer.start()
    writer.submit(lambda s: gate.wait(10))
    good1 = writer.submit(lambda s: s.append_events([ev("g1")]))
    bad = writer.submit(lambda s: s.append_events([ev("g1")]))  # duplicate event_id -> IntegrityError
    good2 = writer.submit(lambda s: s.append_events([ev("g2")]))
    gate.set()
    good1.result(10)
    good2.result(10)
    with pytest.raises(Exception) as err:
        bad.result(10)
    assert "UNIQUE" in str(err.value)
    assert committed_ids(store.path) == {"g1", "g2"}
    assert rollbacks  # caches are told to reload
    writer.stop()


def test_stop_flushes_queued_jobs_and_refuses_new_ones(store: SqliteStore) -> None:
    writer = Writer(store)
    futures = [writer.submit(lambda s, i=i: s.append_events([ev(f"s{i}")])) for i in range(20)]
    writer.start()
    writer.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(committed_ids(store.path)) == 20
    with pytest.raises(WriterClosed):
        writer.submit(lambda s: None)


def test_call_from_a_coroutine(store: SqliteStore) -> None:
    writer = Writer(store)
    writer.start()

    async def main() -> int:
        return await writer.call(lambda s: s.append_events([ev("x")]) or 7)
    assert asyncio.run(main()) == 7
    assert writer.run_sync(lambda s: s.existing_event_ids(["x"])) == {"x"}
    writer.stop()


def test_combined_jobs_next_to_each_other_run_as_one_call_with_their_own_results(store: SqliteStore) -> None:
    writer = Writer(store)
    gate = threading.Event()
    calls: list[list[str]] = []

    def many(s: SqliteStore, args: list[str]) -> list[str]:
        calls.append(list(args))
        s.append_events([ev(a) for a in args])
        return [a.upper() for a in args]
    writer.start()
    writer.submit(lambda s: gate.wait(10))
    first = [writer.submit_combined(many, f"c{i}") for i in range(3)]
    plain = writer.submit(lambda s: s.append_events([ev("p")]) or "plain")
    last = [writer.submit_combined(many, f"d{i}") for i in range(2)]
    gate.set()
    assert [f.result(10) for f in first] == ["C0", "C1", "C2"]
    assert plain.result(10) == "plain"
    assert [f.result(10) for f in last] == ["D0", "D1"]
    assert calls == [["c0", "c1", "c2"], ["d0", "d1"]]  # a plain job in between splits the run, order kept
    assert committed_ids(store.path) == {"c0", "c1", "c2", "p", "d0", "d1"}
    writer.stop()


def test_a_combined_runs_ahead_function_runs_once_before_its_transaction_and_may_fail(
        store: SqliteStore, caplog: pytest.LogCaptureFixture) -> None:
    """``ahead`` sees each run of combined jobs once, with the write lock free (outside the transaction), before
    ``many`` sees the same args; a run whose ``ahead`` raises still runs (the failure is logged, with its
    traceback the first time only)."""
    writer = Writer(store)
    gate, started = threading.Event(), threading.Event()
    seen: list[tuple[str, list[str], bool]] = []

    def ahead(s: SqliteStore, args: list[str]) -> None:
        seen.append(("ahead", list(args), s.conn.in_transaction or s.write_lock.held))
        if "boom" in args:
            raise RuntimeError("look-ahead failed")

    def many(s: SqliteStore, args: list[str]) -> list[str]:
        seen.append(("many", list(args), s.conn.in_transaction and s.write_lock.held))
        return args
    writer.start()
    writer.submit(lambda s: started.set() or gate.wait(10))
    assert started.wait(10)  # the gate's transaction has begun: the jobs below make the next group
    first = [writer.submit_combined(many, a, ahead=ahead) for a in ("a", "b")]
    writer.submit(lambda s: None)
    second = [writer.submit_combined(many, a, ahead=ahead) for a in ("boom", "c")]
    with caplog.at_level(logging.ERROR, logger="server.store.writer"):
        gate.set()
        assert [f.result(10) for f in first + second] == ["a", "b", "boom", "c"]
        assert writer.submit_combined(many, "boom", ahead=ahead).result(10) == "boom"
    # one group, one transaction: both runs look ahead before it begins
    assert seen == [("ahead", ["a", "b"], False), ("ahead", ["boom", "c"], False),
                    ("many", ["a", "b"], True), ("many", ["boom", "c"], True),
                    ("ahead", ["boom"], False), ("many", ["boom"], True)]
    assert caplog.text.count("look-ahead failed (failure 1;") == 1
    assert "(failure 2;" not in caplog.text  # failing again within the minute: counted, not logged
    writer.stop()


def test_jobs_queued_while_another_process_holds_the_write_lock_join_the_waiting_group(tmp_path: pathlib.Path) -> None:
    """The writer took one job, looked ahead for it and waits for the write lock another store (another worker)
    holds; the jobs queued meanwhile run in the same transaction once it has the lock, without looking ahead."""
    path = tmp_path / "two.db"
    store, other = SqliteStore(path), SqliteStore(path)
    writer = Writer(store)
    looked = threading.Event()
    calls: list[tuple[str, list[str]]] = []

    def ahead(s: SqliteStore, args: list[str]) -> None:
        calls.append(("ahead", list(args)))
        looked.set()

    def many(s: SqliteStore, args: list[str]) -> list[str]:
        calls.append(("many", list(args)))
        return args
    writer.start()
    other.begin()
    try:
        first = writer.submit_combined(many, "a", ahead=ahead)
        assert looked.wait(10)
        later = [writer.submit_combined(many, x, ahead=ahead) for x in ("b", "c")]
        plain = writer.submit(lambda s: "p")
        assert not first.done() and writer.commits == 0
    finally:
        other.commit()
    assert [f.result(10) for f in [first, *later, plain]] == ["a", "b", "c", "p"]
    assert calls == [("ahead", ["a"]), ("many", ["a", "b", "c"])]
    assert writer.commits == 1
    writer.stop()
    store.close()
    other.close()


def test_a_topped_up_group_that_fails_reruns_job_by_job_and_a_stop_taken_with_it_ends_the_thread(
        tmp_path: pathlib.Path) -> None:
    """While the writer waits for the write lock, a faulty job, a good one and the stop mark are queued: they join
    the waiting group, which fails and is re-run job by job (only the faulty job fails), and the thread ends after
    it, every future resolved."""
    path = tmp_path / "stop.db"
    store, other = SqliteStore(path), SqliteStore(path)
    writer = Writer(store)
    looked = threading.Event()
    calls: list[list[str]] = []

    def many(s: SqliteStore, args: list[str]) -> list[str]:
        calls.append(list(args))
        if "bad" in args:
            raise ValueError("a faulty job")
        return args
    writer.start()
    other.begin()
    try:
        first = writer.submit_combined(many, "a", ahead=lambda s, args: looked.set())
        assert looked.wait(10)
        bad, good = (writer.submit_combined(many, x) for x in ("bad", "c"))
        stopper = threading.Thread(target=writer.stop)
        stopper.start()
        deadline = time.monotonic() + 10
        while writer.qsize() < 3 and time.monotonic() < deadline:  # "bad", "c" and the stop mark
            time.sleep(0.01)
    finally:
        other.commit()
    stopper.join(10)
    assert first.result(10) == "a" and good.result(10) == "c"
    with pytest.raises(ValueError, match="faulty"):
        bad.result(10)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert not writer.running and writer.commits == 2
def test_each_transaction_reports_its_wait_for_the_write_lock_and_how_long_it_held_it(tmp_path: pathlib.Path) -> None:
    """``on_transaction(waited, held)``: the wait behind another store's transaction (another worker), then the
    time from begin to commit, for committed and rolled-back transactions alike."""
    path = tmp_path / "timed.db"
    store, other = SqliteStore(path), SqliteStore(path)
    timed: list[tuple[float, float]] = []
    writer = Writer(store, on_transaction=lambda waited, held: timed.append((waited, held)))
    writer.start()
    other.begin()
    slow = writer.submit(lambda s: time.sleep(0.05) or "slow")
    time.sleep(0.2)
    other.commit()
    assert slow.result(10) == "slow"
    failed = writer.submit(lambda s: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(10)
    writer.stop()
    (waited, held), (waited_again, held_again) = timed
    assert waited >= 0.15 and held >= 0.05  # behind the other transaction; then the job's own time
    assert waited_again < 0.15 and 0 <= held_again < 0.05
    store.close()
    other.close()


def test_a_failing_combined_call_is_rerun_job_by_job_so_only_the_faulty_job_fails(store: SqliteStore) -> None:
    writer = Writer(store)
    gate = threading.Event()

    def many(s: SqliteStore, args: list[str]) -> list[int]:
        s.append_events([ev(a) for a in args])  # "g1" twice in one call -> IntegrityError for the whole call
        return [1] * len(args)
    writer.start()
    writer.submit(lambda s: gate.wait(10))
    good1 = writer.submit_combined(many, "g1")
    bad = writer.submit_combined(many, "g1")
    good2 = writer.submit_combined(many, "g2")
    gate.set()
    assert good1.result(10) == 1 and good2.result(10) == 1
    with pytest.raises(Exception, match="UNIQUE"):
        bad.result(10)
    assert committed_ids(store.path) == {"g1", "g2"}
    writer.stop()


def _wal_bytes(store: SqliteStore) -> bytes:
    wal = pathlib.Path(f"{store.path}-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_a_scrub_wal_job_truncates_the_wal_and_a_reader_only_defers_it(store: SqliteStore,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    store.scrub_wait_ms = 0  # do not wait for the reader below
    writer = Writer(store)
    writer.start()
    writer.run_sync(lambda s: s.meta_set("who", "raw-id-3141"))
    writer.submit(lambda s: s.meta_delete("who"), scrub_wal=True).result(30)
    assert not store.scrub_pending and _wal_bytes(store) == b""  # truncated before the future resolved
    assert b"raw-id-3141" not in pathlib.Path(store.path).read_bytes()  # secure_delete zeroed the row

    writer.run_sync(lambda s: s.meta_set("who", "raw-id-2718"))
    reader = sqlite3.connect(store.path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM meta").fetchone()  # a snapshot that reads the WAL
    with caplog.at_level(logging.WARNING, logger="server.store.writer"):
        writer.submit(lambda s: s.meta_delete("who"), scrub_wal=True).result(30)
    assert store.scrub_pending and "readers still hold older WAL frames" in caplog.text
    assert b"raw-id-2718" in _wal_bytes(store)  # the reader was not disturbed, the WAL not truncated
    assert reader.execute("SELECT value FROM meta WHERE key = 'who'").fetchone() == ("raw-id-2718",)
    reader.rollback()
    reader.close()
    writer.run_sync(lambda s: s.meta_set("other", "x"))  # the next commit retries
    assert not store.scrub_pending and _wal_bytes(store) == b""
    assert b"raw-id-2718" not in pathlib.Path(store.path).read_bytes()
    writer.stop()
