"""Prometheus metrics: per-instance registries, recording helpers, and /metrics over HTTP after real calls."""
from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import auth_config, key_md, ops_with, run_async, tiny_server
from server.base.metrics import Metrics, MetricsConfig, MetricsConfigError, MetricsServer


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent (labels in any order)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.events_total.labels(result="accepted").inc(5)
    assert sample(a.render().decode(), "onramp_events_total", result="accepted") == 5
    assert sample(b.render().decode(), "onramp_events_total", result="accepted") is None


def test_recording_helpers() -> None:
    m = Metrics()
    m.record_events(accepted=3, duplicates=1, dropped={"no_consent": 2, "erased": 0})
    m.record_decision("bandit", "advanced_tip_reports")
    m.record_decision("capped", "")
    m.record_reward("reported", 1.0)
    m.record_reward("default", -0.5)
    m.guardrail_blocks_total.labels(guardrail="max_per_day").inc()
    depth = [7]
    m.track_queue("writer", lambda: depth[0])
    m.record_transaction(0.25, 0.5)
    m.record_transaction(0.0, 0.25)
    text = m.render().decode()
    assert sample(text, "onramp_write_lock_wait_seconds_total") == 0.25
    assert sample(text, "onramp_write_lock_held_seconds_total") == 0.75
    assert sample(text, "onramp_write_transactions_total") == 2
    assert sample(text, "onramp_events_total", result="accepted") == 3
    assert sample(text, "onramp_events_total", result="duplicate") == 1
    assert sample(text, "onramp_events_total", result="dropped") == 2
    assert sample(text, "onramp_events_dropped_total", reason="no_consent") == 2
    assert sample(text, "onramp_events_dropped_total", reason="erased") is None
    assert sample(text, "onramp_decisions_total", reason="bandit", step="advanced_tip_reports") == 1
    assert sample(text, "onramp_decisions_total", reason="capped", step="") == 1
    assert sample(text, "onramp_reward_count", source="reported") == 1
    assert sample(text, "onramp_reward_sum", source="default") == -0.5
    assert sample(text, "onramp_guardrail_blocks_total", guardrail="max_per_day") == 1
    assert sample(text, "onramp_queue_depth", queue="writer") == 7
    depth[0] = 2
    assert sample(m.render().decode(), "onramp_queue_depth", queue="writer") == 2


@pytest.mark.parametrize("section, where", [
    ({"port": 70000}, "[metrics] port"),
    ({"port": "9464"}, "[metrics] port"),
    ({"enabled": 1}, "[metrics] enabled"),
    ({"host": ""}, "[metrics] host"),
    ({"path": "/m"}, "[metrics] path"),
    ({"dashboard": "yes"}, "[metrics] dashboard"),
])
def test_metrics_config_errors_name_the_key(section: dict, where: str) -> None:
    with pytest.raises(MetricsConfigError) as err:
        MetricsConfig.from_mapping(section)
    assert str(err.value).startswith(where)


def test_metrics_default_is_off_on_loopback() -> None:
    config = MetricsConfig.from_mapping({})
    assert (config.enabled, config.host, config.port) == (False, "127.0.0.1", 9464)
    assert config.dashboard is None  # decided by server/api/serving.py, which knows about [auth]


def test_the_endpoint_serves_apps_at_their_prefix_and_metrics_elsewhere() -> None:
    def hello(environ: dict, start_response: object) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [f"hello {environ['PATH_INFO']}".encode()]

    metrics = Metrics()
    metrics.record_decision("core", "welcome")
    server = MetricsServer(metrics, MetricsConfig(enabled=True, port=0), {"/hello": hello})
    port = server.start()
    try:
        def fetch(path: str) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.read().decode()
        assert fetch("/hello") == "hello /hello" and fetch("/hello/there") == "hello /hello/there"
        for path in ("/metrics", "/", "/hellothere"):
            assert sample(fetch(path), "onramp_decisions_total", reason="core", step="welcome") == 1
    finally:
        server.stop()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_rpc_histogram_served_over_http_after_calls() -> None:
    ops = ops_with(auth=auth_config(), metrics={"enabled": True, "port": 0})

    async def scenario() -> tuple[str, bool]:
        async with tiny_server(ops) as port:
            metrics_port = ops.metrics_server.port
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=key_md("decider"))
                await stub.GetNextStep(pb.NextStepRequest(user_id="u2"), metadata=key_md("decider"))
                for user, md in (("missing", key_md("decider")), ("boom", key_md("decider")), ("u1", ())):
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub.GetNextStep(pb.NextStepRequest(user_id=user), metadata=md)
                events = [pb.Event(event_id=f"e{i}", user_id="u1", name="feature_used") for i in range(4)]
                await stub.IngestEvents(iter(events), metadata=key_md("backend"))
            text = await asyncio.to_thread(_scrape, metrics_port)
        # After stop the endpoint is gone.
        try:
            await asyncio.to_thread(_scrape, metrics_port)
            still_up = True
        except OSError:
            still_up = False
        return text, still_up

    text, still_up = run_async(scenario())
    method = "onramp.v1.Onramp/GetNextStep"
    assert sample(text, "onramp_rpc_duration_seconds_count", method=method, code="OK") == 2
    assert sample(text, "onramp_rpc_duration_seconds_bucket", method=method, code="OK", le="+Inf") == 2
    assert sample(text, "onramp_rpc_duration_seconds_count", method=method, code="NOT_FOUND") == 1
    assert sample(text, "onramp_rpc_duration_seconds_count", method=method, code="UNKNOWN") == 1
    assert sample(text, "onramp_rpc_duration_seconds_count", method=method, code="UNAUTHENTICATED") == 1
    assert sample(text, "onramp_rpc_duration_seconds_count", method="onramp.v1.Onramp/IngestEvents",
                  code="OK") == 1
    assert sample(text, "onramp_auth_failures_total", code="UNAUTHENTICATED") == 1
    assert sample(text, "onramp_rpc_in_flight", method=method) == 0
    assert not still_up
