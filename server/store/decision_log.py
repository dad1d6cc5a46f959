"""The SQL of the decision log (functions of a SqliteStore, bound as its methods where the Protocols need them):
decision rows in the ``decisions`` table (:mod:`server.store.decision_logger` builds them on the event loop and
logs them through the writer), and the reads of decisions joined to their outcomes: for the learner, erasure and
the offline tools.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from server.base.reasons import BOOSTED_PREFIX
from server.store.decision_logger import _json_value
from server.store.rows import DECISION_COLUMNS, JSON_DECISION_COLUMNS, JoinedRow, PendingRow
from server.store.sql import insert_flat

if TYPE_CHECKING:
    from server.store.sqlite import SqliteStore


def _encoded(row: dict[str, Any]) -> dict[str, Any]:
    for col in JSON_DECISION_COLUMNS:
        v = row.get(col)
        if v is None or isinstance(v, str):
            continue
        row[col] = _json_value(v)
    return row


def insert_rows(store: SqliteStore, rows: list[dict[str, Any]]) -> None:
    """Insert decision rows (on the writer thread, inside its transaction) with multi-row INSERTs
    (:func:`server.store.sql.insert_flat`: executemany would re-take the GIL per row behind the busy loop)."""
    insert_flat(store.conn, "decisions", DECISION_COLUMNS,
                [r.get(c) for r in map(_encoded, rows) for c in DECISION_COLUMNS])


# -- reads (on a read-only connection, or in an erasure's transaction) ------------------------------------------
def _context(text: str | None) -> dict[str, float]:
    if not text or text == "{}":
        return {}
    value = json.loads(text)
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


# the logged probabilities of a proposing rule's decision (for the rule monitor), NULL for any other
BOOSTED_PROBABILITIES = f"CASE WHEN substr(d.reason, 1, {len(BOOSTED_PREFIX)}) = '{BOOSTED_PREFIX}' THEN d.probabilities END"
_JOINED = ("SELECT d.decision_id, d.step_id, d.context, o.reward, d.reason, " + BOOSTED_PROBABILITIES +  # no braces
           ", d.timestamp_ms FROM outcomes o JOIN decisions d ON d.decision_id = o.decision_id WHERE {where} AND d.context != '{{}}' "
           "ORDER BY o.rowid")


def _joined(cur: Iterable[tuple[str, str, str | None, float | None, str, str | None, int]]) -> Iterator[JoinedRow]:
    """The rows of a :data:`_JOINED` query that have a context and a reward, as JoinedRows."""
    for decision_id, step_id, context, reward, reason, probabilities, ts in cur:
        ctx = _context(context)
        if ctx and reward is not None:
            yield JoinedRow(decision_id, step_id, ctx, float(reward), reason,
                            _context(probabilities) if probabilities else {}, int(ts))


def rewarded_rows_of(store: SqliteStore, pseudonyms: Sequence[str]) -> list[JoinedRow]:
    """The decisions logged under ``pseudonyms`` that have an outcome and a context, oldest outcome first:
    everything the bandit may have learned from one person (read before an erasure deletes them)."""
    if not pseudonyms:
        return []
    where = f"d.user_pseudo IN ({','.join('?' * len(pseudonyms))})"
    return list(_joined(store.conn.execute(_JOINED.format(where=where), list(pseudonyms))))


def pending_rows(store: SqliteStore) -> list[PendingRow]:
    """Decisions that showed a step and have no outcome (their reward is still to be joined)."""
    cur = store.conn.execute(
        "SELECT d.decision_id, d.user_pseudo, d.timestamp_ms, d.step_id, d.reward_deadline_ms "
        "FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.decision_id "
        "WHERE o.decision_id IS NULL AND d.step_id != '' AND d.reward_deadline_ms > 0 ORDER BY d.timestamp_ms")
    return [PendingRow(*row) for row in cur]


def joined_rows(store: SqliteStore, step_ids: Sequence[str], after_outcome_rowid: int = 0) -> Iterator[JoinedRow]:
    """Decisions of ``step_ids`` with a context and an outcome, in outcome commit order (the order the
    bandit learned them online); with ``after_outcome_rowid``, only outcomes committed after that row."""
    if not step_ids:
        return
    where = f"o.rowid > ? AND d.step_id IN ({','.join('?' * len(step_ids))})"
    yield from _joined(store.conn.execute(_JOINED.format(where=where), [after_outcome_rowid, *step_ids]))
