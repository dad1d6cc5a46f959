"""The status a client got is the status the server counts and logs: for every way a call can end (unary and
streaming methods, bytes that are not a valid message, aborts from the servicer, auth and rate-limit
refusals) the ``onramp_rpc_duration_seconds`` label and the access line carry that code, and client errors
are logged at INFO without a traceback. Only a handler crash is UNKNOWN, at ERROR with its traceback."""
from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import auth_config, captured_json_logs, key_md, ops_with, run_async, tiny_server
from test_metrics import sample

SERVICE = "/onramp.v1.Onramp/"
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, length-delimited, with a length that overruns the message


def _md(name: str, key: str | None = "decider") -> tuple[tuple[str, str], ...]:
    return (*(key_md(key) if key else ()), ("x-request-id", f"case-{name}"))


def _raw(channel: grpc.aio.Channel, method: str, kind: str) -> Any:
    return getattr(channel, kind)(SERVICE + method, request_serializer=None, response_deserializer=None)


async def _drain(call: Any) -> None:
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


def _event(user: str = "u1", i: int = 0) -> pb.Event:
    return pb.Event(event_id=f"e{i}", user_id=user, name="feature_used")


Case = Callable[[grpc.aio.Channel, str], Awaitable[None]]


async def _malformed_unary(ch: grpc.aio.Channel, name: str) -> None:
    await _raw(ch, "GetNextStep", "unary_unary")(GARBAGE, metadata=_md(name))


async def _malformed_stream_unary(ch: grpc.aio.Channel, name: str) -> None:
    good = pb.Event(event_id="e1", user_id="u1", name="feature_used").SerializeToString()
    await _raw(ch, "IngestEvents", "stream_unary")(iter([good, GARBAGE]), metadata=_md(name, "backend"))


async def _malformed_stream_stream(ch: grpc.aio.Channel, name: str) -> None:
    await _drain(_raw(ch, "IngestEventBatches", "stream_stream")(iter([GARBAGE]), metadata=_md(name, "backend")))


async def _abort_unary(ch: grpc.aio.Channel, name: str) -> None:
    await pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="missing"), metadata=_md(name))


async def _abort_stream_unary(ch: grpc.aio.Channel, name: str) -> None:
    await pb_grpc.OnrampStub(ch).IngestEvents(iter([_event(), _event("missing", 1)]), metadata=_md(name, "backend"))


async def _abort_stream_stream(ch: grpc.aio.Channel, name: str) -> None:
    batches = [pb.EventBatch(sequence=1, events=[_event()]), pb.EventBatch(sequence=2, events=[_event("missing")])]
    await _drain(pb_grpc.OnrampStub(ch).IngestEventBatches(iter(batches), metadata=_md(name, "backend")))


async def _no_key(ch: grpc.aio.Channel, name: str) -> None:
    await pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=_md(name, None))


async def _unknown_key(ch: grpc.aio.Channel, name: str) -> None:
    md = (("x-api-key", "not-a-key"), ("x-request-id", f"case-{name}"))
    await _drain(pb_grpc.OnrampStub(ch).IngestEventBatches(iter([pb.EventBatch(sequence=1)]), metadata=md))


async def _wrong_role(ch: grpc.aio.Channel, name: str) -> None:
    await pb_grpc.OnrampStub(ch).IngestEvents(iter([_event()]), metadata=_md(name, "decider"))


async def _call_limit(ch: grpc.aio.Channel, name: str) -> None:
    stub = pb_grpc.OnrampStub(ch)
    await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=key_md("decider"))  # the burst of 1
    await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=_md(name))


async def _events_limit(ch: grpc.aio.Channel, name: str) -> None:
    batch = pb.EventBatch(sequence=1, events=[_event(i=i) for i in range(5)])
    await _drain(pb_grpc.OnrampStub(ch).IngestEventBatches(iter([batch, batch]), metadata=_md(name, "backend")))


async def _failure_budget(ch: grpc.aio.Channel, name: str) -> None:
    stub = pb_grpc.OnrampStub(ch)
    with pytest.raises(grpc.aio.AioRpcError):  # the budget of 1 failed authentication
        await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=(("x-api-key", "guess-1"),))
    md = (("x-api-key", "guess-2"), ("x-request-id", f"case-{name}"))
    await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=md)


async def _crash(ch: grpc.aio.Channel, name: str) -> None:
    await pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="boom"), metadata=_md(name))


LIMITS = {"calls_per_second": 0.001, "calls_burst": 1, "events_per_second": 0.001, "events_burst": 5}
CASES: list[tuple[str, Case, str, str, dict[str, Any]]] = [
    ("malformed_unary", _malformed_unary, "GetNextStep", "INVALID_ARGUMENT", {}),
    ("malformed_stream_unary", _malformed_stream_unary, "IngestEvents", "INVALID_ARGUMENT", {}),
    ("malformed_stream_stream", _malformed_stream_stream, "IngestEventBatches", "INVALID_ARGUMENT", {}),
    ("abort_unary", _abort_unary, "GetNextStep", "NOT_FOUND", {}),
    ("abort_stream_unary", _abort_stream_unary, "IngestEvents", "NOT_FOUND", {}),
    ("abort_stream_stream", _abort_stream_stream, "IngestEventBatches", "NOT_FOUND", {}),
    ("no_key", _no_key, "GetNextStep", "UNAUTHENTICATED", {}),
    ("unknown_key", _unknown_key, "IngestEventBatches", "UNAUTHENTICATED", {}),
    ("wrong_role", _wrong_role, "IngestEvents", "PERMISSION_DENIED", {}),
    ("call_limit", _call_limit, "GetNextStep", "RESOURCE_EXHAUSTED", LIMITS),
    ("events_limit", _events_limit, "IngestEventBatches", "RESOURCE_EXHAUSTED", LIMITS),
    ("failure_budget", _failure_budget, "GetNextStep", "RESOURCE_EXHAUSTED",
     {"auth_failures_per_second": 0.001, "auth_failures_burst": 1, "auth_failure_delay_ms": 0}),
]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


async def _run(case: Case, name: str, limits: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
    ops = ops_with(auth=auth_config(), limits=limits, metrics={"enabled": True, "port": 0})
    async with tiny_server(ops) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await case(channel, name)
        text = await asyncio.to_thread(_scrape, ops.metrics_server.port)
    return err.value.code(), text


def _access_line(log_text: str, name: str) -> dict[str, Any]:
    lines = [json.loads(x) for x in log_text.splitlines() if x.strip()]
    mine = [x for x in lines if x.get("request_id") == f"case-{name}" and x["logger"] == "onramp.access"
            and (x["msg"] == "rpc done" or x["msg"].startswith("rpc failed"))]
    assert len(mine) == 1, mine
    return mine[0]


@pytest.mark.parametrize("name, case, method, code, limits", CASES, ids=[c[0] for c in CASES])
def test_client_errors_are_counted_and_logged_with_the_status_the_client_got(
        name: str, case: Case, method: str, code: str, limits: dict[str, Any]) -> None:
    with captured_json_logs() as logs:
        got, text = run_async(_run(case, name, limits))
    assert got.name == code
    full = "onramp.v1.Onramp/" + method
    assert sample(text, "onramp_rpc_duration_seconds_count", method=full, code=code) == 1
    assert sample(text, "onramp_rpc_duration_seconds_count", code="UNKNOWN") is None
    line = _access_line(logs.getvalue(), name)
    assert (line["level"], line["code"], line["rpc"]) == ("INFO", code, full)
    assert "exc" not in line
    assert "ERROR" not in {json.loads(x)["level"] for x in logs.getvalue().splitlines() if x.strip()}
    assert "Traceback" not in logs.getvalue()


def test_a_handler_crash_is_unknown_and_logged_at_error_with_the_traceback() -> None:
    with captured_json_logs() as logs:
        got, text = run_async(_run(_crash, "crash", {}))
    assert got == grpc.StatusCode.UNKNOWN
    assert sample(text, "onramp_rpc_duration_seconds_count", method="onramp.v1.Onramp/GetNextStep",
                  code="UNKNOWN") == 1
    line = _access_line(logs.getvalue(), "crash")
    assert (line["level"], line["code"], line["msg"]) == ("ERROR", "UNKNOWN", "rpc failed: RuntimeError")
    assert "tiny servicer exploded" in line["exc"]
