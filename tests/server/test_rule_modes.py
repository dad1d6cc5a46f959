"""Rule modes in the decision engine and the learner, in process (real store, writer, pipeline and learner; no
gRPC): a proposing rule boosts its step inside the bandit's distribution with exact logged probabilities, its
outcomes reach the learner's rule monitor, a demoted rule travels to the engine in the snapshot and stops firing,
and the demotion survives a restart (the learner's saved state, or its relearning from the outcome log); a
pending boosted decision's outcome after a restart still reaches the monitor, and an erasure takes the person's
trials out."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from server.base.catalog import parse_catalog
from server.base.reasons import boosted_rule
from server.decide.engine import DecisionEngine
from server.learn.learner import Learner
from server.store import learning_log as feeds
from tests.server.engine_support import DAY_MS, HOUR_MS, MIN_MS, Harness, decision_rows, demo_raw, run

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


async def relearned(h: Harness, now_ms: int) -> Learner:
    """A learner started without saved state (as after a lost state): it learns every outcome from the log."""
    await h.writer.call(feeds.drop_learner_state)
    fresh = Learner(h.store, h.writer, h.catalog, h.pipeline.pseudonym)
    await fresh.step(now_ms)
    fresh.close()
    return fresh


def test_a_proposing_rule_boosts_its_step_with_exact_probabilities(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        for i, uid in enumerate(tailored_users(engine, 12)):
            t = await skipper(h, uid, i)
            first = t if i == 0 else first
            r = await h.ask(uid, t, surface="in_app")
            assert r.reason == f"boosted:{RULE}:core_benefits"
            row = decision_rows(h.db_path)[-1]
            probs = row["probabilities"]
            assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12)
            assert row["propensity"] == probs[r.step.id] == pytest.approx(r.propensity)
            assert probs["core_benefits"] >= 0.5  # the demo's boost
            assert set(probs) == set(row["eligible"]) and len(probs) > 1  # other steps stay possible
        await h.learn(first)  # before any reward window closed (a default reward is an outcome too)
        assert h.learner.rule_monitor.stats[RULE].n == 0  # no outcome yet
    run(tmp_path, scenario, catalog=catalog())


def test_a_bad_proposing_rule_is_demoted_stops_firing_and_stays_demoted(tmp_path: Path) -> None:
    users: list[str] = []
    states: dict = {}

    async def first(h: Harness, engine: DecisionEngine) -> None:
        users.extend(tailored_users(engine, 42))
        for i, uid in enumerate(users[:40]):
            t = await skipper(h, uid, i % 5)
            r = await h.ask(uid, t, surface="in_app")
            if r.reason == "bandit":
                break  # demoted: the rule no longer fires
            assert boosted_rule(r.reason) == (RULE, "core_benefits")
            assert RULE not in engine.demoted_rules
            # the rule's step never succeeds, any other step does: the rule is clearly worse
            await h.report(r.decision_id, 0.0 if r.step.id == "core_benefits" else 1.0, t + MIN_MS)
            await h.learn(t + MIN_MS)  # the learner learns the outcome; the engine loads its snapshot
        else:
            raise AssertionError("the rule was never demoted")
        monitor = h.learner.rule_monitor
        assert monitor.demoted(RULE) and engine.demoted_rules == {RULE}
        assert monitor.stats[RULE].n in (10, 20)
        await h.learner.save(t + MIN_MS)
        states["stats"] = monitor.to_state()

    run(tmp_path, first, catalog=catalog())

    async def restarted(h: Harness, engine: DecisionEngine) -> None:
        assert h.learner.rule_monitor.to_state() == states["stats"]  # the learner's saved state
        assert engine.demoted_rules == {RULE}  # from the published snapshot
        h._ids = itertools.count(10**6)  # event ids not used before the restart (they would be duplicates)
        uid = users[40]
        t = await skipper(h, uid, 6)
        r = await h.ask(uid, t, surface="in_app")
        assert r.reason == "bandit"  # a demoted rule no longer boosts
        fresh = await relearned(h, t)  # without its saved state, the learner relearns the same from the log
        assert fresh.rule_monitor.to_state() == states["stats"]
        assert fresh.rule_monitor.demoted_rules == {RULE}

    run(tmp_path, restarted, catalog=catalog())


def test_a_pending_boosted_decision_reaches_the_monitor_after_a_restart(tmp_path: Path) -> None:
    ids: list[tuple[str, int]] = []

    async def first(h: Harness, engine: DecisionEngine) -> None:
        (uid,) = tailored_users(engine, 1)
        t = await skipper(h, uid, 0)
        r = await h.ask(uid, t, surface="in_app")
        assert boosted_rule(r.reason) is not None
        await h.learn(t)  # the learner saw the decision (it waits for its outcome) and saved its state
        ids.append((r.decision_id, t))

    run(tmp_path, first, catalog=catalog(0))

    async def second(h: Harness, engine: DecisionEngine) -> None:
        decision_id, t = ids[0]
        assert h.learner.rule_monitor.stats[RULE].n == 0
        await h.report(decision_id, 1.0, t + MIN_MS)
        await h.learn(t + MIN_MS)
        s = h.learner.rule_monitor.stats[RULE]
        assert (s.n, s.reward, s.demoted) == (1, 1.0, False)

    run(tmp_path, second, catalog=catalog(0))


def test_a_forced_rule_is_deterministic_and_not_monitored(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        assert RULE not in h.learner.rule_monitor.stats
        (uid,) = tailored_users(engine, 1)
        t = await skipper(h, uid, 0)
        r = await h.ask(uid, t, surface="in_app")
        assert (r.step.id, r.reason, r.propensity) == ("core_benefits", f"rule:{RULE}", 1.0)
        await h.report(r.decision_id, 0.0, t + MIN_MS)
        await h.learn(t + MIN_MS)
        assert h.learner.stats.learned >= 1  # the bandit learned the outcome, the monitor did not
        assert RULE not in h.learner.rule_monitor.stats

    raw = demo_raw()
    for rule in raw["rules"]:
        if rule["name"] == RULE:
            rule["mode"] = "force"
    run(tmp_path, scenario, catalog=parse_catalog(raw))


def test_an_erasure_takes_the_persons_trials_out_of_the_rule_statistics(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        users = tailored_users(engine, 4)
        for i, uid in enumerate(users):
            t = await skipper(h, uid, i)
            r = await h.ask(uid, t, surface="in_app")
            assert boosted_rule(r.reason) is not None
            await h.report(r.decision_id, 1.0, t + MIN_MS)
        await h.learn(t + MIN_MS)
        before = h.learner.rule_monitor.stats[RULE]
        assert (before.n, before.reward) == (4, 4.0)
        await h.erase(users[0], t + MIN_MS)
        after = h.learner.rule_monitor.stats[RULE]
        assert after.n == 3 and after.reward == pytest.approx(3.0)
        # what a learner without saved state relearns from the log (the person's rows are gone) is the same
        fresh = (await relearned(h, t + MIN_MS)).rule_monitor.stats[RULE]
        for name in ("n", "rule_shown", "looks", "demoted"):
            assert getattr(fresh, name) == getattr(after, name), name
        for name in ("sum_d", "sum_d2", "reward", "rule_value"):
            assert getattr(fresh, name) == pytest.approx(getattr(after, name), abs=1e-9)

    run(tmp_path, scenario, catalog=catalog(0))
