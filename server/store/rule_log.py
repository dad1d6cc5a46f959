"""The reads that rebuild the rule monitor (server/learn/rule_monitor.py) at startup: the decisions a proposing
rule boosted (reason ``boosted:<rule>:<step>``), with their outcome or still pending."""
from __future__ import annotations

import json
from collections.abc import Iterator

from server.base.reasons import BOOSTED_PREFIX
from server.store.sqlite import SqliteStore

_BOOSTED = f"d.reason LIKE '{BOOSTED_PREFIX}%'"


def _probabilities(text: str | None) -> dict[str, float]:
    value = json.loads(text) if text else {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def boosted_outcomes(store: SqliteStore, after_outcome_rowid: int = 0
                     ) -> Iterator[tuple[str, str, dict[str, float], float]]:
    """(reason, step_id, probabilities, reward) of every boosted decision with an outcome, in outcome commit
    order; with ``after_outcome_rowid`` only outcomes committed after that row (the rest is in a checkpoint)."""
    cur = store.conn.execute(
        "SELECT d.reason, d.step_id, d.probabilities, o.reward FROM outcomes o JOIN decisions d "
        f"ON d.decision_id = o.decision_id WHERE o.rowid > ? AND {_BOOSTED} AND o.reward IS NOT NULL "
        "ORDER BY o.rowid", (after_outcome_rowid,))
    for reason, step_id, probabilities, reward in cur:
        yield reason, step_id, _probabilities(probabilities), float(reward)


def boosted_pending(store: SqliteStore) -> dict[str, tuple[str, str, dict[str, float]]]:
    """decision_id -> (reason, step_id, probabilities) of the boosted decisions still waiting for an outcome."""
    cur = store.conn.execute(
        "SELECT d.decision_id, d.reason, d.step_id, d.probabilities FROM decisions d LEFT JOIN outcomes o "
        f"ON o.decision_id = d.decision_id WHERE o.decision_id IS NULL AND {_BOOSTED} AND d.step_id != '' "
        "AND d.reward_deadline_ms > 0")
    return {i: (reason, step, _probabilities(p)) for i, reason, step, p in cur}
