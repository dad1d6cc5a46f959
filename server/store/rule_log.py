"""The read that rebuilds the rule monitor's pending trials (server/learn/rule_monitor.py) at startup: the
decisions a proposing rule boosted (reason ``boosted:<rule>:<step>``) still waiting for their outcome (the
rewarded ones come with the bandit's replay, ``server/store/decision_log.py`` ``joined_rows``)."""
from __future__ import annotations

import json
from server.base.reasons import BOOSTED_PREFIX
from server.store.sqlite import SqliteStore

_BOOSTED = f"d.reason LIKE '{BOOSTED_PREFIX}%'"


def _probabilities(text: str | None) -> dict[str, float]:
    value = json.loads(text) if text else {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def boosted_pending(store: SqliteStore) -> dict[str, tuple[str, str, dict[str, float]]]:
    """decision_id -> (reason, step_id, probabilities) of the boosted decisions still waiting for an outcome."""
    cur = store.conn.execute(
        "SELECT d.decision_id, d.reason, d.step_id, d.probabilities FROM decisions d LEFT JOIN outcomes o "
        f"ON o.decision_id = d.decision_id WHERE o.decision_id IS NULL AND {_BOOSTED} AND d.step_id != '' "
        "AND d.reward_deadline_ms > 0")
    return {i: (reason, step, _probabilities(p)) for i, reason, step, p in cur}
