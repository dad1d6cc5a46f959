"""Property-based tests of the decision engine (hypothesis): random event sequences, consent changes,
request times and surfaces for users of every experiment arm, checked against an independent model of what
each user did, and against the decision rows read back from the database:

- core steps always first and in order; completed steps never shown again;
- no personalized decision (rule or bandit) before the consistency threshold, no personalized step without
  personalization consent, none at all for the holdout arm, never the bandit or a rule for the generic arm;
- caps never exceeded (per step, per channel and total per rolling 24 h), min gap and cooldowns respected;
- the probabilities over the eligible steps sum to 1, the logged propensity is the chosen step's, and for
  the bandit they are exactly what the policy computes for the logged context.
"""
from __future__ import annotations

import asyncio
import math
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server.base.catalog import load_catalog
from server.base.reasons import boosted_rule
from server.learn.segment_model import distinct_days
from tests.server.engine_support import DAY_MS, HOUR_MS, MIN_MS, T0, Harness, decision_rows

CATALOG = load_catalog(None)
STEP_IDS = list(CATALOG.step_ids)
FEATURES = ["reports", "automations", "integrations", "dashboards", "boards"]
DELTAS = [0, MIN_MS, 10 * MIN_MS, 31 * MIN_MS, 2 * HOUR_MS, 5 * HOUR_MS, 13 * HOUR_MS, 25 * HOUR_MS, 3 * DAY_MS]
N_USERS = 4  # tailored, generic, holdout, and one that never consents

delta = st.sampled_from(DELTAS)
user = st.integers(0, N_USERS - 1)
action = st.one_of(
    st.tuples(st.just("ask"), user, st.sampled_from(["", "", "in_app", "email", "push"]), delta),
    st.tuples(st.just("ask"), user, st.just(""), delta),
    st.tuples(st.just("burst"), user, st.sampled_from(["", "in_app"]), delta),
    st.tuples(st.just("day"), user, st.booleans(), delta),
    st.tuples(st.just("session"), user, delta),
    st.tuples(st.just("complete"), user, st.sampled_from(STEP_IDS), delta),
    st.tuples(st.just("complete_shown"), user, delta),
    st.tuples(st.just("feature"), user, st.sampled_from(FEATURES), st.integers(1, 6), delta),
    st.tuples(st.just("skip"), user, delta),
    st.tuples(st.just("dismiss"), user, st.sampled_from(STEP_IDS), delta),
    st.tuples(st.just("personalization"), user, st.booleans(), delta),
    st.tuples(st.just("report"), user, st.floats(0.0, 1.0), delta),
)


@dataclass
class Model:
    """What the test knows a user did (independently of the engine)."""

    tracking: bool
    personal: bool
    sessions: list[int] = field(default_factory=list)
    completed: dict[str, int] = field(default_factory=dict)
    last_shown: str = ""
    last_decision: str = ""


@dataclass(frozen=True)
class Snapshot:
    user: int
    personal: bool
    completed: frozenset[str]
    consistent: bool


def pick_users(engine) -> list[str]:
    out = []
    for kind in ("tailored", "generic", "holdout"):
        i = 0
        while engine.assignment(f"{kind}-{i}")[2] != kind:
            i += 1
        out.append(f"{kind}-{i}")
    out.append("stranger")
    return out


async def asks(h: Harness, uid: str, t: int, surface: str, n: int) -> list:
    """``n`` requests of one user: at ``t``, then 1 and 10 minutes later (a burst tests the min gap)."""
    return [await h.ask(uid, t + off, surface=surface) for off in (0, MIN_MS, 10 * MIN_MS)[:n]]


async def play(h: Harness, warm: list[int], actions: list[tuple]) -> tuple[list[str], dict[str, Snapshot], int]:
    """Run the actions (a learner round after each); returns the user ids, what the test knew at each decision,
    and the time before which the untracked user's shows no longer hold their pseudonym."""
    engine = h.engine
    ids = pick_users(engine)
    models = [Model(tracking=i < 3, personal=i < 3) for i in range(N_USERS)]
    t = T0 + 8 * HOUR_MS
    for i, uid in enumerate(ids[:3]):
        await h.consent(uid, ts=t)
        if warm[i]:  # finish the core flow (2: and reach consistency), so later decisions go past it
            times = [t, t + HOUR_MS, t + DAY_MS][: 1 if warm[i] == 1 else 3]
            await h.sessions(uid, times)
            models[i].sessions += times
            for k, step in enumerate(CATALOG.core_order):
                await h.event(uid, "step_completed", t + DAY_MS + k * MIN_MS, step_id=step)
                models[i].completed.setdefault(step, t + DAY_MS + k * MIN_MS)
    t += DAY_MS + HOUR_MS
    snapshots: dict[str, Snapshot] = {}
    reader = sqlite3.connect(f"file:{h.db_path}?mode=ro", uri=True)
    try:
        for act in actions:
            kind, u = act[0], act[1]
            t += act[-1]
            uid, m = ids[u], models[u]
            if kind in ("ask", "burst", "day"):
                if kind == "day":  # a busy day: asks 31 min apart on every surface (caps), completing some
                    got = [await h.ask(uid, t + k * 31 * MIN_MS, surface=sf)
                           for k, sf in enumerate(["in_app", "email", "push", "", "in_app", ""])]
                else:
                    got = await asks(h, uid, t, act[2], 3 if kind == "burst" else 1)
                for r in got:
                    snapshots[r.decision_id] = Snapshot(
                        u, m.personal, frozenset(m.completed),
                        len(m.sessions) >= CATALOG.guardrails.min_sessions_for_personalization
                        and distinct_days(m.sessions) >= CATALOG.guardrails.min_distinct_days_for_personalization)
                    m.last_decision = r.decision_id
                    m.last_shown = r.step.id if r.has_step else m.last_shown
                    if r.reason == "bandit":
                        check_bandit_probabilities(engine, reader, r.decision_id)
                if kind == "burst":
                    t += 10 * MIN_MS  # the clock never goes back
                if kind == "day":
                    t += 6 * 31 * MIN_MS
                    for r in got:
                        if act[2] and r.has_step:
                            await h.event(uid, "step_completed", t, step_id=r.step.id)
                            if m.tracking:
                                m.completed.setdefault(r.step.id, t)
            elif kind == "session":
                await h.event(uid, "session_start", t, channel="web")
                if m.tracking:
                    m.sessions.append(t)
            elif kind in ("complete", "complete_shown"):
                step = act[2] if kind == "complete" else m.last_shown
                if step:
                    await h.event(uid, "step_completed", t, step_id=step)
                    if m.tracking:
                        m.completed.setdefault(step, t)
            elif kind == "feature":
                for k in range(act[3]):
                    await h.event(uid, "feature_used", t + k, feature=act[2])
            elif kind == "skip":
                await h.event(uid, "screen_skipped", t)
            elif kind == "dismiss":
                await h.event(uid, "step_dismissed", t, step_id=act[2])
            elif kind == "personalization":
                await h.consent(uid, "personalization", granted=act[2], ts=t)
                m.personal = act[2]
            elif kind == "report" and m.last_decision:
                await h.report(m.last_decision, act[2], t)
            await h.learn(t)  # the learner's round: rewards joined, models learned, the engine loads them
    finally:
        reader.close()
    await h.learner.forget_untracked_shows(t)  # the learner's rounds do it only once a minute
    return ids, snapshots, t - h.learner.horizon_ms


def check_bandit_probabilities(engine, reader: sqlite3.Connection, decision_id: str) -> None:
    """Read the decision back and recompute the policy's probabilities for its logged context."""
    import json
    ctx, elig, probs, step, p = reader.execute(
        "SELECT context, eligible, probabilities, step_id, propensity FROM decisions WHERE decision_id = ?",
        (decision_id,)).fetchone()
    ctx, elig, probs = json.loads(ctx), json.loads(elig), json.loads(probs)
    x = engine.space.vector(ctx)
    arms = [engine.arm_index[s] for s in elig]
    scores = engine.decider.policy.scores(x, arms).tolist()
    expected = [1.0] if len(arms) == 1 else engine.decider.exploration.probabilities_list(scores)
    assert [probs[s] for s in elig] == expected
    assert probs[step] == p


def check_rows(h: Harness, ids: list[str], snapshots: dict[str, Snapshot], forgotten_before: int) -> None:
    g = CATALOG.guardrails
    rows = decision_rows(h.db_path)
    assert {r["decision_id"] for r in rows} == set(snapshots)
    user_of = {h.pipeline.pseudonym(uid): i for i, uid in enumerate(ids)}
    shows: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        snap = snapshots[row["decision_id"]]
        if snap.user == N_USERS - 1:  # no tracking consent: an id only on a shown step (caps) while a cap,
            # cooldown or gap can count it, no reward waited
            kept = row["step_id"] and row["timestamp_ms"] >= forgotten_before
            assert row["user_pseudo"] == (h.pipeline.pseudonym(ids[snap.user]) if kept else "")
            assert row["reward_deadline_ms"] == 0
        else:
            assert user_of[row["user_pseudo"]] == snap.user
        arm_kind = h.engine.assignment(ids[snap.user])[2]
        step, reason, probs = row["step_id"], row["reason"], row["probabilities"]
        event(f"reason {reason.split(':')[0]}")
        if not step:
            assert reason in ("capped", "none_eligible", "holdout", "no_consent")
            assert probs == {} and row["eligible"] == []
            continue
        shows.setdefault(snap.user, []).append((row["timestamp_ms"], step))
        spec = CATALOG.step(step)
        assert step not in snap.completed  # completed steps are never shown again
        assert not row["surface"] or spec.channel == row["surface"]
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12)
        assert probs[step] == row["propensity"] > 0 and set(probs) == set(row["eligible"])
        if spec.is_core:  # the first core step not completed, in the static order
            expected = next(s for s in CATALOG.core_order if s not in snap.completed)
            assert step == expected
            assert reason == ("core" if snap.personal else "no_consent")
            assert probs == {step: 1.0}
        else:
            assert set(CATALOG.core_order) <= snap.completed  # core flow first
            assert snap.personal  # no personalized step without consent
            assert arm_kind != "holdout"
            assert reason in ("generic", "bandit") or reason.startswith(("rule:", "boosted:"))
            if reason != "generic":  # personalized decisions only after consistent behavior, tailored arm
                assert snap.consistent and arm_kind == "tailored"
            fired = boosted_rule(reason)
            if fired is not None:  # a proposing rule's step gets at least its boost
                assert probs[fired[1]] >= next(r.boost for r in CATALOG.rules if r.name == fired[0]) - 1e-12
            elif reason != "bandit":
                assert row["propensity"] == 1.0
    for user_shows in shows.values():  # caps, min gap, cooldowns
        user_shows.sort()
        for i, (ts, step) in enumerate(user_shows):
            window = [(t, s) for t, s in user_shows[: i + 1] if t > ts - DAY_MS]
            assert len(window) <= g.max_per_day_total
            channel = CATALOG.step(step).channel
            assert sum(1 for _, s in window if CATALOG.step(s).channel == channel) <= g.cap_for(channel)
            assert sum(1 for _, s in window if s == step) <= CATALOG.step(step).max_per_day
            if i:
                assert ts - user_shows[i - 1][0] >= g.min_gap_minutes * MIN_MS
            before = [t for t, s in user_shows[:i] if s == step]
            if before:
                assert ts - before[-1] >= CATALOG.step(step).cooldown_hours * HOUR_MS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(warm=st.lists(st.integers(0, 2), min_size=3, max_size=3), actions=st.lists(action, min_size=1, max_size=45))
def test_engine_invariants_hold_for_random_histories(warm: list[int], actions: list[tuple]) -> None:
    with tempfile.TemporaryDirectory(prefix="onramp-prop-") as tmp:
        h = Harness(Path(tmp) / "onramp.db")

        async def main() -> tuple[list[str], dict[str, Snapshot], int]:
            h.open(asyncio.get_running_loop())
            try:
                return await play(h, warm, actions)
            finally:
                await h.close()
        ids, snapshots, forgotten_before = asyncio.run(main())
        check_rows(h, ids, snapshots, forgotten_before)
