"""Guardrails: caps, cooldowns, no repeats, prerequisites, surfaces, the personalization threshold
and the static core order, checked on hand-made cases and on random histories."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.guardrails import (
    DAY_MS,
    GuardrailConfig,
    StepSpec,
    UserHistory,
    core_next,
    eligible,
    personalization_allowed,
)

HOUR = 3_600_000
NOW = 100 * DAY_MS
STEPS = [
    StepSpec("welcome", "in_app", "core", (), cooldown_ms=4 * HOUR, max_per_day=2),
    StepSpec("profile", "in_app", "core", ("welcome",), cooldown_ms=12 * HOUR),
    StepSpec("tip_reports", "in_app", "personalized", ("profile",), cooldown_ms=48 * HOUR),
    StepSpec("digest", "email", "personalized", (), cooldown_ms=24 * HOUR),
    StepSpec("push_hint", "push", "personalized", (), cooldown_ms=HOUR, max_per_day=3, repeatable=True),
]
CONFIG = GuardrailConfig({"in_app": 3, "email": 1, "push": 2}, max_per_day_total=4, min_gap_ms=30 * 60_000,
                         min_sessions_for_personalization=3)


def test_fresh_user_gets_only_unblocked_core_steps():
    e = eligible(STEPS, UserHistory(sessions=1), CONFIG, NOW)
    assert e.eligible == ["welcome"]
    assert e.blocked == {"profile": "prerequisite:welcome", "tip_reports": "prerequisite:profile",
                         "digest": "min_sessions", "push_hint": "min_sessions"}


def test_reasons_for_each_rule():
    h = UserHistory(shown={"welcome": [NOW - 5 * HOUR], "digest": [NOW - 2 * DAY_MS]},
                    completed={"welcome": NOW - 5 * HOUR}, sessions=5)
    e = eligible(STEPS, h, CONFIG, NOW)
    assert e.eligible == ["profile", "digest", "push_hint"]
    assert e.blocked == {"welcome": "completed", "tip_reports": "prerequisite:profile"}
    assert eligible(STEPS, h, CONFIG, NOW, surface="email").eligible == ["digest"]
    assert eligible(STEPS, h, CONFIG, NOW, surface="email").blocked["profile"] == "surface"
    h.shown["digest"] = [NOW - 23 * HOUR]
    assert eligible(STEPS, h, CONFIG, NOW).blocked["digest"] == "cooldown"
    h.shown["digest"] = [NOW - 25 * HOUR]
    h.shown["push_hint"] = [NOW - 2 * HOUR, NOW - 4 * HOUR]
    e = eligible(STEPS, h, CONFIG, NOW)
    assert e.blocked["push_hint"] == "cap:channel:push"
    h.shown["push_hint"] = [NOW - 10 * 60_000]
    e = eligible(STEPS, h, CONFIG, NOW)
    assert e.blocked == {"welcome": "completed", "tip_reports": "prerequisite:profile", "push_hint": "cooldown",
                         "profile": "min_gap", "digest": "min_gap"}
    h.shown = {"a": [NOW - HOUR], "b": [NOW - 2 * HOUR], "c": [NOW - 3 * HOUR], "d": [NOW - 4 * HOUR]}
    assert eligible(STEPS, h, CONFIG, NOW).blocked["profile"] == "cap:total"


def test_step_cap_and_rolling_window_edge():
    step = [StepSpec("s", "in_app", "core", (), cooldown_ms=0, max_per_day=2, repeatable=True)]
    cfg = GuardrailConfig({"in_app": 10}, max_per_day_total=10, min_gap_ms=0)
    h = UserHistory(shown={"s": [NOW - DAY_MS + 1, NOW - HOUR]})
    assert eligible(step, h, cfg, NOW).blocked == {"s": "cap:step"}
    h = UserHistory(shown={"s": [NOW - DAY_MS, NOW - HOUR]})  # exactly 24 h ago: out of the window
    assert eligible(step, h, cfg, NOW).eligible == ["s"]


def test_dismissed_steps_wait_their_cooldown():
    h = UserHistory(dismissed={"digest": NOW - 2 * HOUR}, sessions=9)
    assert eligible(STEPS, h, CONFIG, NOW).blocked["digest"] == "dismissed"
    h = UserHistory(dismissed={"digest": NOW - 25 * HOUR}, sessions=9)
    assert "digest" in eligible(STEPS, h, CONFIG, NOW).eligible
    h = UserHistory(dismissed={"digest"}, sessions=9)  # no time known: stays blocked
    assert eligible(STEPS, h, CONFIG, NOW).blocked["digest"] == "dismissed"


def test_repeatable_and_never_repeat_switch():
    h = UserHistory(completed={"push_hint", "digest"}, sessions=9)
    e = eligible(STEPS, h, CONFIG, NOW)
    assert "push_hint" in e.eligible and e.blocked["digest"] == "completed"
    relaxed = GuardrailConfig({"email": 1}, never_repeat_completed=False, min_sessions_for_personalization=0)
    assert "digest" in eligible(STEPS, h, relaxed, NOW).eligible


def test_core_next_and_personalization_threshold():
    order = ["welcome", "profile", "first_project"]
    assert core_next(order, UserHistory()) == "welcome"
    assert core_next(order, UserHistory(completed={"welcome"})) == "profile"
    assert core_next(order, UserHistory(completed={"profile": 5})) == "welcome"
    assert core_next(order, UserHistory(completed=set(order))) is None
    cfg = GuardrailConfig(min_sessions_for_personalization=3, min_distinct_days_for_personalization=2)
    assert not personalization_allowed(UserHistory(sessions=2, distinct_days=5), cfg)
    assert not personalization_allowed(UserHistory(sessions=3, distinct_days=1), cfg)
    assert personalization_allowed(UserHistory(sessions=3, distinct_days=2), cfg)


# ------------------------------------------------------------------------------ property-based
step_ids = [f"s{i}" for i in range(6)]
channels = ["in_app", "email", "push"]


@st.composite
def scenarios(draw):
    steps = []
    for i, sid in enumerate(step_ids):
        prereqs = tuple(draw(st.lists(st.sampled_from(step_ids[:i]), max_size=2, unique=True))) if i else ()
        steps.append(StepSpec(sid, draw(st.sampled_from(channels)), draw(st.sampled_from(["core", "personalized"])),
                              prereqs, cooldown_ms=draw(st.integers(0, 3 * DAY_MS)),
                              max_per_day=draw(st.integers(0, 3)), repeatable=draw(st.booleans())))
    cfg = GuardrailConfig({c: draw(st.integers(0, 4)) for c in draw(st.lists(st.sampled_from(channels), unique=True))},
                          max_per_day_total=draw(st.integers(0, 6)), min_gap_ms=draw(st.integers(0, 2 * HOUR)),
                          never_repeat_completed=draw(st.booleans()),
                          min_sessions_for_personalization=draw(st.integers(0, 5)))
    shown = {sid: draw(st.lists(st.integers(NOW - 3 * DAY_MS, NOW), max_size=4)) for sid in
             draw(st.lists(st.sampled_from(step_ids), unique=True))}
    completed = {sid: NOW - DAY_MS for sid in draw(st.lists(st.sampled_from(step_ids), unique=True))}
    hist = UserHistory(shown=shown, completed=completed, sessions=draw(st.integers(0, 6)))
    return steps, cfg, hist, draw(st.sampled_from([None, "in_app", "email", "push"]))


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_random_histories_never_break_a_guardrail(scenario):
    steps, cfg, hist, surface = scenario
    e = eligible(steps, hist, cfg, NOW, surface)
    by_id = {s.step_id: s for s in steps}
    assert sorted(e.eligible + list(e.blocked)) == sorted(step_ids)
    assert e.eligible == [s.step_id for s in steps if s.step_id in e.eligible]  # catalog order
    in_day = {sid: [t for t in ts if t > NOW - DAY_MS] for sid, ts in hist.shown.items()}
    total = sum(len(v) for v in in_day.values())
    last = max((t for ts in hist.shown.values() for t in ts), default=None)
    for sid in e.eligible:
        s = by_id[sid]
        # showing it now keeps every cap: step, channel and total
        assert len(in_day.get(sid, [])) + 1 <= s.max_per_day
        ch_count = sum(len(v) for k, v in in_day.items() if by_id[k].channel == s.channel)
        assert ch_count + 1 <= cfg.max_per_day_per_channel.get(s.channel, cfg.max_per_day_total)
        assert total + 1 <= cfg.max_per_day_total
        if cfg.never_repeat_completed and not s.repeatable:
            assert sid not in hist.completed
        assert all(NOW - t >= s.cooldown_ms for t in hist.shown.get(sid, []))
        assert last is None or NOW - last >= cfg.min_gap_ms
        assert all(p in hist.completed for p in s.prerequisites)
        if s.kind == "personalized":
            assert hist.sessions >= cfg.min_sessions_for_personalization
        assert not surface or s.channel == surface


@settings(max_examples=200, deadline=None)
@given(order=st.lists(st.sampled_from(step_ids), min_size=1, max_size=6, unique=True),
       done=st.sets(st.sampled_from(step_ids)))
def test_core_next_is_the_first_uncompleted_in_order(order, done):
    nxt = core_next(order, UserHistory(completed=done))
    if nxt is None:
        assert set(order) <= done
    else:
        i = order.index(nxt)
        assert nxt not in done and set(order[:i]) <= done
