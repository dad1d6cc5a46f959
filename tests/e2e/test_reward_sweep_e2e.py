"""The reward sweep's timing from the catalog, over real gRPC: with ``[rewards] sweep_interval_seconds`` and
``grace_seconds`` short, a shown step whose window closed gets its default outcome from the running server's
own sweep (with the default 60 s grace it would wait a minute past the deadline)."""
from __future__ import annotations

import sqlite3
import time

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import running_server
from tests.server.engine_support import demo_raw

WINDOW_HOURS = 0.0005  # 1.8 s


def test_a_short_grace_window_applies_in_the_running_server() -> None:
    raw = demo_raw()
    welcome = next(s for s in raw["steps"] if s["id"] == "welcome")
    welcome["reward_window_hours"], welcome["default_reward"] = WINDOW_HOURS, -0.25
    raw["rewards"].update(sweep_interval_seconds=0.05, grace_seconds=0.5)
    with running_server(raw) as h, grpc.insecure_channel(h.address) as ch:
        learner = h.server.learner
        assert (learner.sweep_interval_s, learner.joiner.grace_ms) == (0.05, 500)
        stub = pb_grpc.OnrampStub(ch)
        stub.SetConsent(pb.ConsentRequest(anonymous_id="visitor-9", purpose="tracking", granted=True), timeout=30)
        shown = stub.GetNextStep(pb.NextStepRequest(anonymous_id="visitor-9"), timeout=30)
        assert shown.step.id == "welcome"
        with sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True) as conn:
            deadline = conn.execute("SELECT reward_deadline_ms FROM decisions WHERE decision_id = ?",
                                    (shown.decision_id,)).fetchone()[0]

            def outcome() -> tuple[float, str, str, int] | None:
                return conn.execute("SELECT reward, source, outcome, timestamp_ms FROM outcomes WHERE decision_id = ?",
                                    (shown.decision_id,)).fetchone()
            end = time.monotonic() + 30
            while outcome() is None and time.monotonic() < end:
                time.sleep(0.05)
            row = outcome()
    assert row == (-0.25, "default", "no_success", deadline)
