"""The seed's rule triggers, evaluated on a user's profile: explores feature A extensively -> advanced tip
for A; skips onboarding screens -> core-benefits message; returns after 24 h inactive -> re-engagement
email. Which rule fires is deterministic: the first enabled rule (highest priority first, demoted rules
skipped) whose condition holds and whose step the guardrails allow. A forcing rule's step is shown; a
proposing rule's step is boosted inside the bandit's distribution (server/decide/engine.py).
"""
from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from server.base.catalog import FORCE, PROPOSE, Rule
from server.base.clock import HOUR_MS
from server.base.reasons import boosted_reason, rule_reason
from server.ingest.profiles import Profile


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that fired, the step it shows (``force``) or boosts (``propose``) and by how much."""

    rule: str
    step_id: str
    mode: str = FORCE
    boost: float = 0.0

    @property
    def proposes(self) -> bool:
        return self.mode == PROPOSE

    @property
    def reason(self) -> str:
        """The decision reason: ``rule:<name>`` when forced, ``boosted:<name>:<step>`` when proposed."""
        return boosted_reason(self.rule, self.step_id) if self.proposes else rule_reason(self.rule)


def returned_after_inactive(profile: Profile, threshold_ms: float, now_ms: int) -> bool:
    """Whether the user came back after at least ``threshold_ms`` without activity, and that return is
    recent (at most ``threshold_ms`` before ``now_ms``). The return is the latest event (gap to the event
    before it) or the latest session start (gap to the session before it, when later events followed it)."""
    last, prev = profile.last_seen_ms, profile.previous_seen_ms
    if prev > 0 and last - prev >= threshold_ms and now_ms - last <= threshold_ms:
        return True
    starts = profile.session_starts_ms
    if len(starts) >= 2:
        s2, s1 = sorted(starts)[-2:]  # the two latest (sorting a few ints beats heapq.nlargest per call)
        if s1 - s2 >= threshold_ms and now_ms - s1 <= threshold_ms:
            return True
    return False


def rule_targets(rule: Rule, profile: Profile, now_ms: int) -> list[str]:
    """The steps ``rule`` asks for given ``profile`` at ``now_ms`` (empty when its condition does not hold),
    best first.

    ``feature_explored``: every feature used at least ``threshold`` times that has an advanced-tip step,
    most used first (ties by name). ``screens_skipped``: at least ``threshold`` screens skipped.
    ``returned_after_inactive``: see :func:`returned_after_inactive` (``threshold`` in hours).
    """
    if rule.kind == "feature_explored":
        hits = [(n, f) for f, n in profile.features_used.items() if n >= rule.threshold and f in rule.feature_steps]
        hits.sort(key=lambda nf: (-nf[0], nf[1]))
        return [rule.feature_steps[f] for _, f in hits]
    if rule.kind == "screens_skipped":
        return [rule.step] if rule.step and profile.screens_skipped >= rule.threshold else []
    if rule.kind == "returned_after_inactive":
        if rule.step and returned_after_inactive(profile, rule.threshold * HOUR_MS, now_ms):
            return [rule.step]
        return []
    return []


def first_firing(rules: tuple[Rule, ...], profile: Profile, allowed: Container[str], now_ms: int,
                 skip: Container[str] = ()) -> Firing | None:
    """The first rule of ``rules`` (already in priority order), its name not in ``skip`` (demoted rules), with
    a target step in ``allowed`` (the steps the guardrails let through now), or None when no rule fires."""
    for rule in rules:
        if rule.name in skip:
            continue
        for step_id in rule_targets(rule, profile, now_ms):
            if step_id in allowed:
                return Firing(rule.name, step_id, rule.mode, rule.boost)
    return None
