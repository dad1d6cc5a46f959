"""Positions in the log: the last row of each log table a checkpoint of the in-memory state includes
(:class:`LogMark`), whether the log still continues one, and the reads that bring state from a mark up to the
end of the log."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from server.store.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class LogMark:
    """The last row of each log table a checkpoint includes (0 / "" for an empty table)."""

    events_seq: int = 0
    event_id: str = ""
    decisions_rowid: int = 0
    decision_id: str = ""
    outcomes_rowid: int = 0
    outcome_id: str = ""
    erasures: int = 0  # erasures committed on the database before it (server/store/sqlite.py, ``erasures``)


def read_mark(store: SqliteStore) -> LogMark:
    """The current last rows of ``events``, ``decisions`` and ``outcomes`` (call inside a writer job)."""
    c = store.conn
    ev = c.execute("SELECT seq, event_id FROM events ORDER BY seq DESC LIMIT 1").fetchone() or (0, "")
    de = c.execute("SELECT rowid, decision_id FROM decisions ORDER BY rowid DESC LIMIT 1").fetchone() or (0, "")
    oc = c.execute("SELECT rowid, decision_id FROM outcomes ORDER BY rowid DESC LIMIT 1").fetchone() or (0, "")
    return LogMark(int(ev[0]), ev[1], int(de[0]), de[1], int(oc[0]), oc[1], store.erasures())


def mark_problem(store: SqliteStore, mark: LogMark) -> str | None:
    """Why the log no longer continues ``mark`` (a marked row is gone: rows after it may reuse rowids; or a
    person was erased since: the checkpoint's models learned from them), or None when every row after the mark
    was written after the checkpoint."""
    c = store.conn
    if store.erasures() != mark.erasures:
        return "a person was erased since the checkpoint (its models may hold what they learned from them)"
    for table, key, rowid, ident in (("events", "event_id", mark.events_seq, mark.event_id),
                                     ("decisions", "decision_id", mark.decisions_rowid, mark.decision_id),
                                     ("outcomes", "decision_id", mark.outcomes_rowid, mark.outcome_id)):
        if rowid == 0:
            continue
        row = c.execute(f"SELECT {key} FROM {table} WHERE rowid = ?", (rowid,)).fetchone()  # noqa: S608
        if row is None or row[0] != ident:
            return f"row {rowid} of {table} changed since the checkpoint (erased?)"
    return None


def bandit_decisions_after(store: SqliteStore, decisions_rowid: int, reason: str, prefix: str | None = None
                           ) -> Iterator[tuple[str, dict[str, float], list[str]]]:
    """(decision_id, context, eligible steps) of the decisions with ``reason`` (or a reason starting with
    ``prefix``) logged after the mark, in log order."""
    match, args = "reason = ?", [decisions_rowid, reason]
    if prefix:
        match, args = "(reason = ? OR substr(reason, 1, ?) = ?)", [*args, len(prefix), prefix]
    cur = store.conn.execute(f"SELECT decision_id, context, eligible FROM decisions WHERE rowid > ? AND {match} "
                             "ORDER BY rowid", args)
    for decision_id, context, eligible in cur:
        yield decision_id, _context(context), list(json.loads(eligible or "[]"))


def _context(text: str | None) -> dict[str, float]:
    value = json.loads(text) if text and text != "{}" else {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def device_hints(store: SqliteStore) -> Iterator[tuple[str, str]]:
    """(device_id, anonymous_id) of every stored anonymous event with a device, in ``seq`` order (what the
    full rebuild feeds to ``IdentityGraph.note_device``)."""
    yield from store.conn.execute("SELECT device_id, anonymous_id FROM events WHERE user_id = '' AND device_id != '' "
                                  "AND subject LIKE 'anon:%' ORDER BY seq")
