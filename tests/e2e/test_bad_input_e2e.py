"""Bad input over real gRPC: every rule answers INVALID_ARGUMENT (or NOT_FOUND) naming the field, and the
server keeps serving (a valid call right after works)."""
from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle, running_server
from tests.server.ops_support import captured_json_logs


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ServerHandle, pb_grpc.OnrampStub]]:
    with running_server() as handle, grpc.insecure_channel(handle.address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        stub.SetConsent(pb.ConsentRequest(user_id="u1", purpose="tracking", granted=True))
        yield handle, stub


def ev(**fields: Any) -> pb.Event:
    base: dict[str, Any] = {"event_id": "bad-1", "user_id": "u1", "name": "feature_used"}
    base.update(fields)
    return pb.Event(**base)


FAR_FUTURE = 4_102_444_800_000  # 2100-01-01

EVENT_CASES = [
    (ev(event_id=""), "event_id"),
    (ev(event_id="white space"), "event_id"),
    (ev(event_id="x" * 129), "event_id"),
    (ev(name="Feature Used"), "name"),
    (ev(user_id=""), "user_id"),
    (ev(user_id="u" * 257), "user_id"),
    (ev(user_id="anon:x"), "user_id"),
    (ev(user_id="", anonymous_id="a" * 257), "anonymous_id"),
    (ev(device_id="d" * 257), "device_id"),
    (ev(name="identify", anonymous_id="a1", user_id=""), "user_id"),
    (ev(name="identify"), "anonymous_id"),
    (ev(timestamp_ms=FAR_FUTURE), "timestamp_ms"),
    (ev(timestamp_ms=900_000_000_000), "timestamp_ms"),
    (ev(channel="Web!"), "channel"),
    (ev(device_type="Big Phone"), "device_type"),
    (ev(feature="f" * 129), "feature"),
    (ev(step_id="s" * 129), "step_id"),
    (ev(decision_id="d" * 129), "decision_id"),
    (ev(properties={f"k{i}": "v" for i in range(65)}), "properties"),
    (ev(properties={"bad key": "v"}), "properties[bad key]"),
    (ev(properties={"plan": "x" * 1025}), "properties[plan]"),
]


def _ok_after(stub: pb_grpc.OnrampStub) -> None:
    assert stub.GetNextStep(pb.NextStepRequest(user_id="u1")).decision_id


@pytest.mark.parametrize("event, field", EVENT_CASES, ids=[f for _, f in EVENT_CASES])
def test_bad_event_on_the_stream(shared, event: pb.Event, field: str) -> None:
    _, stub = shared
    good = pb.Event(event_id=f"good-{len(field)}-{abs(hash(field))}", user_id="u1", name="session_start")
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestEvents(iter([good, event]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"events[1].{field}: "), err.value.details()
    _ok_after(stub)


@pytest.mark.parametrize("event, field", EVENT_CASES, ids=[f for _, f in EVENT_CASES])
def test_bad_event_in_a_batch(shared, event: pb.Event, field: str) -> None:
    _, stub = shared
    [ack] = stub.IngestEventBatches(iter([pb.EventBatch(sequence=9, events=[event])]))
    assert [(r.index, r.field) for r in ack.rejected] == [(0, field)]
    assert ack.rejected[0].message and ack.accepted == 0
    _ok_after(stub)


CALL_CASES: list[tuple[str, Callable[[pb_grpc.OnrampStub], Any], grpc.StatusCode, str]] = [
    ("consent purpose", lambda s: s.SetConsent(pb.ConsentRequest(user_id="u1", purpose="marketing")),
     grpc.StatusCode.INVALID_ARGUMENT, "purpose: must be one of tracking, personalization (got 'marketing')"),
    ("consent subject", lambda s: s.SetConsent(pb.ConsentRequest(purpose="tracking")),
     grpc.StatusCode.INVALID_ARGUMENT, "user_id: "),
    ("consent time", lambda s: s.SetConsent(pb.ConsentRequest(user_id="u1", purpose="tracking",
                                                              timestamp_ms=FAR_FUTURE)),
     grpc.StatusCode.INVALID_ARGUMENT, "timestamp_ms: "),
    ("reward nan", lambda s: s.ReportOutcome(pb.OutcomeRequest(decision_id="d1", reward=math.nan)),
     grpc.StatusCode.INVALID_ARGUMENT, "reward: must be a finite number within [-1000, 1000] (got nan)"),
    ("reward big", lambda s: s.ReportOutcome(pb.OutcomeRequest(decision_id="d1", reward=5000)),
     grpc.StatusCode.INVALID_ARGUMENT, "reward: "),
    ("no decision id", lambda s: s.ReportOutcome(pb.OutcomeRequest(reward=1)),
     grpc.StatusCode.INVALID_ARGUMENT, "decision_id: is required"),
    ("unknown decision", lambda s: s.ReportOutcome(pb.OutcomeRequest(decision_id="nope", reward=1)),
     grpc.StatusCode.NOT_FOUND, "decision_id: no decision 'nope' was logged"),
    ("next step subject", lambda s: s.GetNextStep(pb.NextStepRequest()),
     grpc.StatusCode.INVALID_ARGUMENT, "user_id: "),
    ("next step surface", lambda s: s.GetNextStep(pb.NextStepRequest(user_id="u1", surface="In App")),
     grpc.StatusCode.INVALID_ARGUMENT, "surface: "),
    ("next step unknown surface", lambda s: s.GetNextStep(pb.NextStepRequest(user_id="u1", surface="sms")),
     grpc.StatusCode.INVALID_ARGUMENT,
     "surface: unknown surface 'sms': must be one of the catalog's channels (in_app, email, push), or empty for any"),
    ("next step context", lambda s: s.GetNextStep(pb.NextStepRequest(user_id="u1", context={"a b": "c"})),
     grpc.StatusCode.INVALID_ARGUMENT, "context[a b]: "),
    ("erase subject", lambda s: s.EraseUser(pb.EraseUserRequest()), grpc.StatusCode.INVALID_ARGUMENT, "user_id: "),
    ("export subject", lambda s: s.ExportUserData(pb.ExportUserDataRequest(anonymous_id="x" * 300)),
     grpc.StatusCode.INVALID_ARGUMENT, "anonymous_id: "),
    ("profile subject", lambda s: s.GetUserProfile(pb.GetUserProfileRequest()),
     grpc.StatusCode.INVALID_ARGUMENT, "user_id: "),
    ("unknown profile", lambda s: s.GetUserProfile(pb.GetUserProfileRequest(user_id="nobody")),
     grpc.StatusCode.NOT_FOUND, "user_id: no profile for 'nobody'"),
    ("huge batch", lambda s: list(s.IngestEventBatches(iter([pb.EventBatch(events=[ev(event_id=f"h{i}")
                                                                                for i in range(10_001)])]))),
     grpc.StatusCode.INVALID_ARGUMENT, "batches[0].events: must hold at most 10000 events per batch (got 10001)"),
]


@pytest.mark.parametrize("name, call, code, prefix", CALL_CASES, ids=[c[0] for c in CALL_CASES])
def test_bad_requests(shared, name: str, call: Callable[[pb_grpc.OnrampStub], Any], code: grpc.StatusCode,
                      prefix: str) -> None:
    _, stub = shared
    with pytest.raises(grpc.RpcError) as err:
        call(stub)
    assert err.value.code() == code, err.value.details()
    assert err.value.details().startswith(prefix), err.value.details()
    _ok_after(stub)


def test_ingest_limits_follow_the_config() -> None:
    with running_server(ingest={"max_properties": 2, "max_future_skew_ms": 0}) as handle, \
            grpc.insecure_channel(handle.address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.IngestEvents(iter([ev(properties={"a": "1", "b": "2", "c": "3"})]))
        assert err.value.details() == "events[0].properties: must have at most 2 entries (got 3)"



def test_garbage_bytes_are_counted_and_logged_as_invalid_argument() -> None:
    """Bytes that are not a valid request message: the client gets INVALID_ARGUMENT, and the server's metric
    label (scraped from its metrics port) and access line say the same, at INFO without a traceback."""
    with captured_json_logs(logging.INFO) as logs, running_server(metrics={"enabled": True, "port": 0}) as handle, \
            grpc.insecure_channel(handle.address) as channel:
        call = channel.unary_unary("/onramp.v1.Onramp/GetNextStep", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\xff\xff\xff\xff\x0f", metadata=(("x-request-id", "garbage-1"),), timeout=10)
        port = handle.server.ops.metrics_server.port
        # the server counts the call as it ends, which can come just after the client got its status
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            counts = [line for line in text.splitlines() if line.startswith("onramp_rpc_duration_seconds_count")]
            if counts or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'onramp_rpc_duration_seconds_count{code="INVALID_ARGUMENT",method="onramp.v1.Onramp/GetNextStep"} 1.0' \
        in counts, counts
    assert not [line for line in counts if 'code="UNKNOWN"' in line], counts
    lines = [json.loads(x) for x in logs.getvalue().splitlines() if x.strip()]
    (access,) = [x for x in lines if x.get("request_id") == "garbage-1" and x["logger"] == "onramp.access"]
    assert (access["level"], access["msg"], access["code"]) == ("INFO", "rpc done", "INVALID_ARGUMENT")
    assert "exc" not in access and "Traceback" not in logs.getvalue()
