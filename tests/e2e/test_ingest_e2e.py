"""Ingestion end to end over real gRPC on a loopback port: every event acknowledged only once committed,
stored exactly once even when the producer re-sends, invalid events reported, listeners called."""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.base.records import StoredEvent
from server.ops.app import ServerHandle


def db_event_ids(handle: ServerHandle) -> list[str]:
    with sqlite3.connect(f"file:{handle.db_path}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY seq")]


def test_ten_thousand_events_in_batches_with_a_resent_batch(server: ServerHandle, stub: pb_grpc.OnrampStub,
                                                             events) -> None:
    users = [f"user-{i}" for i in range(20)]
    for u in users:
        events.grant(stub, u)
    all_events = [events.make(users[i % 20], name="feature_used", feature=f"f{i % 7}", channel="web",
                              properties={"plan": "pro", "i": str(i)}) for i in range(10_000)]
    batches = [pb.EventBatch(sequence=n, events=all_events[n * 500:(n + 1) * 500]) for n in range(20)]
    # The producer re-sends batch 7 (as after a lost ack) and, at the end, batch 0 again.
    sent = [*batches[:8], pb.EventBatch(sequence=100, events=batches[7].events), *batches[8:],
            pb.EventBatch(sequence=101, events=batches[0].events)]
    acks = list(stub.IngestEventBatches(iter(sent), timeout=120))
    assert [a.sequence for a in acks] == [b.sequence for b in sent]  # one ack per batch, in order
    assert sum(a.accepted for a in acks) == 10_000
    assert sum(a.duplicates for a in acks) == 1_000
    assert acks[8].duplicates == 500 and acks[8].accepted == 0
    assert all(not a.rejected and not a.dropped for a in acks)
    ids = db_event_ids(server)
    assert len(ids) == 10_000 and len(set(ids)) == 10_000
    assert set(ids) == {e.event_id for e in all_events}
    # Re-sending everything again later stores nothing new.
    again = list(stub.IngestEventBatches(iter(batches), timeout=120))
    assert sum(a.duplicates for a in again) == 10_000 and sum(a.accepted for a in again) == 0
    assert len(db_event_ids(server)) == 10_000
    profile = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="user-3"))
    assert profile.event_count == 500 and profile.channels["web"] == 500


def test_ten_thousand_events_on_the_client_stream(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, "u1")
    stream = events.many(10_000, "u1", name="session_start", channel="ios")
    summary = stub.IngestEvents(iter(stream), timeout=120)
    assert (summary.received, summary.accepted, summary.duplicates) == (10_000, 10_000, 0)
    assert len(db_event_ids(server)) == 10_000
    resent = stub.IngestEvents(iter(stream[:2_500]), timeout=60)
    assert (resent.received, resent.accepted, resent.duplicates) == (2_500, 0, 2_500)
    assert len(set(db_event_ids(server))) == 10_000
    assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1")).sessions == 10_000


def test_duplicates_inside_one_batch_and_one_stream_are_stored_once(server: ServerHandle,
                                                                    stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, "u1")
    e = events.make("u1", event_id="same-id")
    summary = stub.IngestEvents(iter([e, e, e]))
    assert (summary.accepted, summary.duplicates) == (1, 2)
    [ack] = stub.IngestEventBatches(iter([pb.EventBatch(sequence=1, events=[e, events.make("u1"), e])]))
    assert (ack.accepted, ack.duplicates) == (1, 2)
    assert db_event_ids(server).count("same-id") == 1


def test_invalid_event_ends_the_stream_after_committing_the_valid_ones(server: ServerHandle,
                                                                       stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, "u1")
    good = events.many(3, "u1")
    bad = events.make("u1", name="Feature Used")
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(iter([*good, bad, *events.many(2, "u1")]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "events[3].name: must match ^[a-z][a-z0-9_.:-]{0,63}$ (got 'Feature Used')"
    assert db_event_ids(server) == [e.event_id for e in good]
    # Re-sending the valid ones is safe, and the server keeps serving.
    summary = stub.IngestEvents(iter(good))
    assert (summary.accepted, summary.duplicates) == (0, 3)


def test_batch_acks_list_rejected_events_and_the_stream_goes_on(server: ServerHandle, stub: pb_grpc.OnrampStub,
                                                                events) -> None:
    events.grant(stub, "u1")
    first = [events.make("u1"), events.make("u1", properties={"bad key": "x"}), events.make("u1"),
             pb.Event(event_id="", user_id="u1", name="x")]
    second = events.many(4, "u1")
    acks = list(stub.IngestEventBatches(iter([pb.EventBatch(sequence=1, events=first),
                                              pb.EventBatch(sequence=2, events=second)])))
    assert [(a.sequence, a.accepted) for a in acks] == [(1, 2), (2, 4)]
    rejected = acks[0].rejected
    assert [(r.index, r.field) for r in rejected] == [(1, "properties[bad key]"), (3, "event_id")]
    assert rejected[0].event_id == first[1].event_id and "key must match" in rejected[0].message
    assert len(db_event_ids(server)) == 6


def test_oversized_batch_is_invalid_argument_after_earlier_acks(server: ServerHandle, stub: pb_grpc.OnrampStub,
                                                                events) -> None:
    events.grant(stub, "u1")
    ok = pb.EventBatch(sequence=1, events=events.many(10, "u1"))
    huge = pb.EventBatch(sequence=2, events=[pb.Event(event_id=f"h{i}", user_id="u1", name="x")
                                             for i in range(10_001)])
    call = stub.IngestEventBatches(iter([ok, huge]))
    first = next(call)
    assert first.sequence == 1 and first.accepted == 10
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("batches[1].events: must hold at most 10000 events per batch (got 10001)")
    assert len(db_event_ids(server)) == 10


def test_listeners_get_newly_stored_events_after_commit(server: ServerHandle, stub: pb_grpc.OnrampStub,
                                                        events) -> None:
    got: list[StoredEvent] = []
    committed_when_called: list[bool] = []
    lock = threading.Lock()

    def listener(stored: list[StoredEvent]) -> None:
        with lock:
            ids = set(db_event_ids(server))
            committed_when_called.append(all(e.event_id in ids for e in stored))
            got.extend(stored)

    server.runtime.pipeline.add_listener(listener)
    events.grant(stub, "u1")
    batch = events.many(5, "u1", name="step_completed", step_id="welcome")
    stub.IngestEvents(iter([*batch, batch[0]]))
    stub.IngestEvents(iter(events.many(2, "nobody")))  # dropped: no consent, never reaches listeners
    assert [e.event_id for e in got] == [e.event_id for e in batch]
    assert all(committed_when_called)
    assert got[0].subject == "u1" and got[0].step_id == "welcome"


def test_concurrent_streams(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    for u in ("a", "b", "c", "d"):
        events.grant(stub, u)
    results: dict[str, int] = {}

    def produce(u: str) -> None:
        batches = (pb.EventBatch(sequence=i, events=events.many(250, u)) for i in range(4))
        results[u] = sum(a.accepted for a in stub.IngestEventBatches(batches))

    threads = [threading.Thread(target=produce, args=(u,)) for u in ("a", "b", "c", "d")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {"a": 1000, "b": 1000, "c": 1000, "d": 1000}
    assert len(db_event_ids(server)) == 4000


def test_slow_stream_is_committed_by_the_timer(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    """Fewer events than a buffer's worth are committed without waiting for more (commit_interval_ms)."""
    events.grant(stub, "u1")
    sent = threading.Event()
    release = threading.Event()
    first = events.make("u1")

    def slow() -> Iterator[pb.Event]:
        yield first
        sent.set()
        release.wait(30)

    fut = stub.IngestEvents.future(slow())
    assert sent.wait(10)
    for _ in range(200):
        if first.event_id in db_event_ids(server):
            break
        threading.Event().wait(0.05)
    assert first.event_id in db_event_ids(server)  # committed while the stream is still open
    release.set()
    assert fut.result(30).accepted == 1
