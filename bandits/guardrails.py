"""Eligibility guardrails that run before any probability is computed: which steps a user may be
shown now, and why each other step is blocked.

Pure functions over plain values (:class:`StepSpec`, :class:`GuardrailConfig`, :class:`UserHistory`),
so the server converts its catalog and profile into these and the rules stay testable alone.

Caps use a rolling 24 h window: a show at time ``t`` counts against the caps while
``now_ms - 86_400_000 < t`` (shows stamped after ``now_ms``, e.g. from a skewed clock, count too).
The checks run in this order and a blocked step reports the first that fails: ``completed``,
``dismissed``, ``prerequisite:<id>``, ``surface``, ``min_sessions`` (personalized steps before
consistent behavior), ``cooldown``, ``cap:step``, ``cap:channel:<channel>``, ``cap:total``,
``min_gap``.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DAY_MS = 86_400_000
STEP_KINDS = ("core", "personalized")


@dataclass(frozen=True, slots=True)
class StepSpec:
    """What the guardrails need to know about one step: where it shows, its kind, what must be
    completed first, how long to wait before showing it again and how often per day it may show."""

    step_id: str
    channel: str
    kind: str = "personalized"
    prerequisites: tuple[str, ...] = ()
    cooldown_ms: int = DAY_MS
    max_per_day: int = 1
    repeatable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ValueError(f"StepSpec.kind must be one of {', '.join(STEP_KINDS)} (got {self.kind!r})")
        if self.cooldown_ms < 0 or self.max_per_day < 0:
            raise ValueError(f"StepSpec {self.step_id!r}: cooldown_ms and max_per_day must be >= 0")


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """Limits for every user: per-channel and total daily caps, a minimum gap between any two
    shown steps, no repeats of completed steps, the exploration cap, and how much consistent
    behavior (sessions, distinct active days) comes before any personalized step."""

    max_per_day_per_channel: Mapping[str, int] = field(default_factory=dict)
    max_per_day_total: int = 4
    min_gap_ms: int = 30 * 60_000
    never_repeat_completed: bool = True
    max_exploration: float = 0.2
    min_sessions_for_personalization: int = 3
    min_distinct_days_for_personalization: int = 0


@dataclass(slots=True)
class UserHistory:
    """What the user has seen and done: show times per step (epoch ms), completed and dismissed
    steps (a set, or a mapping step -> time), sessions and distinct active days so far. ``ascending``
    says each step's show times are in ascending order (a server's stored history keeps them so): the
    guardrails then count a step's shows in the 24 h window by bisection and take its latest show as the
    last time, instead of looking at every time (up to hundreds per step under high caps)."""

    shown: Mapping[str, Sequence[int]] = field(default_factory=dict)
    completed: Mapping[str, int] | set[str] | frozenset[str] = field(default_factory=dict)
    dismissed: Mapping[str, int] | set[str] | frozenset[str] = field(default_factory=dict)
    sessions: int = 0
    distinct_days: int = 0
    ascending: bool = False


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The steps that may be shown now (in catalog order) and, for each other step, why not."""

    eligible: list[str]
    blocked: dict[str, str]


def personalization_allowed(history: UserHistory, config: GuardrailConfig) -> bool:
    """True once the user showed consistent behavior: enough sessions and distinct active days."""
    return (history.sessions >= config.min_sessions_for_personalization
            and history.distinct_days >= config.min_distinct_days_for_personalization)


def core_next(core_order: Iterable[str], history: UserHistory) -> str | None:
    """The first step of the static core flow the user has not completed, or None when done."""
    for step_id in core_order:
        if step_id not in history.completed:
            return step_id
    return None


def _in_window(times: Iterable[int], since: int) -> int:
    return sum(1 for t in times if t > since)


# What eligible() reads of each step, as plain tuples, with the step id -> channel map: remembered for steps
# tuples (immutable, so it cannot go stale), which is what a server passes on every request.
_Row = tuple[str, str, bool, tuple[str, ...], int, int, bool]
_LAYOUTS: dict[int, tuple[Sequence[StepSpec], dict[str, str], list[_Row]]] = {}


def _layout(steps: Sequence[StepSpec]) -> tuple[dict[str, str], list[_Row]]:
    """step id -> channel of ``steps``, and per step (id, channel, personalized, prerequisites, cooldown_ms,
    max_per_day, repeatable)."""
    if isinstance(steps, tuple):
        hit = _LAYOUTS.get(id(steps))
        if hit is not None and hit[0] is steps:
            return hit[1], hit[2]
    channels = {s.step_id: s.channel for s in steps}
    rows = [(s.step_id, s.channel, s.kind == "personalized", tuple(s.prerequisites), s.cooldown_ms, s.max_per_day,
             s.repeatable) for s in steps]
    if isinstance(steps, tuple):
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.clear()
        _LAYOUTS[id(steps)] = (steps, channels, rows)
    return channels, rows


def eligible(steps: Sequence[StepSpec], history: UserHistory, config: GuardrailConfig, now_ms: int,
             surface: str | None = None) -> Eligibility:
    """Split ``steps`` into those that may be shown at ``now_ms`` on ``surface`` (a channel; None or
    "" = any) and those blocked, with the first failing rule as the reason (see the module doc).

    Runs on every GetNextStep: pass the steps as a tuple (what is read of them is then laid out once)."""
    since = now_ms - DAY_MS
    shown = history.shown
    shown_today: dict[str, int] = {}
    per_channel: dict[str, int] = {}
    total = 0
    last_shown = None
    ascending = history.ascending
    channel_of, rows = _layout(steps)
    if shown:
        for step_id, times in shown.items():
            if not times:
                shown_today[step_id] = 0
                continue
            if ascending:
                n = len(times) - bisect_right(times, since)
                latest = times[-1]
            else:
                n = 0
                for t in times:
                    if t > since:
                        n += 1
                latest = max(times)
            shown_today[step_id] = n
            total += n
            ch = channel_of.get(step_id)
            if ch is not None and n:
                per_channel[ch] = per_channel.get(ch, 0) + n
            if last_shown is None or latest > last_shown:
                last_shown = latest
    personal_ok = personalization_allowed(history, config)
    total_full = total >= config.max_per_day_total
    gap_blocked = last_shown is not None and now_ms - last_shown < config.min_gap_ms
    completed = history.completed
    dismissed = history.dismissed
    dismissed_at = dismissed if type(dismissed) is dict or isinstance(dismissed, Mapping) else None
    no_repeat = config.never_repeat_completed
    channel_caps = config.max_per_day_per_channel
    max_total = config.max_per_day_total
    shown_get = shown.get if shown else None
    today_get = shown_today.get

    ok: list[str] = []
    blocked: dict[str, str] = {}
    for sid, channel, personalized, prerequisites, cooldown_ms, max_per_day, repeatable in rows:
        if sid in completed and no_repeat and not repeatable:
            blocked[sid] = "completed"
            continue
        if sid in dismissed and (dismissed_at is None or now_ms - dismissed_at[sid] < cooldown_ms):
            blocked[sid] = "dismissed"
            continue
        reason = None
        missing = None
        for p in prerequisites:
            if p not in completed:
                missing = p
                break
        if missing is not None:
            reason = f"prerequisite:{missing}"
        elif surface and channel != surface:
            reason = "surface"
        elif personalized and not personal_ok:
            reason = "min_sessions"
        else:
            times = shown_get(sid, ()) if shown_get is not None else ()
            if times and now_ms - (times[-1] if ascending else max(times)) < cooldown_ms:
                reason = "cooldown"
            elif today_get(sid, 0) >= max_per_day:
                reason = "cap:step"
            elif per_channel.get(channel, 0) >= channel_caps.get(channel, max_total):
                reason = f"cap:channel:{channel}"
            elif total_full:
                reason = "cap:total"
            elif gap_blocked:
                reason = "min_gap"
        if reason is None:
            ok.append(sid)
        else:
            blocked[sid] = reason
    return Eligibility(ok, blocked)
