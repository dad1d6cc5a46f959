"""Why GetNextStep answered as it did: the ``reason`` of every answer and decision row (docs/decisions.md,
"Reasons"). A forced rule's reason is ``rule:<name>`` (:func:`rule_reason`); the bandit's draw with a proposing
rule's step boosted is ``boosted:<name>:<step>`` (:func:`boosted_reason`).

>>> Reason.BANDIT == "bandit", rule_reason("skipped_screens"), is_rule("rule:skipped_screens")
(True, 'rule:skipped_screens', True)
>>> boosted_reason("skipped_screens", "core_benefits"), boosted_rule("boosted:skipped_screens:core_benefits")
('boosted:skipped_screens:core_benefits', ('skipped_screens', 'core_benefits'))
"""
from __future__ import annotations

from enum import StrEnum

RULE_PREFIX = "rule:"
BOOSTED_PREFIX = "boosted:"


class Reason(StrEnum):
    """The fixed reasons (a rule's reason is built by :func:`rule_reason`)."""

    CORE = "core"  # a static core step, in order
    NO_CONSENT = "no_consent"  # a core step (or nothing) for someone without personalization consent
    GENERIC = "generic"  # the generic order (generic arm, or before consistent behavior)
    BANDIT = "bandit"  # the contextual bandit's draw, with its exact probability
    HOLDOUT = "holdout"  # the holdout arm: no personalized step
    CAPPED = "capped"  # nothing now: a cap, cooldown, gap or recent dismissal blocks every step
    NONE_ELIGIBLE = "none_eligible"  # nothing: no step is left to show


def rule_reason(rule_name: str) -> str:
    """The reason of a decision forced by the rule ``rule_name``."""
    return RULE_PREFIX + rule_name


def is_rule(reason: str) -> bool:
    """Whether ``reason`` is a rule's."""
    return reason.startswith(RULE_PREFIX)


def boosted_reason(rule_name: str, step_id: str) -> str:
    """The reason of a bandit decision whose distribution rule ``rule_name`` boosted toward ``step_id`` (the
    logged step may be any eligible one: the reason names the policy that drew it)."""
    return f"{BOOSTED_PREFIX}{rule_name}:{step_id}"


def boosted_rule(reason: str) -> tuple[str, str] | None:
    """(rule name, boosted step) of a :func:`boosted_reason`, None for any other reason."""
    if not reason.startswith(BOOSTED_PREFIX):
        return None
    rule, sep, step = reason[len(BOOSTED_PREFIX):].partition(":")
    return (rule, step) if sep and rule and step else None
