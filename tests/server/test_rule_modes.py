"""Rule modes in the decision engine, in process (real store, writer and pipeline; no gRPC): a proposing rule
boosts its step inside the bandit's distribution with exact logged probabilities, its outcomes reach the rule
monitor, a demoted rule stops firing, and the demotion survives a restart (outcome replay), a checkpoint
(engine state) and a pending boosted decision's outcome after a restart still reaches the monitor."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from server.base.reasons import boosted_rule
from server.decide.engine import DecisionEngine
from server.store.marks import read_mark
from tests.server.engine_support import DAY_MS, HOUR_MS, MIN_MS, Harness, decision_rows, demo_raw, run
from server.base.catalog import parse_catalog

RULE = "skipped_screens_core_benefits"


def catalog(min_outcomes: int = 10, **rule_keys):
    raw = demo_raw()
    for rule in raw["rules"]:
        if rule["name"] == RULE:
            rule.update({"min_outcomes_to_demote": min_outcomes, **rule_keys})
    return parse_catalog(raw)


def tailored_users(engine: DecisionEngine, n: int, prefix: str = "u") -> list[str]:
    out, i = [], 0
    while len(out) < n:
        if engine.assignment(f"{prefix}{i}")[2] == "tailored":
            out.append(f"{prefix}{i}")
        i += 1
    return out


async def skipper(h: Harness, uid: str, day: int) -> int:
    """A consistent user who skipped two screens: the core-benefits rule fires. Returns a time to ask at."""
    t = await h.consistent_user(uid, day=day) + DAY_MS
    for i in range(2):
        await h.event(uid, "screen_skipped", t + i * MIN_MS)
    return t + HOUR_MS


def test_a_proposing_rule_boosts_its_step_with_exact_probabilities(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        for i, uid in enumerate(tailored_users(engine, 12)):
            r = await h.ask(uid, await skipper(h, uid, i), surface="in_app")
            assert r.reason == f"boosted:{RULE}:core_benefits"
            row = decision_rows(h.db_path)[-1]
            probs = row["probabilities"]
            assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12)
            assert row["propensity"] == probs[r.step.id] == pytest.approx(r.propensity)
            assert probs["core_benefits"] >= 0.5  # the demo's boost
            assert set(probs) == set(row["eligible"]) and len(probs) > 1  # other steps stay possible
        assert engine.rule_monitor.stats[RULE].n == 0  # no outcome yet
    run(tmp_path, scenario, catalog=catalog())


def test_a_bad_proposing_rule_is_demoted_stops_firing_and_stays_demoted(tmp_path: Path) -> None:
    users: list[str] = []
    states: dict = {}

    async def first(h: Harness, engine: DecisionEngine) -> None:
        users.extend(tailored_users(engine, 42))
        pending = None
        for i, uid in enumerate(users[:40]):
            r = await h.ask(uid, await skipper(h, uid, i % 5), surface="in_app")
            if r.reason == "bandit":
                break  # demoted: the rule no longer fires
            assert boosted_rule(r.reason) == (RULE, "core_benefits")
            if i == 0:
                pending = r.decision_id  # left without outcome: its outcome comes after the restart
                continue
            # the rule's step never succeeds, any other step does: the rule is clearly worse
            await h.report(r.decision_id, 0.0 if r.step.id == "core_benefits" else 1.0, 0)
        assert engine.rule_monitor.demoted(RULE)
        assert engine.rule_monitor.stats[RULE].n in (10, 20)
        states["state"] = engine.to_state()
        states["stats"] = engine.rule_monitor.to_state()
        states["pending"] = pending

    run(tmp_path, first, catalog=catalog())

    async def restarted(h: Harness, engine: DecisionEngine) -> None:
        assert engine.rule_monitor.to_state() == states["stats"]  # rebuilt by replaying the outcomes
        h._ids = itertools.count(10**6)  # event ids not used before the restart (they would be duplicates)
        uid = users[40]
        r = await h.ask(uid, await skipper(h, uid, 6), surface="in_app")
        assert r.reason == "bandit"  # a demoted rule no longer boosts
        fresh = DecisionEngine.from_state(states["state"], h.pipeline, h.catalog)
        assert fresh.rule_monitor.to_state() == states["stats"]

    run(tmp_path, restarted, catalog=catalog())


def test_a_pending_boosted_decision_reaches_the_monitor_after_a_restart(tmp_path: Path) -> None:
    ids: list[str] = []

    async def first(h: Harness, engine: DecisionEngine) -> None:
        (uid,) = tailored_users(engine, 1)
        r = await h.ask(uid, await skipper(h, uid, 0), surface="in_app")
        assert boosted_rule(r.reason) is not None
        ids.append(r.decision_id)

    run(tmp_path, first, catalog=catalog(0))

    async def second(h: Harness, engine: DecisionEngine) -> None:
        assert engine.rule_monitor.stats[RULE].n == 0
        await h.report(ids[0], 1.0, 0)
        s = engine.rule_monitor.stats[RULE]
        assert (s.n, s.reward, s.demoted) == (1, 1.0, False)

    run(tmp_path, second, catalog=catalog(0))


def test_a_forced_rule_is_deterministic_and_not_monitored(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        assert RULE not in engine.rule_monitor.stats
        (uid,) = tailored_users(engine, 1)
        r = await h.ask(uid, await skipper(h, uid, 0), surface="in_app")
        assert (r.step.id, r.reason, r.propensity) == ("core_benefits", f"rule:{RULE}", 1.0)
        await h.report(r.decision_id, 0.0, 0)
        assert RULE not in engine.rule_monitor.stats

    raw = demo_raw()
    for rule in raw["rules"]:
        if rule["name"] == RULE:
            rule["mode"] = "force"
    run(tmp_path, scenario, catalog=parse_catalog(raw))


def test_a_resume_from_a_checkpoint_redraws_boosted_decisions_and_catches_the_monitor_up(tmp_path: Path) -> None:
    """State taken at a mark, then boosted decisions and outcomes: an engine restored from that state and
    brought up to the end of the log (``rebuild(after=mark)``) has the live engine's sampling RNG (boosted
    decisions take the bandit's draws) and rule statistics (including the demotion)."""
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        users = tailored_users(engine, 30)
        for i, uid in enumerate(users[:5]):
            r = await h.ask(uid, await skipper(h, uid, i % 5), surface="in_app")
            await h.report(r.decision_id, 0.0 if r.step.id == "core_benefits" else 1.0, 0)
        state = engine.to_state()
        mark = await h.writer.call(read_mark)
        for i, uid in enumerate(users[5:]):
            r = await h.ask(uid, await skipper(h, uid, i % 5), surface="in_app")
            await h.report(r.decision_id, 0.0 if r.step.id == "core_benefits" else 1.0, 0)
        assert engine.rule_monitor.demoted(RULE) and boosted_rule(r.reason) is None  # demoted along the way
        resumed = DecisionEngine(h.pipeline, h.catalog, rebuild=False)
        resumed.load_state(state)
        counts = resumed.rebuild(after=mark)
        assert counts["redrawn"] >= 20  # the boosted decisions after the mark were drawn again
        assert resumed._rng.bit_generator.state == engine._rng.bit_generator.state
        assert resumed.rule_monitor.to_state() == engine.rule_monitor.to_state()

    run(tmp_path, scenario, catalog=catalog())


def test_an_erasure_takes_the_persons_trials_out_of_the_rule_statistics(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        users = tailored_users(engine, 4)
        for i, uid in enumerate(users):
            r = await h.ask(uid, await skipper(h, uid, i), surface="in_app")
            assert boosted_rule(r.reason) is not None
            await h.report(r.decision_id, 1.0, 0)
        before = engine.rule_monitor.stats[RULE]
        assert before.n == 4
        await h.pipeline.erase(users[0])
        after = engine.rule_monitor.stats[RULE]
        assert after.n == 3 and after.reward == pytest.approx(3.0)
        # what a restart rebuilds from the log (the person's rows are gone) is the same
        fresh = DecisionEngine(h.pipeline, h.catalog)
        for name in ("n", "rule_shown", "looks", "demoted"):
            assert getattr(fresh.rule_monitor.stats[RULE], name) == getattr(after, name), name
        for name in ("sum_d", "sum_d2", "reward", "rule_value"):
            assert getattr(fresh.rule_monitor.stats[RULE], name) == pytest.approx(getattr(after, name), abs=1e-9)

    run(tmp_path, scenario, catalog=catalog(0))
