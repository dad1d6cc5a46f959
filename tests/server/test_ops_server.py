"""Security and operations on the real Onramp server (server/ops/app.py): keys and roles, health, reflection,
metrics over HTTP, rate limits, and that keys never reach the logs."""
from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import KEYS, captured_json_logs
from server.api.auth import hash_key
from server.ops.app import running_server

AUTH = {"keys": [{"name": name, "hash": hash_key(key), "roles": roles} for name, (key, roles) in KEYS.items()]}


def md(name: str) -> list[tuple[str, str]]:
    return [("x-api-key", KEYS[name][0])]


def _error(fn, *args, **kwargs) -> grpc.RpcError:  # noqa: ANN001 - any stub method
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value


def _events(n: int, prefix: str) -> list[pb.Event]:
    return [pb.Event(event_id=f"{prefix}-{i}", user_id="u1", name="feature_used", feature="reports")
            for i in range(n)]


def test_keys_roles_health_reflection_and_metrics_on_the_real_server() -> None:
    with captured_json_logs() as logs:
        with running_server(auth=AUTH, metrics={"enabled": True, "port": 0}) as handle:
            metrics_port = handle.server.ops.metrics_server.port
            with grpc.insecure_channel(handle.address) as channel:
                stub = pb_grpc.OnrampStub(channel)
                no_key = _error(stub.GetNextStep, pb.NextStepRequest(user_id="u1"))
                wrong = _error(stub.GetNextStep, pb.NextStepRequest(user_id="u1"),
                               metadata=[("x-api-key", "guessed-key")])
                denied = _error(stub.EraseUser, pb.EraseUserRequest(user_id="u1"), metadata=md("decider"))
                consent = stub.SetConsent(pb.ConsentRequest(user_id="u1", purpose="tracking", granted=True),
                                          metadata=md("backend"))
                summary = stub.IngestEvents(iter(_events(3, "a")), metadata=md("backend"))
                step = stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=md("decider"))
                erased = stub.EraseUser(pb.EraseUserRequest(user_id="u1"), metadata=md("ops"))
                health = health_pb2_grpc.HealthStub(channel)
                statuses = [health.Check(health_pb2.HealthCheckRequest(service=s)).status
                            for s in ("", "onramp.v1.Onramp")]
                listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
                services = [s.name for r in listing for s in r.list_services_response.service]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()

    assert no_key.code() == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in no_key.details()
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED and wrong.details() == "unknown API key"
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "'admin'" in denied.details()
    assert dict(denied.trailing_metadata())["x-request-id"]
    assert consent.subject == "u1"
    assert summary.accepted == 3
    assert step.decision_id
    assert erased.deleted.get("events", 0) == 3
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    assert "onramp.v1.Onramp" in services
    assert 'onramp_rpc_duration_seconds_count{code="OK",method="onramp.v1.Onramp/GetNextStep"} 1.0' in text
    assert 'onramp_rpc_duration_seconds_count{code="UNAUTHENTICATED",method="onramp.v1.Onramp/GetNextStep"} 2.0' \
        in text
    assert 'onramp_events_total{result="accepted"} 3.0' in text
    assert 'onramp_queue_depth{queue="writer"}' in text
    lines = logs.getvalue()
    assert '"caller": "decider"' in lines
    for clear, _roles in KEYS.values():
        assert clear not in lines and hash_key(clear)[7:] not in lines
    assert "guessed-key" not in lines


def test_tight_limits_on_the_real_server() -> None:
    limits = {"calls_per_second": 0.001, "calls_burst": 3, "events_per_second": 0.001, "events_burst": 4}
    with running_server(limits=limits) as handle:
        with grpc.insecure_channel(handle.address) as channel:
            stub = pb_grpc.OnrampStub(channel)
            stub.SetConsent(pb.ConsentRequest(user_id="u1", purpose="tracking", granted=True))
            acks: list[tuple[int, int]] = []
            first_acked = threading.Event()

            def batches() -> Iterator[pb.EventBatch]:
                yield pb.EventBatch(sequence=1, events=_events(3, "b"))
                first_acked.wait(30)  # the second batch goes out only after the first one is acknowledged
                yield pb.EventBatch(sequence=2, events=_events(3, "c"))

            with pytest.raises(grpc.RpcError) as err:
                for ack in stub.IngestEventBatches(batches()):
                    acks.append((ack.sequence, ack.accepted))
                    first_acked.set()
            events_refused = err.value
            stub.GetUserProfile(pb.GetUserProfileRequest(user_id="u1"))  # third call: the last token
            calls_refused = _error(stub.GetUserProfile, pb.GetUserProfileRequest(user_id="u1"))
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())

    assert acks == [(1, 3)]
    assert events_refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "events/s" in events_refused.details() and "retry after" in events_refused.details()
    assert int(dict(events_refused.trailing_metadata())["retry-after-ms"]) > 0
    assert calls_refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'peer:127.0.0.1'" in calls_refused.details() and "retry after" in calls_refused.details()
    assert int(dict(calls_refused.trailing_metadata())["retry-after-ms"]) > 0
    assert health.status == health_pb2.HealthCheckResponse.SERVING
