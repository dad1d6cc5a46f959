"""Reward joining: success events within the window (by step or by decision_id), dismissals, the default
reward when the window closes (sweep, grace, and after a restart), one outcome per decision, no orphan
outcome for an erased user, and the bandit learning from each joined outcome."""
from __future__ import annotations

import asyncio
from pathlib import Path

from server.decide.engine import DecisionEngine
from server.learn.rewards import DEFAULT_GRACE_MS
from tests.server.engine_support import (Scenario, run, forced_rules_catalog, DAY_MS, HOUR_MS, MIN_MS, T0, Harness, catalog_with, decision_rows,
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
        assert r.step.id == "welcome" and r.decision_id in engine.joiner
        await h.event("amy", "step_completed", T0 + 5 * MIN_MS, step_id="welcome")
        await engine.joiner.drain()
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["reward"], o["source"], o["outcome"], o["timestamp_ms"]) == (1.0, "event", "completed", T0 + 5 * MIN_MS)
        assert o["user_pseudo"] == h.pipeline.pseudonym("amy")
        assert r.decision_id not in engine.joiner
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
        await engine.joiner.drain()
        assert r.decision_id not in outcome_rows(h.db_path)
        # the sweep closes the window only after deadline + grace
        deadline = T0 + MIN_MS + 24 * HOUR_MS
        assert await engine.joiner.sweep(deadline + DEFAULT_GRACE_MS - 1) == 0
        assert await engine.joiner.sweep(deadline + DEFAULT_GRACE_MS + 1) == 1
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["reward"], o["source"], o["outcome"], o["timestamp_ms"]) == (0.0, "default", "no_success", deadline)
        assert len(engine.joiner) == 0
    run(tmp_path, scenario)


def test_event_carrying_the_decision_id_and_dismissal(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        uid = tailored(engine)
        t = await h.consistent_user(uid)
        a = await h.ask(uid, t + DAY_MS, surface="in_app")
        b = await h.ask(uid, t + DAY_MS + HOUR_MS, surface="email")
        assert a.reason == b.reason == "bandit"
        learned = engine.learned
        # success of a (by decision_id, even with no step_id on the event); dismissal of b
        step_a = h.catalog.step(a.step.id)
        await h.event(uid, "step_dismissed", t + DAY_MS + HOUR_MS + MIN_MS, decision_id="f" * 32)  # unknown id
        await h.event(uid, step_a.success_event, t + DAY_MS + 2 * HOUR_MS, decision_id=a.decision_id,
                      feature=step_a.feature or "")
        await h.event(uid, "step_dismissed", t + DAY_MS + 3 * HOUR_MS, step_id=b.step.id)
        await engine.joiner.drain()
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
        await engine.joiner.drain()
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["reward"], o["source"], o["outcome"]) == (1.0, "event", "session_start")
    run(tmp_path, scenario, catalog=forced_rules_catalog())


def test_restart_applies_defaults_for_windows_that_closed_while_down(tmp_path: Path) -> None:
    ids: list[str] = []

    async def first(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("cy")
        await h.sessions("cy", [T0])
        ids.append((await h.ask("cy", T0 + MIN_MS)).decision_id)
    run(tmp_path, first)

    async def second(h: Harness, engine: DecisionEngine) -> None:
        assert ids[0] in engine.joiner
        await engine.start()  # the first sweep runs at once (T0 is long past)
        for _ in range(100):
            if ids[0] not in engine.joiner:
                break
            await asyncio.sleep(0.01)
        assert outcome_rows(h.db_path)[ids[0]]["source"] == "default"
    run(tmp_path, second)


def test_erased_decisions_get_no_orphan_outcome(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("dee")
        await h.sessions("dee", [T0])
        r = await h.ask("dee", T0 + MIN_MS)
        await h.pipeline.erase("dee")
        assert not decision_rows(h.db_path)
        assert await engine.joiner.sweep(T0 + 3 * DAY_MS) == 0
        assert outcome_rows(h.db_path) == {} and len(engine.joiner) == 0
        rep = await engine.joiner.report(r.decision_id, 1.0, "", T0)
        assert rep is None and outcome_rows(h.db_path) == {}
    run(tmp_path, scenario)


def test_only_the_latest_show_of_a_step_gets_the_credit(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("eve")
        await h.sessions("eve", [T0])
        first = await h.ask("eve", T0 + MIN_MS)
        second = await h.ask("eve", T0 + 5 * HOUR_MS)
        assert first.step.id == second.step.id == "welcome"
        await h.event("eve", "step_completed", T0 + 6 * HOUR_MS, step_id="welcome")
        await engine.joiner.drain()
        out = outcome_rows(h.db_path)
        assert second.decision_id in out and first.decision_id not in out
        assert first.decision_id in engine.joiner  # its own window still runs; the sweep settles it
    run(tmp_path, scenario)


def test_the_sweep_timing_comes_from_the_catalog(tmp_path: Path) -> None:
    async def defaults(h: Harness, engine: DecisionEngine) -> None:
        assert (engine.sweep_interval_s, engine.joiner.grace_ms) == (5.0, DEFAULT_GRACE_MS) == (5.0, 60_000)
    run(tmp_path / "a", defaults)

    async def short(h: Harness, engine: DecisionEngine) -> None:
        assert (engine.sweep_interval_s, engine.joiner.grace_ms) == (0.5, 2_000)
        await h.consent("gil")
        await h.sessions("gil", [T0])
        r = await h.ask("gil", T0 + MIN_MS)
        deadline = T0 + MIN_MS + 24 * HOUR_MS
        assert await engine.joiner.sweep(deadline + 1_999) == 0  # within the 2 s grace
        assert await engine.joiner.sweep(deadline + 2_001) == 1  # long before the default 60 s grace ends
        o = outcome_rows(h.db_path)[r.decision_id]
        assert (o["source"], o["outcome"], o["timestamp_ms"]) == ("default", "no_success", deadline)
    rewards = {**demo_raw()["rewards"], "sweep_interval_seconds": 0.5, "grace_seconds": 2}
    run(tmp_path / "b", short, catalog=catalog_with(rewards=rewards))
