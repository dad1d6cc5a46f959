"""The seed's rule triggers, evaluated on a user's profile: explores feature A extensively -> advanced tip
for A; skips onboarding screens -> core-benefits message; returns after 24 h inactive -> re-engagement
email. Rules are deterministic: the first enabled rule (highest priority first) whose condition holds and
whose step the guardrails allow fires.
"""
from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from server.catalog import Rule
from server.profiles import Profile

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule that fired and the step it shows."""

    rule: str
    step_id: str

    @property
    def reason(self) -> str:
        """The decision reason: ``rule:<name>``."""
        return f"rule:{self.rule}"


def rule_targets(rule: Rule, profile: Profile) -> list[str]:
    """The steps ``rule`` asks for given ``profile`` (empty when its condition does not hold), best first.

    ``feature_explored``: every feature used at least ``threshold`` times that has an advanced-tip step,
    most used first (ties by name). ``screens_skipped``: at least ``threshold`` screens skipped.
    ``returned_after_inactive``: the latest event came at least ``threshold`` hours after the one before.
    """
    if rule.kind == "feature_explored":
        hits = [(n, f) for f, n in profile.features_used.items() if n >= rule.threshold and f in rule.feature_steps]
        hits.sort(key=lambda nf: (-nf[0], nf[1]))
        return [rule.feature_steps[f] for _, f in hits]
    if rule.kind == "screens_skipped":
        return [rule.step] if rule.step and profile.screens_skipped >= rule.threshold else []
    if rule.kind == "returned_after_inactive":
        if rule.step and profile.previous_seen_ms > 0 and \
                profile.last_seen_ms - profile.previous_seen_ms >= rule.threshold * HOUR_MS:
            return [rule.step]
        return []
    return []


def first_firing(rules: tuple[Rule, ...], profile: Profile, allowed: Container[str]) -> Firing | None:
    """The first rule of ``rules`` (already in priority order) with a target step in ``allowed`` (the steps
    the guardrails let through now), or None when no rule fires."""
    for rule in rules:
        for step_id in rule_targets(rule, profile):
            if step_id in allowed:
                return Firing(rule.name, step_id)
    return None
