"""Decision engine scenarios, in process (real store, writer and pipeline; no gRPC): consent, the static core
flow, cooldowns and caps, rules, experiment arms, the bandit's logged probabilities, the decision log rows,
restart rebuild and a learner restarted from its saved state."""
from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

import uuid

from server.base.ids import new_decision_id
from server.decide.engine import DecisionEngine
from server.decide.engine_api import ServiceError
from server.learn.learner import Learner
from server.store.user_state import read_shows
from tests.server.engine_support import (DAY_MS, HOUR_MS, MIN_MS, T0, Harness, Scenario, catalog_with,
                                         decision_rows, forced_rules_catalog, run,
                                         outcome_rows)

def users_in(engine: DecisionEngine, kind: str, n: int = 1, prefix: str = "u") -> list[str]:
    """The first ``n`` user ids ``<prefix><i>`` the experiment puts in an arm of ``kind``."""
    out = []
    i = 0
    while len(out) < n:
        uid = f"{prefix}{i}"
        if engine.assignment(uid)[2] == kind:
            out.append(uid)
        i += 1
    return out


def test_without_consent_only_core_steps_are_shown(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        r = await h.ask("stranger", T0)  # no consent at all: no profile, the first core step
        assert (r.has_step, r.step.id, r.reason, r.propensity) == (True, "welcome", "no_consent", 1.0)
        assert list(r.segments) == []
        await h.consent("tracker", "tracking")  # tracking only: core steps in order, then nothing
        await h.sessions("tracker", [T0, T0 + HOUR_MS, T0 + DAY_MS])
        t = T0 + DAY_MS + MIN_MS
        for step in h.catalog.core_order:
            r = await h.ask("tracker", t)
            assert (r.step.id, r.reason) == (step, "no_consent")
            await h.event("tracker", "step_completed", t + MIN_MS, step_id=step)
            t += 31 * MIN_MS
        r = await h.ask("tracker", t + DAY_MS)
        assert (r.has_step, r.reason) == (False, "no_consent")
    run(tmp_path, scenario)


def test_core_steps_first_in_order_and_repeat_only_after_cooldown(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("ann")
        await h.sessions("ann", [T0])
        r = await h.ask("ann", T0 + MIN_MS)
        assert (r.step.id, r.reason, r.propensity) == ("welcome", "core", 1.0)
        # not completed: blocked by the min gap, then by welcome's 4 h cooldown
        r = await h.ask("ann", T0 + 2 * MIN_MS)
        assert (r.has_step, r.reason) == (False, "capped")
        r = await h.ask("ann", T0 + 3 * HOUR_MS)
        assert (r.has_step, r.reason) == (False, "capped")
        r = await h.ask("ann", T0 + 4 * HOUR_MS + 2 * MIN_MS)
        assert (r.step.id, r.reason) == ("welcome", "core")
        # welcome's max_per_day is 2: a third show within 24 h is capped even after the cooldown
        r = await h.ask("ann", T0 + 8 * HOUR_MS + 3 * MIN_MS)
        assert (r.has_step, r.reason) == (False, "capped")
        await h.event("ann", "step_completed", T0 + 9 * HOUR_MS, step_id="welcome")
        r = await h.ask("ann", T0 + 10 * HOUR_MS)
        assert (r.step.id, r.reason) == ("profile_setup", "core")
        # an email surface cannot show the in_app core step, and personalized steps wait for the core flow
        r = await h.ask("ann", T0 + 11 * HOUR_MS, surface="email")
        assert (r.has_step, r.reason) == (False, "none_eligible")
    run(tmp_path, scenario)


def test_generic_before_consistency_then_bandit_for_tailored(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (uid,) = users_in(engine, "tailored")
        await h.consent(uid)
        await h.sessions(uid, [T0 + HOUR_MS])  # one session: not consistent yet
        t = await h.finish_core(uid, T0 + 2 * HOUR_MS)
        r = await h.ask(uid, t + DAY_MS)
        assert (r.reason, r.propensity, r.arm) == ("generic", 1.0, "tailored")
        assert r.step.kind == "personalized"
        await h.sessions(uid, [t + DAY_MS + HOUR_MS, t + DAY_MS + 2 * HOUR_MS])  # 3 sessions on 2 days
        r = await h.ask(uid, t + DAY_MS + 3 * HOUR_MS)
        assert r.reason == "bandit" and r.has_step and 0.0 < r.propensity <= 1.0
        assert "consistent" in r.segments
        row = decision_rows(h.db_path)[-1]
        assert row["decision_id"] == r.decision_id and row["step_id"] == r.step.id
        assert math.isclose(sum(row["probabilities"].values()), 1.0, abs_tol=1e-12)
        assert row["probabilities"][r.step.id] == r.propensity == row["propensity"]
        assert set(row["probabilities"]) == set(row["eligible"])
        # the probabilities are those of the policy for the logged context, over the eligible steps
        x = engine.space.vector(row["context"])
        arms = [engine.arm_index[s] for s in row["eligible"]]
        expected = engine.decider.exploration.probabilities_list(engine.decider.policy.scores(x, arms).tolist())
        assert [row["probabilities"][s] for s in row["eligible"]] == expected
    run(tmp_path, scenario)


def test_experiment_arms_generic_and_holdout(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (g,) = users_in(engine, "generic")
        (ho,) = users_in(engine, "holdout")
        for uid in (g, ho):
            t = await h.consistent_user(uid)
            r = await h.ask(uid, t + DAY_MS)
            assert r.experiment == "tailored_vs_generic"
            if uid == g:
                assert (r.reason, r.arm, r.propensity) == ("generic", "generic", 1.0)
                row = decision_rows(h.db_path)[-1]
                assert row["probabilities"][r.step.id] == 1.0 and sum(row["probabilities"].values()) == 1.0
            else:
                assert (r.has_step, r.reason, r.arm) == (False, "holdout", "holdout")
    run(tmp_path, scenario)


def test_generic_order_prefers_steps_not_shown_yet(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (g,) = users_in(engine, "generic")
        t = await h.consistent_user(g)
        seen = []
        for day in range(1, 4):
            r = await h.ask(g, t + day * DAY_MS, surface="in_app")
            assert r.reason == "generic"
            seen.append(r.step.id)
        assert len(set(seen)) == 3  # a rotation, not the same step again after its cooldown
        in_app = [s.id for s in h.catalog.personalized_steps if s.channel == "in_app"]
        assert seen == in_app[:3]
    run(tmp_path, scenario)


@pytest.mark.parametrize("trigger, step, rule", [
    ("explore", "advanced_tip_reports", "explored_feature_advanced_tip"),
    ("skip", "core_benefits", "skipped_screens_core_benefits"),
    ("return", "re_engagement", "returned_re_engagement"),
])
def test_forced_rules_fire_deterministically(tmp_path: Path, trigger: str, step: str, rule: str) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (uid,) = users_in(engine, "tailored")
        t = await h.consistent_user(uid)
        t += DAY_MS  # a fresh day for the caps
        if trigger == "explore":
            for i in range(5):
                await h.event(uid, "feature_used", t + i * MIN_MS, feature="reports")
        elif trigger == "skip":
            for i in range(2):
                await h.event(uid, "screen_skipped", t + i * MIN_MS)
        else:
            t += 2 * DAY_MS
            await h.event(uid, "session_start", t)  # back after more than 24 h
        r = await h.ask(uid, t + HOUR_MS)
        assert (r.step.id, r.reason, r.propensity) == (step, f"rule:{rule}", 1.0)
        row = decision_rows(h.db_path)[-1]
        assert row["probabilities"][step] == 1.0 and sum(row["probabilities"].values()) == 1.0
        # once completed the rule no longer shows it (a guardrail blocks it); something else comes
        await h.event(uid, "step_completed", t + 2 * HOUR_MS, step_id=step)
        r = await h.ask(uid, t + 2 * DAY_MS)
        assert r.step.id != step
    run(tmp_path, scenario, catalog=forced_rules_catalog())


def test_rule_priority_and_no_rules_for_the_generic_arm(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (uid,) = users_in(engine, "tailored")
        (g,) = users_in(engine, "generic")
        for u in (uid, g):
            t = await h.consistent_user(u)
            t += DAY_MS
            for i in range(5):
                await h.event(u, "feature_used", t + i * MIN_MS, feature="automations")
            for i in range(2):
                await h.event(u, "screen_skipped", t + (10 + i) * MIN_MS)
            r = await h.ask(u, t + HOUR_MS, surface="in_app")
            if u == uid:  # screens_skipped (priority 20) beats feature_explored (10)
                assert (r.step.id, r.reason) == ("core_benefits", "rule:skipped_screens_core_benefits")
            else:
                assert r.reason == "generic"
    run(tmp_path, scenario, catalog=forced_rules_catalog())


def test_decision_rows_are_pseudonymous_and_complete(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        await h.consent("zoe@example.com")
        await h.sessions("zoe@example.com", [T0])
        r = await h.ask("zoe@example.com", T0 + MIN_MS, surface="in_app", device_type="mobile")
        row = decision_rows(h.db_path)[-1]
        assert row["user_pseudo"] == h.pipeline.pseudonym("zoe@example.com")
        assert "zoe" not in str(row)
        assert row["decision_id"] == r.decision_id and len(r.decision_id) == 32
        assert (row["timestamp_ms"], row["surface"], row["step_id"], row["reason"]) == \
            (T0 + MIN_MS, "in_app", "welcome", "core")
        assert row["policy_version"] == r.policy_version == engine.policy_version
        assert r.policy_version.startswith(h.catalog.version)
        assert (row["experiment"], row["arm"]) == (r.experiment, r.arm) != ("", "")
        assert row["eligible"] == ["welcome"] and row["probabilities"] == {"welcome": 1.0}
        assert row["context"]["request_mobile"] == 1.0 and set(row["context"]) == set(engine.space.names)
        assert row["reward_deadline_ms"] == T0 + MIN_MS + 24 * HOUR_MS
    run(tmp_path, scenario)


def test_without_experiment_every_user_is_tailored(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        assert engine.assignment("anyone") == ("", "", "tailored")
        t = await h.consistent_user("kim")
        r = await h.ask("kim", t + DAY_MS)
        assert (r.experiment, r.arm, r.reason) == ("", "", "bandit")
    run(tmp_path, scenario, catalog=catalog_with(experiments=None))


def test_report_outcome_once_and_unknown_decision(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (uid,) = users_in(engine, "tailored")
        t = await h.consistent_user(uid)
        r = await h.ask(uid, t + DAY_MS)
        assert r.reason == "bandit"
        before = engine.decider.policy.n_updates
        first = await h.report(r.decision_id, 1.0, t + DAY_MS + MIN_MS)
        assert (first.recorded, first.duplicate) == (True, False)
        assert await h.learn(t + DAY_MS + MIN_MS)  # the learner learns it and publishes; the engine loads that
        assert engine.decider.policy.n_updates == before + 1 and engine.learned == 1
        assert engine.policy_version.endswith(f"@{h.learner.version}")
        again = await h.report(r.decision_id, 0.0, t + DAY_MS + 2 * MIN_MS)
        assert (again.recorded, again.duplicate) == (False, True)
        await h.learn(t + DAY_MS + 2 * MIN_MS)
        assert engine.decider.policy.n_updates == before + 1 and engine.learned == 1
        assert outcome_rows(h.db_path)[r.decision_id]["reward"] == 1.0
        with pytest.raises(ServiceError) as err:
            await h.report("0" * 32, 1.0, t)
        assert err.value.code == "NOT_FOUND" and "decision_id" in str(err.value)
    run(tmp_path, scenario)


def test_restart_rebuilds_caps_pending_rewards_and_the_bandit(tmp_path: Path) -> None:
    state: dict = {}

    async def first(h: Harness, engine: DecisionEngine) -> None:
        users = users_in(engine, "tailored", 6)
        rng = np.random.default_rng(3)
        for i, uid in enumerate(users):
            t = await h.consistent_user(uid, day=i)
            for k in range(3):
                r = await h.ask(uid, t + DAY_MS + k * 2 * HOUR_MS)
                if r.has_step and (i + k) % 2 == 0:
                    await h.report(r.decision_id, float(rng.random() < 0.5), t + DAY_MS + k * 2 * HOUR_MS + 1)
            state.setdefault("last", {})[uid] = t + DAY_MS + 4 * HOUR_MS
            await h.learn(t + DAY_MS + 4 * HOUR_MS + 2)
        await h.learner.save(state["last"][users[-1]] + 2)  # as the learner task does when the server stops
        state["policy"] = engine.decider.policy.to_state()
        state["learned"] = engine.learned
        state["pending"] = len(h.learner.joiner)
        state["users"] = users

    h = run(tmp_path, first)
    assert state["learned"] > 0 and state["pending"] > 0

    async def second(h2: Harness, engine: DecisionEngine) -> None:
        # the engine starts with the last published models, the learner continues from its saved state
        for learned, policy in ((engine.learned, engine.decider.policy), (h2.learner.stats.learned,
                                                                          h2.learner.decider.policy)):
            assert learned == state["learned"]
            p = policy.to_state()
            np.testing.assert_allclose(p["A_inv"], state["policy"]["A_inv"], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(p["b"], state["policy"]["b"], rtol=1e-9, atol=1e-12)
        assert len(h2.learner.joiner) == state["pending"]
        # the caps still count the shows made before the restart: 3 core + 1 shown within 24 h, total cap 4
        uid = state["users"][0]
        r = await h2.ask(uid, state["last"][uid])
        assert (r.has_step, r.reason) == (False, "capped")
    run(tmp_path, second)


NEVER = 10**15  # a save interval longer than any test's clock


def test_a_learner_restarted_from_its_saved_state_continues_exactly(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        (a, b) = users_in(engine, "tailored", 2)
        t = await h.consistent_user(a)
        r = await h.ask(a, t + DAY_MS)
        await h.report(r.decision_id, 1.0, t + DAY_MS + 1)
        await h.learn(t + DAY_MS + 1)
        await h.learner.save(t + DAY_MS + 1)
        assert h.learner.stats.learned == 1
        restarted = Learner(h.store, h.writer, h.catalog, h.pipeline.pseudonym, save_interval_ms=NEVER)
        restarted.open()
        x = engine.space.vector(decision_rows(h.db_path)[-1]["context"])
        assert restarted.decider.policy.scores(x).tolist() == h.learner.decider.policy.scores(x).tolist()
        assert restarted.stats.learned == 1 and restarted.pos == h.learner.pos
        # more outcomes: the restarted learner ends where the one that never stopped ends
        t2 = await h.consistent_user(b, day=3)
        r2 = await h.ask(b, t2 + DAY_MS)
        await h.report(r2.decision_id, 0.0, t2 + DAY_MS + 1)
        await h.learn(t2 + DAY_MS + 1)
        await restarted.step(t2 + DAY_MS + 1)
        assert restarted.stats.learned == h.learner.stats.learned == 2
        assert restarted.decider.policy.scores(x).tolist() == h.learner.decider.policy.scores(x).tolist()
        assert restarted.pos == h.learner.pos
        restarted.close()
        # the shown history the caps count is a row of the store: 3 core steps + the bandit's
        assert sum(len(v) for v in read_shows(h.store, h.pipeline.pseudonym(a)).shows.values()) == 4
        # a state saved for another bandit is not used: that learner learns every outcome from the log
        other = Learner(h.store, h.writer, catalog_with(bandit={"algorithm": "ridge"}), h.pipeline.pseudonym)
        other.open()
        assert other.stats.learned == 0 and other.pos.outcomes == 0
        await other.step(t2 + DAY_MS + 1)
        assert other.stats.learned == 2
        other.close()
    # (two learners side by side only here: neither saves, which would prune the change rows the other reads)
    run(tmp_path, scenario, learner_kw={"save_interval_ms": NEVER})


def test_decision_ids_are_uuid7_hex_ordered_by_their_time() -> None:
    ids = [new_decision_id(1_700_000_000_000 + i // 100) for i in range(2000)]
    assert len(set(ids)) == 2000
    for h in ids[:200]:
        u = uuid.UUID(hex=h)
        assert (u.version, u.variant, u.hex) == (7, uuid.RFC_4122, h)
    by_ms = [h[:12] for h in ids]
    assert by_ms == sorted(by_ms) and int(ids[-1][:12], 16) == 1_700_000_000_019


def test_decisions_of_one_loop_iteration_share_one_writer_job(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        users = [f"c{i}" for i in range(20)]
        before = engine.logger.batches
        answers = await asyncio.gather(*(h.ask(u, T0) for u in users))
        assert engine.logger.batches - before <= 2
        assert {r.decision_id for r in answers} == {row["decision_id"] for row in decision_rows(h.db_path)}
    run(tmp_path, scenario)


def test_rule_conditions() -> None:
    from server.base.catalog import load_catalog
    from server.ingest.profiles import Profile
    from server.decide.rules import first_firing, returned_after_inactive
    rules = load_catalog(None).rules_by_priority()
    p = Profile("u", first_seen_ms=T0, features_used={"reports": 5, "automations": 7, "boards": 9})
    every = {"advanced_tip_reports", "advanced_tip_automations", "core_benefits", "re_engagement"}
    assert first_firing(rules, p, every, T0).step_id == "advanced_tip_automations"  # most used with a tip
    assert first_firing(rules, p, every - {"advanced_tip_automations"}, T0).step_id == "advanced_tip_reports"
    p.features_used = {"reports": 4}
    assert first_firing(rules, p, every, T0) is None
    # a return after 24 h: the latest event, or the latest session followed by more events; only while recent
    p.last_seen_ms, p.previous_seen_ms = T0 + 30 * HOUR_MS, T0
    assert returned_after_inactive(p, 24 * HOUR_MS, T0 + 31 * HOUR_MS)
    assert not returned_after_inactive(p, 24 * HOUR_MS, T0 + 60 * HOUR_MS)
    p.last_seen_ms, p.previous_seen_ms = T0 + 30 * HOUR_MS + 5, T0 + 30 * HOUR_MS
    p.session_starts_ms = [T0, T0 + 30 * HOUR_MS]
    assert returned_after_inactive(p, 24 * HOUR_MS, T0 + 31 * HOUR_MS)
    p.session_starts_ms = [T0 + 20 * HOUR_MS, T0 + 30 * HOUR_MS]
    assert not returned_after_inactive(p, 24 * HOUR_MS, T0 + 31 * HOUR_MS)
    p.screens_skipped = 2
    assert first_firing(rules, p, every, T0 + 31 * HOUR_MS).step_id == "core_benefits"


def test_remembered_assignments_are_the_assigners(tmp_path: Path) -> None:
    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        for i in range(300):
            subject = f"user-{i}"
            a = engine.assigner.assignment(subject)
            expected = ("", "", "tailored") if a is None else (a.experiment, a.arm, a.kind)
            assert engine.assignment(subject) == expected
            assert engine.assignment(subject) == expected  # the remembered answer
        assert {engine.assignment(f"user-{i}")[2] for i in range(300)} >= {"tailored", "generic", "holdout"}
    run(tmp_path, scenario)
