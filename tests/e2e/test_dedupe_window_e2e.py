"""Exactly once within the dedupe window, over real gRPC (docs/decisions.md, "Exactly once within a window"):
re-sent batches, a client that replays its whole buffer, a server killed with SIGKILL during a batch and the
batches re-sent to its successor; an event older than the window is stored again when re-sent, and the acks,
the summary and the client say so (``outside_window``)."""
from __future__ import annotations

import pathlib
import sqlite3
import time
from collections import Counter

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from onramp_client import OnrampClient
from server.ops.app import ServerHandle
from tests.e2e.test_crash_recovery import ServerProcess

HOUR_MS = 3_600_000
WINDOW_MS = 168 * HOUR_MS  # the default [ingest] dedupe_window_hours


def stored_counts(db: str | pathlib.Path) -> Counter[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return Counter(r[0] for r in conn.execute("SELECT event_id FROM events"))


def test_a_client_replaying_its_whole_buffer_stores_nothing_twice(server: ServerHandle) -> None:
    """A producer that kept every event it tracked (with its id and time) sends them all again, as after a
    restart that lost which were acknowledged: all duplicates, nothing stored twice, profiles unchanged."""
    now = int(time.time() * 1000)
    tracked = [dict(event_id=f"buf-{i}", user_id=f"rp-{i % 3}", feature=f"f{i % 4}", timestamp_ms=now - i * 60_000)
               for i in range(1_200)]  # the last 20 hours
    with OnrampClient(server.address, batch_size=250, timeout=30) as client:
        for u in ("rp-0", "rp-1", "rp-2"):
            client.set_consent(u, purpose="tracking", granted=True)
        for kw in tracked:
            client.track("feature_used", block=True, **kw)
        first = client.flush(timeout=60)
        profile = client.get_profile("rp-1")
    with OnrampClient(server.address, batch_size=250, timeout=30) as replaying:
        for kw in tracked:
            replaying.track("feature_used", block=True, **kw)
        again = replaying.flush(timeout=60)
        replayed = replaying.get_profile("rp-1")
    assert (replayed.event_count, dict(replayed.features_used), replayed.sessions) == (
        profile.event_count, dict(profile.features_used), profile.sessions) == (400, {f"f{k}": 100 for k in range(4)}, 0)
    assert (first.accepted, first.duplicates, first.outside_window) == (1_200, 0, 0)
    assert (again.accepted, again.duplicates, again.outside_window) == (0, 1_200, 0)
    counts = stored_counts(server.db_path)
    assert len(counts) == 1_200 and set(counts.values()) == {1}


def test_an_event_older_than_the_window_is_stored_again_and_counted_so(server: ServerHandle,
                                                                       stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, "late")
    now = int(time.time() * 1000)
    inside = [events.make("late", event_id=f"in-{i}", timestamp_ms=now - WINDOW_MS + HOUR_MS * (i + 1))
              for i in range(3)]
    outside = [events.make("late", event_id=f"out-{i}", timestamp_ms=now - WINDOW_MS - HOUR_MS * (i + 1))
               for i in range(2)]
    batch = [*inside, *outside]
    acks = list(stub.IngestEventBatches(iter([pb.EventBatch(sequence=1, events=batch),
                                              pb.EventBatch(sequence=2, events=batch)]), timeout=30))
    assert [(a.accepted, a.duplicates, a.outside_window) for a in acks] == [(5, 0, 2), (2, 3, 2)]
    summary = stub.IngestEvents(iter(batch), timeout=30)
    assert (summary.received, summary.accepted, summary.duplicates, summary.outside_window) == (5, 2, 3, 2)
    counts = stored_counts(server.db_path)
    assert {k: v for k, v in counts.items() if k.startswith(("in-", "out-"))} == {
        "in-0": 1, "in-1": 1, "in-2": 1, "out-0": 3, "out-1": 3}
    assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id="late")).event_count == 3 + 2 * 3
    with OnrampClient(server.address, timeout=30) as client:  # the client adds it up too
        client.track("feature_used", user_id="late", event_id="out-0", timestamp_ms=outside[0].timestamp_ms)
        client.track("feature_used", user_id="late", event_id="in-0", timestamp_ms=inside[0].timestamp_ms)
        result = client.flush(timeout=30)
    assert (result.accepted, result.duplicates, result.outside_window) == (1, 1, 1)


def test_sigkill_during_a_batch_then_the_client_resends_everything(tmp_path: pathlib.Path) -> None:
    """The server dies (SIGKILL) while batches are in flight; its successor on the same database gets every
    batch again, acknowledged or not: each event is stored exactly once, and the re-sent acks count as
    duplicates exactly the events the first server had committed."""
    db, log = tmp_path / "kill.db", tmp_path / "server.log"
    now = int(time.time() * 1000)
    batches = [pb.EventBatch(sequence=n, events=[
        pb.Event(event_id=f"k-{n}-{i}", user_id=f"k-{i % 5}", name="feature_used", feature="x",
                 timestamp_ms=now - (n * 500 + i)) for i in range(500)]) for n in range(40)]
    first = ServerProcess(db, log)
    acked: list[pb.BatchAck] = []
    try:
        with grpc.insecure_channel(first.address) as channel:
            stub = pb_grpc.OnrampStub(channel)
            for u in range(5):
                stub.SetConsent(pb.ConsentRequest(user_id=f"k-{u}", purpose="tracking", granted=True, source="t"))
            try:
                for ack in stub.IngestEventBatches(iter(batches), timeout=60):
                    acked.append(ack)
                    if len(acked) == 3:
                        # at once, while the batches sent after these are in flight (some may be committed
                        # already, their acks not yet read: those count as duplicates when re-sent)
                        first.kill()
            except grpc.RpcError:
                pass
    finally:
        first.kill()
    assert 3 <= len(acked) < len(batches), "the kill should land while batches are in flight"
    committed = sum(stored_counts(db).values())  # acknowledged or not: what the first server committed
    assert committed >= sum(a.accepted for a in acked)
    second = ServerProcess(db, log)
    try:
        with grpc.insecure_channel(second.address) as channel:
            acks = list(pb_grpc.OnrampStub(channel).IngestEventBatches(iter(batches), timeout=120))
        assert second.terminate() == 0
    finally:
        second.kill()
    assert sum(a.duplicates for a in acks) == committed
    assert sum(a.accepted for a in acks) == 20_000 - committed
    counts = stored_counts(db)
    assert len(counts) == 20_000 and set(counts.values()) == {1}
