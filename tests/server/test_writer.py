"""The single writer thread: futures resolve after COMMIT, jobs are grouped, a failing job is isolated,
stop flushes everything queued."""
from __future__ import annotations

import asyncio
import pathlib
import threading

import pytest

from server.records import StoredEvent
from server.store import SqliteStore
from server.writer import Writer, WriterClosed


def ev(eid: str) -> StoredEvent:
    return StoredEvent(eid, "u1", "feature_used", 1, 1, user_id="u1")


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
