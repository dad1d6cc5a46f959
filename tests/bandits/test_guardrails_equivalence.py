"""The optimised ``eligible()`` (hoisted lookups, channel map remembered per steps tuple) gives exactly the
answer of the plain reference implementation it replaced, reasons included, on random catalogs and
histories (dismissals with and without times, surfaces, caps, prerequisites, lists and tuples of steps)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.guardrails import DAY_MS, Eligibility, GuardrailConfig, StepSpec, UserHistory, eligible, personalization_allowed

HOUR = 3_600_000
NOW = 100 * DAY_MS
STEP_IDS = [f"s{i}" for i in range(7)]
CHANNELS = ["in_app", "email", "push"]


def reference_eligible(steps: Sequence[StepSpec], history: UserHistory, config: GuardrailConfig, now_ms: int,
                       surface: str | None = None) -> Eligibility:
    """The implementation before the serving-speed work, kept verbatim as the specification."""
    since = now_ms - DAY_MS
    channel_of = {s.step_id: s.channel for s in steps}
    shown_today: dict[str, int] = {}
    per_channel: dict[str, int] = {}
    total = 0
    last_shown = None
    for step_id, times in history.shown.items():
        n = sum(1 for t in times if t > since)
        shown_today[step_id] = n
        total += n
        ch = channel_of.get(step_id)
        if ch is not None and n:
            per_channel[ch] = per_channel.get(ch, 0) + n
        if times:
            latest = max(times)
            if last_shown is None or latest > last_shown:
                last_shown = latest
    personal_ok = personalization_allowed(history, config)
    total_full = total >= config.max_per_day_total
    gap_blocked = last_shown is not None and now_ms - last_shown < config.min_gap_ms
    dismissed_at = history.dismissed if isinstance(history.dismissed, Mapping) else None
    ok: list[str] = []
    blocked: dict[str, str] = {}
    for s in steps:
        sid = s.step_id
        reason = None
        if sid in history.completed and config.never_repeat_completed and not s.repeatable:
            reason = "completed"
        elif sid in history.dismissed and (dismissed_at is None or now_ms - dismissed_at[sid] < s.cooldown_ms):
            reason = "dismissed"
        else:
            missing = next((p for p in s.prerequisites if p not in history.completed), None)
            if missing is not None:
                reason = f"prerequisite:{missing}"
            elif surface and s.channel != surface:
                reason = "surface"
            elif s.kind == "personalized" and not personal_ok:
                reason = "min_sessions"
            else:
                times = history.shown.get(sid, ())
                if times and now_ms - max(times) < s.cooldown_ms:
                    reason = "cooldown"
                elif shown_today.get(sid, 0) >= s.max_per_day:
                    reason = "cap:step"
                elif per_channel.get(s.channel, 0) >= config.max_per_day_per_channel.get(
                        s.channel, config.max_per_day_total):
                    reason = f"cap:channel:{s.channel}"
                elif total_full:
                    reason = "cap:total"
                elif gap_blocked:
                    reason = "min_gap"
        if reason is None:
            ok.append(sid)
        else:
            blocked[sid] = reason
    return Eligibility(ok, blocked)


@st.composite
def scenarios(draw):
    steps = []
    for i, sid in enumerate(STEP_IDS):
        prereqs = tuple(draw(st.lists(st.sampled_from(STEP_IDS[:i]), max_size=2, unique=True))) if i else ()
        steps.append(StepSpec(sid, draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(["core", "personalized"])),
                              prereqs, cooldown_ms=draw(st.integers(0, 3 * DAY_MS)),
                              max_per_day=draw(st.integers(0, 3)), repeatable=draw(st.booleans())))
    cfg = GuardrailConfig({c: draw(st.integers(0, 4)) for c in draw(st.lists(st.sampled_from(CHANNELS), unique=True))},
                          max_per_day_total=draw(st.integers(0, 6)), min_gap_ms=draw(st.integers(0, 2 * HOUR)),
                          never_repeat_completed=draw(st.booleans()),
                          min_sessions_for_personalization=draw(st.integers(0, 5)),
                          min_distinct_days_for_personalization=draw(st.integers(0, 3)))
    # shows of catalog steps and of unknown ones (a step removed from the catalog), empty lists included
    shown = {sid: draw(st.lists(st.integers(NOW - 3 * DAY_MS, NOW + HOUR), max_size=draw(st.sampled_from([4, 40]))))
             for sid in draw(st.lists(st.sampled_from([*STEP_IDS, "gone"]), unique=True))}
    completed = {sid: NOW - DAY_MS for sid in draw(st.lists(st.sampled_from(STEP_IDS), unique=True))}
    dismissed_ids = draw(st.lists(st.sampled_from(STEP_IDS), unique=True))
    dismissed = set(dismissed_ids) if draw(st.booleans()) else \
        {sid: draw(st.integers(NOW - 3 * DAY_MS, NOW)) for sid in dismissed_ids}
    hist = UserHistory(shown=shown, completed=completed if draw(st.booleans()) else set(completed),
                       dismissed=dismissed, sessions=draw(st.integers(0, 6)), distinct_days=draw(st.integers(0, 4)))
    steps_arg = tuple(steps) if draw(st.booleans()) else steps
    return steps_arg, cfg, hist, draw(st.sampled_from([None, "", "in_app", "email", "push"])), \
        NOW + draw(st.integers(-HOUR, HOUR))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_eligible_matches_the_reference_implementation(scenario):
    steps, cfg, hist, surface, now = scenario
    assert eligible(steps, hist, cfg, now, surface) == reference_eligible(steps, hist, cfg, now, surface)
    # a second call (channel map now remembered for a tuple) answers the same
    assert eligible(steps, hist, cfg, now, surface) == reference_eligible(steps, hist, cfg, now, surface)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.booleans())
def test_ascending_histories_get_the_reference_verdicts(scenario, as_tuples):
    """A history flagged ``ascending`` (each step's times sorted, as the server stores them) is counted by
    bisection; every verdict and reason equals the reference's on the same times."""
    steps, cfg, hist, surface, now = scenario
    shown = {sid: (tuple if as_tuples else list)(sorted(times)) for sid, times in hist.shown.items()}
    fast = UserHistory(shown=shown, completed=hist.completed, dismissed=hist.dismissed, sessions=hist.sessions,
                       distinct_days=hist.distinct_days, ascending=True)
    assert eligible(steps, fast, cfg, now, surface) == reference_eligible(steps, hist, cfg, now, surface)


def test_a_new_steps_tuple_with_other_channels_is_not_served_a_stale_channel_map():
    cfg = GuardrailConfig({"email": 1}, max_per_day_total=5, min_gap_ms=0)
    hist = UserHistory(shown={"a": [NOW - 2 * DAY_MS + 1]}, sessions=5)
    hist_today = UserHistory(shown={"a": [NOW - HOUR]}, sessions=5)
    as_email = (StepSpec("a", "email", cooldown_ms=0, max_per_day=3), StepSpec("b", "email", cooldown_ms=0))
    as_push = (StepSpec("a", "push", cooldown_ms=0, max_per_day=3), StepSpec("b", "email", cooldown_ms=0))
    assert eligible(as_email, hist, cfg, NOW).eligible == ["a", "b"]
    assert eligible(as_email, hist_today, cfg, NOW).blocked == {"a": "cap:channel:email", "b": "cap:channel:email"}
    assert eligible(as_push, hist_today, cfg, NOW) == Eligibility(["a", "b"], {})
