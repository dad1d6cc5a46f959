"""Guardrails across identify, over real gRPC: what an anonymous visitor was shown counts toward the caps of
the user the visitor is identified as (also after a restart), steps the
visitor completed are not shown again, and the user's success event rewards what the visitor was shown."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle, running_server
from tests.conftest import EventFactory
from tests.server.engine_support import demo_raw


def capped_welcome_catalog() -> dict[str, Any]:
    """The demo catalog where only the daily cap limits ``welcome``: 2 shows a day, no cooldown, no gap."""
    raw = demo_raw()
    welcome = next(s for s in raw["steps"] if s["id"] == "welcome")
    welcome["cooldown_hours"], welcome["max_per_day"] = 0, 2
    raw["guardrails"]["min_gap_minutes"] = 0
    return raw


def ask(stub: pb_grpc.OnrampStub, user_id: str = "", anonymous_id: str = "") -> pb.NextStepResponse:
    return stub.GetNextStep(pb.NextStepRequest(user_id=user_id, anonymous_id=anonymous_id, surface="in_app"),
                            timeout=30)


def test_a_visitors_shows_count_toward_the_identified_users_cap(tmp_path: Path, events: EventFactory) -> None:
    db = tmp_path / "onramp.db"
    raw = capped_welcome_catalog()
    with running_server(raw, db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        assert [ask(stub, anonymous_id="visitor-1").step.id for _ in range(2)] == ["welcome", "welcome"]
        assert ask(stub, anonymous_id="visitor-1").reason == "capped"  # the cap of 2 a day is reached
        assert ask(stub, anonymous_id="visitor-2").step.id == "welcome"  # the cap is per person
        assert ask(stub, user_id="ursula-twin").step.id == "welcome"  # a user never identified with visitor-1

        events.grant(stub, "ursula")
        summary = stub.IngestEvents(iter([events.make("ursula", name="identify", anonymous_id="visitor-1")]))
        assert summary.accepted == 1
        for who in ({"user_id": "ursula"}, {"anonymous_id": "visitor-1"}):
            r = ask(stub, **who)
            assert (r.has_step, r.reason) == (False, "capped"), who
    # after a restart: the shown history is read from the store
    with running_server(raw, db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        r = ask(pb_grpc.OnrampStub(ch), user_id="ursula")
        assert (r.has_step, r.reason) == (False, "capped")


def test_steps_the_visitor_completed_are_not_shown_to_the_user(events: EventFactory) -> None:
    with running_server(capped_welcome_catalog()) as h, grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        events.grant(stub, anonymous_id="visitor-3")
        shown = ask(stub, anonymous_id="visitor-3")
        assert shown.step.id == "welcome"
        stub.IngestEvents(iter([events.make("", name="step_completed", anonymous_id="visitor-3", step_id="welcome",
                                            decision_id=shown.decision_id)]))
        stub.IngestEvents(iter([events.make("victor", name="identify", anonymous_id="visitor-3")]))
        assert ask(stub, user_id="victor").step.id == "profile_setup"  # welcome (1 of 2 a day) is done


def outcome_of(h: ServerHandle, decision_id: str) -> tuple[str, float] | None:
    with sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT source, reward FROM outcomes WHERE decision_id = ?", (decision_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def test_the_users_success_event_rewards_what_the_visitor_was_shown(server: ServerHandle,
                                                                   stub: pb_grpc.OnrampStub,
                                                                   events: EventFactory) -> None:
    events.grant(stub, anonymous_id="visitor-4")  # the cookie banner: the visitor's show waits for its reward
    shown = ask(stub, anonymous_id="visitor-4")
    untracked = ask(stub, anonymous_id="visitor-5")  # no consent: no reward is waited for (docs/decisions.md)
    assert shown.step.id == untracked.step.id == "welcome"
    events.grant(stub, "wanda")
    # one batch: the identify, then the user's completion of the step (no decision_id on it)
    stub.IngestEvents(iter([events.make("wanda", name="identify", anonymous_id="visitor-4"),
                            events.make("wanda", name="step_completed", step_id="welcome")]))
    end = time.monotonic() + 30
    while outcome_of(server, shown.decision_id) is None and time.monotonic() < end:
        time.sleep(0.02)
    assert outcome_of(server, shown.decision_id) == ("event", 1.0)
    stub.IngestEvents(iter([events.make("wanda", name="identify", anonymous_id="visitor-5"),
                            events.make("wanda", name="step_completed", step_id="welcome")]))
    time.sleep(0.2)
    assert outcome_of(server, untracked.decision_id) is None
