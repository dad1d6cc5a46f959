"""Reward joining: success events within the window (by step or by decision_id), dismissals, the default
reward when the window closes (sweep, grace, and after a restart), one outcome per decision, no orphan
outcome for an erased user, and the bandit learning from each joined outcome."""
from __future__ import annotations

from pathlib import Path

import pytest

from server.decide.engine_api import ServiceError
from server.decide.engine import DecisionEngine
from server.learn.rewards import DEFAULT_GRACE_MS
from tests.server.engine_support import (run, forced_rules_catalog, DAY_MS, HOUR_MS, MIN_MS, T0, Harness, catalog_with, decision_rows,
                                         demo_raw, outcome_rows)

def tailored(engine: DecisionEngine, i: int = 0) -> str:
    n = -1
    for k in range(1000):
        if engine.assignment(f"r{k}")[2] == "tailored":
            n += 1
            if n == i:
                return f"r{k}"
    raise AssertionError("no tailored user")


def test_step_completed_in_the_window_is_the_reward(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("amy")
        await h.sessions("amy", [T0])
        r = await h.ask("amy", T0 + MIN_MS)
        await h.learn(T0 + MIN_MS)
        assert r.step.id == "welcome" and r.decision_id in h.learner.joiner
        await h.event("amy", "step_completed", T0 + 5 * MIN_MS, step_id="welcome")
        await h.learn(T0 + 5 * MIN_MS)
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["reward"], o["source"], o["outcome"], o["timestamp_ms"]) == (1.0, "event", "completed", T0 + 5 * MIN_MS)
        assert o["user_pseudo"] == h.pipeline.pseudonym("amy")
        assert r.decision_id not in h.learner.joiner
        dup = await h.report(r.decision_id, 0.0, T0 + 6 * MIN_MS)
        assert dup.duplicate and not dup.recorded
    run(tmp_path, scenario)


def test_events_outside_the_window_or_of_other_steps_do_not_count(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("bo")
        await h.sessions("bo", [T0])
        r = await h.ask("bo", T0 + MIN_MS)
        await h.event("bo", "step_completed", T0 + 2 * MIN_MS, step_id="profile_setup")  # another step
        await h.event("bo", "step_completed", T0 + 25 * HOUR_MS, step_id="welcome")  # after the 24 h window
        # the learner's round closes the window only after deadline + grace
        deadline = T0 + MIN_MS + 24 * HOUR_MS
        await h.learn(deadline + DEFAULT_GRACE_MS - 1)
        assert r.decision_id not in outcome_rows(h.db_path) and r.decision_id in h.learner.joiner
        await h.learn(deadline + DEFAULT_GRACE_MS + 1)
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["reward"], o["source"], o["outcome"], o["timestamp_ms"]) == (0.0, "default", "no_success", deadline)
        assert len(h.learner.joiner) == 0
    run(tmp_path, scenario)


def test_event_carrying_the_decision_id_and_dismissal(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        uid = tailored(engine)
        t = await h.consistent_user(uid)
        a = await h.ask(uid, t + DAY_MS, surface="in_app")
        b = await h.ask(uid, t + DAY_MS + HOUR_MS, surface="email")
        assert a.reason == b.reason == "bandit"
        await h.learn(t + DAY_MS + HOUR_MS)
        learned = engine.learned
        # success of a (by decision_id, even with no step_id on the event); dismissal of b
        step_a = h.catalog.step(a.step.id)
        await h.event(uid, "step_dismissed", t + DAY_MS + HOUR_MS + MIN_MS, decision_id="f" * 32)  # unknown id
        await h.event(uid, step_a.success_event, t + DAY_MS + 2 * HOUR_MS, decision_id=a.decision_id,
                      feature=step_a.feature or "")
        await h.event(uid, "step_dismissed", t + DAY_MS + 3 * HOUR_MS, step_id=b.step.id)
        await h.learn(t + DAY_MS + 3 * HOUR_MS)
        out = outcome_rows(h.db_path)
        assert (out[a.decision_id]["reward"], out[a.decision_id]["source"]) == (1.0, "event")
        assert (out[b.decision_id]["reward"], out[b.decision_id]["outcome"]) == (0.0, "dismissed")
        assert engine.learned == learned + 2
    run(tmp_path, scenario)


def test_feature_and_session_success_events(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        uid = tailored(engine)
        t = await h.consistent_user(uid)
        t += 3 * DAY_MS
        await h.event(uid, "session_start", t)  # back after 2+ days: re-engagement email (rule)
        r = await h.ask(uid, t + MIN_MS, surface="email")
        assert (r.step.id, r.reason) == ("re_engagement", "rule:returned_re_engagement")
        await h.event(uid, "session_start", t + 30 * HOUR_MS)  # success_event = session_start, 72 h window
        await h.learn(t + 30 * HOUR_MS)
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["reward"], o["source"], o["outcome"]) == (1.0, "event", "session_start")
    run(tmp_path, scenario, catalog=forced_rules_catalog())


def test_restart_applies_defaults_for_windows_that_closed_while_down(tmp_path: Path) -> None:
    ids: list[str] = []

    async def first(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("cy")
        await h.sessions("cy", [T0])
        ids.append((await h.ask("cy", T0 + MIN_MS)).decision_id)
        await h.learn(T0 + MIN_MS)  # seen (and the learner's state saved) before the stop
        assert ids[0] in h.learner.joiner
    run(tmp_path, first)

    async def second(h: Harness, engine: DecisionEngine) -> None:
        # the restarted learner waits for the decisions logged without outcome
        assert ids[0] in h.learner.joiner and ids[0] not in outcome_rows(h.db_path)
        await h.learn(T0 + 3 * DAY_MS)  # its first round: the window closed while it was down
        assert ids[0] not in h.learner.joiner
        assert outcome_rows(h.db_path)[ids[0]]["source"] == "default"
    run(tmp_path, second)


def test_a_success_event_stored_while_the_learner_was_down_still_rewards(tmp_path: Path) -> None:
    ids: list[str] = []

    async def first(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("flo")
        await h.sessions("flo", [T0])
        ids.append((await h.ask("flo", T0 + MIN_MS)).decision_id)
        await h.learn(T0 + MIN_MS)  # seen, and the learner's state saved
        await h.event("flo", "step_completed", T0 + 5 * MIN_MS, step_id="welcome")  # no learner round after
    run(tmp_path, first)

    async def second(h: Harness, engine: DecisionEngine) -> None:
        await h.learn(T0 + 6 * MIN_MS)  # the restarted learner reads on from its saved position
        o = outcome_rows(h.db_path)[ids[0]]
        assert (o["reward"], o["source"], o["timestamp_ms"]) == (1.0, "event", T0 + 5 * MIN_MS)
    run(tmp_path, second)


def test_erased_decisions_get_no_orphan_outcome(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("dee")
        await h.sessions("dee", [T0])
        r = await h.ask("dee", T0 + MIN_MS)
        await h.learn(T0 + MIN_MS)
        assert r.decision_id in h.learner.joiner
        await h.erase("dee", T0 + 2 * MIN_MS)
        assert not decision_rows(h.db_path) and len(h.learner.joiner) == 0
        await h.learn(T0 + 3 * DAY_MS)  # the window closed: no default reward for the erased decision
        assert await h.learner.joiner.sweep(T0 + 3 * DAY_MS) == 0
        assert outcome_rows(h.db_path) == {} and len(h.learner.joiner) == 0
        rep = await h.learner.joiner.report(r.decision_id, 1.0, "", T0)
        assert rep is None and outcome_rows(h.db_path) == {}
        with pytest.raises(ServiceError):  # ReportOutcome writes no orphan either
            await h.report(r.decision_id, 1.0, T0 + 3 * DAY_MS)
        assert outcome_rows(h.db_path) == {}
    run(tmp_path, scenario)


def test_only_the_latest_show_of_a_step_gets_the_credit(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("eve")
        await h.sessions("eve", [T0])
        first = await h.ask("eve", T0 + MIN_MS)
        second = await h.ask("eve", T0 + 5 * HOUR_MS)
        assert first.step.id == second.step.id == "welcome"
        await h.event("eve", "step_completed", T0 + 6 * HOUR_MS, step_id="welcome")
        await h.learn(T0 + 6 * HOUR_MS)
        out = outcome_rows(h.db_path)
        assert second.decision_id in out and first.decision_id not in out
        assert first.decision_id in h.learner.joiner  # its own window still runs; the sweep settles it
    run(tmp_path, scenario)


def test_the_sweep_grace_comes_from_the_catalog(tmp_path: Path) -> None:
    async def defaults(h: Harness, engine: DecisionEngine) -> None:
        assert h.learner.joiner.grace_ms == DEFAULT_GRACE_MS == 60_000
    run(tmp_path / "a", defaults)

    async def short(h: Harness, engine: DecisionEngine) -> None:
        assert h.learner.joiner.grace_ms == 2_000
        await h.consent("gil")
        await h.sessions("gil", [T0])
        r = await h.ask("gil", T0 + MIN_MS)
        deadline = T0 + MIN_MS + 24 * HOUR_MS
        await h.learn(deadline + 1_999)  # within the 2 s grace
        assert r.decision_id not in outcome_rows(h.db_path)
        await h.learn(deadline + 2_001)  # long before the default 60 s grace ends
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["source"], o["outcome"], o["timestamp_ms"]) == ("default", "no_success", deadline)
    rewards = {**demo_raw()["rewards"], "sweep_interval_seconds": 0.5, "grace_seconds": 2}
    run(tmp_path / "b", short, catalog=catalog_with(rewards=rewards))
