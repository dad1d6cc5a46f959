"""Event ingestion of OnrampClient against a fake server: batching, totals, re-sending after failures,
non-retryable errors, the bounded buffer and shutdown."""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from fake_onramp import FakeServer, StreamScript
from onramp_client import ClientClosed, FlushTimeout, OnrampClient, OnrampError, QueueFull

MakeClient = Callable[..., OnrampClient]


def wait_until(predicate: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Polls ``predicate`` until it holds; fails the test after ``limit`` seconds (a hang guard, not a speed check)."""
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def track_many(client: OnrampClient, n: int, user_id: str = "u1", prefix: str = "e") -> list[str]:
    return [client.track("feature_used", user_id=user_id, feature="reports", event_id=f"{prefix}{i}")
            for i in range(n)]


@pytest.mark.parametrize("n,batch_size", [(1234, 100), (500, 500), (7, 3), (1, 10)])
def test_events_go_in_ceil_n_over_batch_size_batches(fake: FakeServer, make_client: MakeClient, n: int,
                                                     batch_size: int) -> None:
    client = make_client(batch_size=batch_size, flush_interval=30.0)
    ids = track_many(client, n)
    result = client.flush(timeout=30)
    assert result.accepted == n and result.duplicates == 0 and not result.dropped and not result.rejected
    batches = fake.servicer.batches
    assert len(batches) == math.ceil(n / batch_size)
    assert all(len(b.event_ids) <= batch_size for b in batches)
    assert [e for b in batches for e in b.event_ids] == ids  # order kept
    assert [b.sequence for b in batches] == sorted({b.sequence for b in batches})
    assert set(fake.servicer.stored) == set(ids)


def test_flush_interval_sends_a_partial_batch_without_flush(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client(batch_size=100, flush_interval=0.05)
    ids = track_many(client, 5)
    wait_until(lambda: len(fake.servicer.stored) == 5, "the partial batch")
    assert [b.event_ids for b in fake.servicer.batches] == [ids]
    wait_until(lambda: client.pending == 0, "the ack")
    assert client.flush(timeout=10).accepted == 5


def test_flush_returns_totals_since_previous_flush(fake: FakeServer, make_client: MakeClient,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    fake.servicer.drop_users = {"gone": "erased", "nope": "no_consent"}
    client = make_client(batch_size=4)
    track_many(client, 6)
    client.track("feature_used", user_id="gone")
    client.track("feature_used", user_id="gone")
    client.track("feature_used", user_id="nope")
    bad_id = client.track("bad", user_id="u1")
    with caplog.at_level(logging.WARNING, logger="onramp_client"):
        first = client.flush(timeout=10)
    assert (first.accepted, first.duplicates) == (6, 0)
    assert first.dropped == {"erased": 2, "no_consent": 1}
    assert [(r.event_id, r.field) for r in first.rejected] == [(bad_id, "name")]
    assert "not allowed" in first.rejected[0].message
    assert first.acknowledged == 10
    assert any(bad_id in rec.getMessage() and "not allowed" in rec.getMessage() for rec in caplog.records)

    track_many(client, 3)  # the same event ids again: duplicates
    second = client.flush(timeout=10)
    assert (second.accepted, second.duplicates, second.dropped, second.rejected) == (0, 3, {}, ())
    assert client.flush(timeout=10).acknowledged == 0
    total = client.totals()
    assert (total.accepted, total.duplicates, total.dropped, len(total.rejected)) == (6, 3, {"erased": 2, "no_consent": 1}, 1)


def assert_stored_exactly_once(fake: FakeServer, ids: list[str]) -> None:
    assert set(fake.servicer.stored) == set(ids)
    assert set(fake.servicer.store_counts.values()) == {1}


def test_stream_failures_resend_unacknowledged_batches(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.scripts = [
        StreamScript(fail_after=2, store_unacked=True),  # the 3rd batch is stored, its ack lost
        StreamScript(fail_after=1, code=grpc.StatusCode.INTERNAL),
        StreamScript(fail_after=0, code=grpc.StatusCode.RESOURCE_EXHAUSTED),
        StreamScript(fail_after=3, code=grpc.StatusCode.ABORTED, store_unacked=True),
    ]
    client = make_client(batch_size=100, flush_interval=30.0)
    ids = track_many(client, 1000)
    result = client.flush(timeout=60)
    assert_stored_exactly_once(fake, ids)
    assert fake.servicer.streams == 5
    # Each event is counted once, by the ack that finally arrived: the two batches stored before their
    # ack was lost come back as duplicates when re-sent.
    assert (result.accepted, result.duplicates) == (800, 200)
    assert client.pending == 0
    # The re-sent batches carry their original sequence numbers, in order, first on the new stream.
    second_stream = [b.sequence for b in fake.servicer.batches if b.stream == 1]
    assert second_stream[0] == 3 and second_stream == sorted(second_stream)


def test_cancelled_by_server_and_early_ok_end_are_retried(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.scripts = [StreamScript(fail_after=1, code=grpc.StatusCode.CANCELLED),
                             StreamScript(end_ok_after=1)]
    client = make_client(batch_size=10, flush_interval=30.0)
    ids = track_many(client, 50)
    assert client.flush(timeout=30).accepted == 50
    assert_stored_exactly_once(fake, ids)
    assert fake.servicer.streams == 3


def test_dropped_connection_is_reopened_and_nothing_is_lost(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.hold_after = 2
    client = make_client(batch_size=50, flush_interval=30.0)
    ids = track_many(client, 400)
    flushed: list[object] = []
    flusher = threading.Thread(target=lambda: flushed.append(client.flush(timeout=60)))
    flusher.start()
    assert fake.servicer.holding.wait(20)
    fake.servicer.hold_after = None
    fake.restart()  # every connection dropped mid-stream
    fake.servicer.release.set()
    flusher.join(60)
    assert flushed and flushed[0].accepted + flushed[0].duplicates >= 400  # type: ignore[attr-defined]
    assert_stored_exactly_once(fake, ids)
    assert fake.servicer.streams >= 2


def test_non_retryable_error_surfaces_on_flush_with_the_unsent_events(fake: FakeServer,
                                                                       make_client: MakeClient) -> None:
    fake.servicer.required_key = "right"
    client = make_client(api_key="wrong", batch_size=2)
    ids = track_many(client, 3)
    with pytest.raises(OnrampError) as info:
        client.flush(timeout=20)
    err = info.value
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert "fake: invalid API key" in err.details and "UNAUTHENTICATED" in str(err)
    assert [e.event_id for e in err.unsent_events] == ids
    assert fake.servicer.streams == 1  # not retried
    assert client.flush(timeout=5).acknowledged == 0  # the error was reported once
    client.close(timeout=5)


def test_invalid_argument_on_the_stream_is_not_retried_and_surfaces_on_close(fake: FakeServer,
                                                                             make_client: MakeClient) -> None:
    fake.servicer.scripts = [StreamScript(fail_after=1, code=grpc.StatusCode.INVALID_ARGUMENT)]
    client = make_client(batch_size=5, flush_interval=30.0)
    ids = track_many(client, 12)
    with pytest.raises(OnrampError) as info:
        client.close(timeout=20)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [e.event_id for e in info.value.unsent_events] == ids[5:]
    assert info.value.result is not None and info.value.result.accepted == 5
    assert fake.servicer.streams == 1
    assert not client._sender.is_alive()


def test_retries_give_up_after_max_retries(make_client: MakeClient) -> None:
    client = make_client(target="127.0.0.1:1", max_retries=2)
    ids = track_many(client, 3)
    with pytest.raises(OnrampError) as info:
        client.flush(timeout=30)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "gave up after 2 retries" in str(info.value)
    assert [e.event_id for e in info.value.unsent_events] == ids


def test_full_buffer_raises_queue_full(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.hold_after = 0  # nothing is acknowledged until released
    client = make_client(max_queue=5, batch_size=2, flush_interval=30.0)
    track_many(client, 5)
    with pytest.raises(QueueFull) as info:
        client.track("feature_used", user_id="u1")
    assert "buffer is full" in str(info.value) and info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(QueueFull):
        client.track("feature_used", user_id="u1", block=True, block_timeout=0.05)
    assert client.pending == 5
    waiter_ids: list[str] = []
    waiter = threading.Thread(target=lambda: waiter_ids.append(
        client.track("feature_used", user_id="u1", event_id="late", block=True, block_timeout=30)))
    waiter.start()
    fake.servicer.release.set()
    waiter.join(30)
    assert waiter_ids == ["late"]
    assert client.flush(timeout=20).accepted == 6


def test_close_is_idempotent_and_stops_the_thread(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client()
    track_many(client, 10)
    client.close()
    assert len(fake.servicer.stored) == 10
    assert not client._sender.is_alive() and client.closed
    client.close()
    client.close(timeout=0.1)
    with pytest.raises(ClientClosed):
        client.track("feature_used", user_id="u1")
    with pytest.raises(ClientClosed):
        client.next_step("u1")


def test_close_with_nothing_tracked_stops_the_thread(make_client: MakeClient) -> None:
    client = make_client(target="127.0.0.1:1")
    client.close(timeout=5)
    assert not client._sender.is_alive()


def test_close_timeout_hands_back_unacknowledged_events(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.hold_after = 0
    client = make_client(batch_size=3)
    ids = track_many(client, 7)
    with pytest.raises(FlushTimeout) as info:
        client.close(timeout=0.3)
    assert sorted(e.event_id for e in info.value.unsent_events) == sorted(ids)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not client._sender.is_alive()


def test_flush_timeout_keeps_events_buffered(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.hold_after = 0
    client = make_client(batch_size=3)
    track_many(client, 4)
    with pytest.raises(FlushTimeout) as info:
        client.flush(timeout=0.2)
    assert info.value.pending == 4 and not info.value.unsent_events
    fake.servicer.release.set()
    assert client.flush(timeout=20).accepted == 4


def test_context_manager_flushes_on_exit(fake: FakeServer) -> None:
    with OnrampClient(fake.address) as client:
        client.identify("u7", anonymous_id="a7", device_id="d7", channel="ios")
        client.track("session_start", anonymous_id="a8", properties={"plan": "pro", "seats": 3, "trial": True})
    assert not client._sender.is_alive()
    by_name = {e.name: e for e in fake.servicer.stored.values()}
    ident = by_name["identify"]
    assert (ident.user_id, ident.anonymous_id, ident.device_id, ident.channel) == ("u7", "a7", "d7", "ios")
    assert dict(by_name["session_start"].properties) == {"plan": "pro", "seats": "3", "trial": "true"}
    assert all(len(e.event_id) == 32 and e.timestamp_ms > 0 for e in by_name.values())


def test_concurrent_tracking_threads(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client(batch_size=64)
    ids: list[list[str]] = [[] for _ in range(4)]

    def work(k: int) -> None:
        ids[k] = track_many(client, 300, prefix=f"t{k}-")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert client.flush(timeout=30).accepted == 1200
    assert_stored_exactly_once(fake, [i for chunk in ids for i in chunk])


def test_track_checks_what_it_can(make_client: MakeClient) -> None:
    client = make_client(target="127.0.0.1:1")
    with pytest.raises(ValueError, match="user_id and anonymous_id"):
        client.track("feature_used")
    with pytest.raises(ValueError, match="name"):
        client.track("", user_id="u1")
    with pytest.raises(TypeError, match=r"properties\[obj\]"):
        client.track("feature_used", user_id="u1", properties={"obj": object()})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="user_id"):
        client.identify("")
    assert client.track("x", user_id="u1", event_id="mine", timestamp_ms=1_700_000_000_000) == "mine"


@pytest.mark.parametrize("kw,field", [({"batch_size": 0}, "batch_size"), ({"batch_size": 10_001}, "batch_size"),
                                      ({"flush_interval": 0}, "flush_interval"), ({"max_queue": 0}, "max_queue"),
                                      ({"max_retries": -1}, "max_retries"), ({"timeout": 0}, "timeout"),
                                      ({"backoff_initial": 2.0, "backoff_max": 1.0}, "backoff"),
                                      ({"api_key": "a\nb"}, "api_key"),
                                      ({"private_key": b"k"}, "certificate_chain")])
def test_bad_settings_are_named(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OnrampClient("127.0.0.1:1", **kw)  # type: ignore[arg-type]


def test_idle_stream_broken_by_a_restart_is_reopened_on_new_work(fake: FakeServer, make_client: MakeClient,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(batch_size=10)
    first = track_many(client, 3, prefix="a")
    assert client.flush(timeout=10).accepted == 3
    with caplog.at_level(logging.WARNING, logger="onramp_client"):
        fake.restart()  # the open, idle stream breaks (noticed now or when the next batch goes out)
        second = track_many(client, 4, prefix="b")
        assert client.flush(timeout=20).accepted == 4
    assert_stored_exactly_once(fake, first + second)
    assert fake.servicer.streams >= 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
