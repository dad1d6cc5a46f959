"""Rate limits (token buckets per caller) and message-size limits, in isolation and over real gRPC."""
from __future__ import annotations


import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import KEYS, auth_config, key_md, ops_with, run_async, tiny_server
from server.api.limits import (
    AuthFailureLimiter, LimitsConfig, LimitsConfigError, RateLimited, RateLimiter, TokenBucket, server_options,
)


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_admits_burst_then_tells_the_wait() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 0.0) == pytest.approx(0.1)
    assert bucket.take(1, 0.05) == pytest.approx(0.05)
    assert bucket.take(1, 0.1) == 0.0
    assert bucket.take(1, 10.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)  # refilled to burst 3, not beyond


def test_oversized_request_runs_into_debt_instead_of_failing_forever() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0, now=0.0)
    assert bucket.take(20, 0.0) == 0.0
    assert bucket.tokens == pytest.approx(-15.0)
    assert bucket.take(1, 0.0) == pytest.approx(1.6)
    assert bucket.take(20, 2.0) == 0.0


def test_limiter_keeps_callers_apart_and_reports_retry_hint() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LimitsConfig(calls_per_second=2, calls_burst=2), clock=clock)
    limiter.check_call("a")
    limiter.check_call("a")
    with pytest.raises(RateLimited) as err:
        limiter.check_call("a")
    assert err.value.retry_after_ms == 500
    assert "retry after 500 ms" in err.value.message and "'a'" in err.value.message
    limiter.check_call("b")
    clock.now += 0.5
    limiter.check_call("a")


def test_limiter_events_and_off_by_default() -> None:
    clock = FakeClock()
    assert not RateLimiter(LimitsConfig()).active
    for _ in range(1000):
        RateLimiter(LimitsConfig()).check_call("x")
    limiter = RateLimiter(LimitsConfig(events_per_second=100, events_burst=50), clock=clock)
    limiter.check_call("x")  # calls unlimited
    limiter.check_events("x", 50)
    with pytest.raises(RateLimited) as err:
        limiter.check_events("x", 10)
    assert err.value.kind == "events" and err.value.retry_after_ms == 100
    limiter.check_events("x", 0)


def test_limiter_forgets_least_recent_callers_beyond_bound() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LimitsConfig(calls_per_second=1, calls_burst=1, max_tracked_callers=2), clock=clock)
    limiter.check_call("a")
    limiter.check_call("b")
    limiter.check_call("c")  # evicts "a"
    limiter.check_call("a")  # fresh bucket
    with pytest.raises(RateLimited):
        limiter.check_call("c")


def test_default_burst_is_twice_the_rate() -> None:
    config = LimitsConfig(calls_per_second=10)
    assert config.burst_for(10, 0) == 20
    assert config.burst_for(0.1, 0) == 1
    assert config.burst_for(10, 3) == 3


@pytest.mark.parametrize("section, where", [
    ({"calls_per_second": -1}, "[limits] calls_per_second"),
    ({"events_burst": "many"}, "[limits] events_burst"),
    ({"calls_per_second": True}, "[limits] calls_per_second"),
    ({"max_message_bytes": 10}, "[limits] max_message_bytes"),
    ({"calls_per_minute": 5}, "[limits] calls_per_minute"),
    ({"auth_failures_per_second": -1}, "[limits] auth_failures_per_second"),
    ({"auth_failures_burst": "ten"}, "[limits] auth_failures_burst"),
    ({"auth_failure_delay_ms": 0.5}, "[limits] auth_failure_delay_ms"),
    ({"auth_failure_delay_ms": -1}, "[limits] auth_failure_delay_ms"),
    ({"auth_failure_delay_ms": 60_001}, "[limits] auth_failure_delay_ms"),
])
def test_limits_config_errors_name_the_key(section: dict, where: str) -> None:
    with pytest.raises(LimitsConfigError) as err:
        LimitsConfig.from_mapping(section)
    assert str(err.value).startswith(where)


def test_failed_authentications_are_limited_by_default() -> None:
    config = LimitsConfig.from_mapping({})
    assert (config.auth_failures_per_second, config.auth_failures_burst, config.auth_failure_delay_ms) \
        == (1.0, 10.0, 250)
    assert AuthFailureLimiter(config).active and not RateLimiter(config).active
    assert not AuthFailureLimiter(LimitsConfig.from_mapping({"auth_failures_per_second": 0})).active


def test_auth_failure_budget_per_host_with_refunds_and_a_bound() -> None:
    clock = FakeClock()
    config = LimitsConfig(auth_failures_per_second=0.5, auth_failures_burst=2, max_tracked_callers=2)
    limiter = AuthFailureLimiter(config, clock=clock)
    limiter.take("10.0.0.1")
    limiter.take("10.0.0.1")
    with pytest.raises(RateLimited) as err:
        limiter.take("10.0.0.1")
    assert err.value.kind == "auth_failures" and err.value.retry_after_ms == 2000
    assert err.value.message == ("too many failed authentications from '10.0.0.1': 0.5 per second allowed "
                                 "(burst 2); retry after 2000 ms")
    assert err.value.after(0.25).retry_after_ms == 1750 and err.value.after(5).retry_after_ms == 1
    limiter.give("10.0.0.1")  # a valid key: its check is given back
    limiter.take("10.0.0.1")
    limiter.take("10.0.0.2")  # another host has its own budget
    limiter.take("10.0.0.3")  # beyond 2 tracked hosts: the least recently seen (10.0.0.1) is forgotten
    assert len(limiter) == 2
    limiter.take("10.0.0.1")  # a fresh bucket again
    clock.now += 2.0
    limiter.take("10.0.0.2")


def test_server_options_carry_message_size() -> None:
    config = LimitsConfig.from_mapping({"max_message_bytes": 2048})
    assert dict(server_options(config))["grpc.max_receive_message_length"] == 2048


# -- over gRPC ------------------------------------------------------------------------------------------

def _events(n: int, prefix: str = "e") -> list[pb.Event]:
    return [pb.Event(event_id=f"{prefix}{i}", user_id="u1", name="feature_used") for i in range(n)]


def test_call_limit_per_key_over_grpc() -> None:
    # A refill of 0.001/s makes the bucket effectively static for the test's duration.
    ops = ops_with(auth=auth_config(), limits={"calls_per_second": 0.001, "calls_burst": 2})

    async def scenario() -> dict:
        out: dict = {}
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                req = pb.NextStepRequest(user_id="u1")
                await stub.GetNextStep(req, metadata=key_md("decider"))
                await stub.GetNextStep(req, metadata=key_md("decider"))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetNextStep(req, metadata=key_md("decider"))
                out["refused"] = (err.value.code(), err.value.details(), dict(err.value.trailing_metadata()))
                out["other_key"] = await stub.GetNextStep(req, metadata=key_md("backend"))
        out["limited"] = ops.metrics.rate_limited_total.labels(kind="calls")._value.get()
        return out

    r = run_async(scenario())
    code, details, trailers = r["refused"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit exceeded for 'decider'" in details and "retry after" in details
    assert int(trailers["retry-after-ms"]) > 0
    assert f"retry after {trailers['retry-after-ms']} ms" in details
    assert trailers["x-request-id"]
    assert r["other_key"].decision_id == "d1"
    assert r["limited"] == 1


def test_call_limit_per_peer_without_auth_and_health_is_exempt() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ops = ops_with(limits={"calls_per_second": 0.001, "calls_burst": 1})

    async def scenario() -> tuple:
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                await stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1"))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1"))
                health = health_pb2_grpc.HealthStub(channel)
                statuses = [(await health.Check(health_pb2.HealthCheckRequest())).status for _ in range(3)]
                return err.value.code(), err.value.details(), statuses

    code, details, statuses = run_async(scenario())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'peer:127.0.0.1'" in details
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 3


def test_event_limit_on_batches_and_streams_over_grpc() -> None:
    keys = {**KEYS, "ops": (KEYS["ops"][0], ["ingest"])}
    ops = ops_with(auth=auth_config(keys), limits={"events_per_second": 0.001, "events_burst": 5})

    async def scenario() -> dict:
        out: dict = {}
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                batches = [pb.EventBatch(sequence=1, events=_events(3, "a")),
                           pb.EventBatch(sequence=2, events=_events(3, "b"))]
                acks = []
                call = stub.IngestEventBatches(iter(batches), metadata=key_md("backend"))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for ack in call:
                        acks.append(ack.sequence)
                out["acks"] = acks
                out["batch_err"] = (err.value.code(), err.value.details(), dict(err.value.trailing_metadata()))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.IngestEvents(iter(_events(3, "c")), metadata=key_md("backend"))  # 2 tokens left
                out["stream_err"] = err.value.code()
                out["other_key"] = await stub.IngestEvents(iter(_events(5, "d")), metadata=key_md("ops"))
        return out

    r = run_async(scenario())
    assert r["acks"] == [1]
    code, details, trailers = r["batch_err"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "events/s" in details and "retry after" in details
    assert int(trailers["retry-after-ms"]) > 0
    assert r["stream_err"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert r["other_key"].accepted == 5


def test_max_message_size_over_grpc() -> None:
    ops = ops_with(limits={"max_message_bytes": 1024})

    async def scenario() -> tuple:
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                small = await stub.IngestEvents(iter(_events(2)))
                big = pb.Event(event_id="big", user_id="u1", name="feature_used", properties={"p": "x" * 2000})
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.IngestEvents(iter([big]))
                return small.accepted, err.value.code()

    accepted, code = run_async(scenario())
    assert accepted == 2
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
