"""The SQL of what the learner reads and writes (:class:`~server.store.interfaces.LearningLog`; functions of a
SqliteStore, bound as its methods): the feeds of new decisions and outcomes (ids that are never reused, in
commit order), the queue of erased decisions to unlearn, the learner's own saved state, and the model snapshots
it publishes for the workers.

A snapshot is ``(version, created_ms, positions, body)``: ``positions`` says which rows of each feed the models
include, so learning is exactly-once across learner restarts, and ``version`` goes into every decision's
``policy_version``, so each logged propensity names the exact model it was drawn from.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from server.base.records import StoredEvent
from server.store.decision_log import BOOSTED_PROBABILITIES, _context
from server.store.user_state import prune_profile_changes
from server.store.rows import FedDecision, FedOutcome, JoinedRow, Snapshot, Unlearning  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from server.store.sqlite import SqliteStore

KEEP_SNAPSHOTS = 3  # published snapshots kept (workers load the latest; older ones help debugging)
_EVENTS_CHUNK = 5000  # events read per query by decisions_and_events_after
SNAPSHOT_VERSION_KEY = "snapshot_version"  # meta: the last version handed out (versions never repeat)


def latest_snapshot_version(store: SqliteStore) -> int:
    """The version of the newest published snapshot (0: none yet)."""
    row = store.conn.execute("SELECT max(version) FROM model_snapshots").fetchone()
    return int(row[0] or 0)


def latest_snapshot(store: SqliteStore) -> Snapshot | None:
    row = store.conn.execute("SELECT version, created_ms, positions, body FROM model_snapshots ORDER BY version DESC "
                             "LIMIT 1").fetchone()
    if row is None:
        return None
    return Snapshot(int(row[0]), int(row[1]), json.loads(row[2]), bytes(row[3]))


def publish_snapshot(store: SqliteStore, created_ms: int, positions: Mapping[str, int], body: bytes) -> int:
    """Store a new snapshot (the next version: never one handed out before, even after
    :func:`drop_snapshots`) and drop all but the newest :data:`KEEP_SNAPSHOTS`; returns its version."""
    version = max(latest_snapshot_version(store), int(store.meta_get(SNAPSHOT_VERSION_KEY) or 0)) + 1
    store.meta_set(SNAPSHOT_VERSION_KEY, str(version))
    store.conn.execute("INSERT INTO model_snapshots (version, created_ms, positions, body) VALUES (?, ?, ?, ?)",
                       (version, created_ms, json.dumps(dict(positions), sort_keys=True), body))
    store.conn.execute("DELETE FROM model_snapshots WHERE version <= ?", (version - KEEP_SNAPSHOTS,))
    return version


def drop_snapshots(store: SqliteStore) -> int:
    """Delete every snapshot (after an erasure: the older ones learned from the person)."""
    return store.conn.execute("DELETE FROM model_snapshots").rowcount


def save_learner_state(store: SqliteStore, created_ms: int, positions: Mapping[str, int], body: bytes) -> None:
    store.conn.execute("INSERT OR REPLACE INTO learner_state (id, created_ms, positions, body) VALUES (1, ?, ?, ?)",
                       (created_ms, json.dumps(dict(positions), sort_keys=True), body))


def load_learner_state(store: SqliteStore) -> Snapshot | None:
    row = store.conn.execute("SELECT 0, created_ms, positions, body FROM learner_state WHERE id = 1").fetchone()
    if row is None:
        return None
    return Snapshot(0, int(row[1]), json.loads(row[2]), bytes(row[3]))


def drop_learner_state(store: SqliteStore) -> None:
    store.conn.execute("DELETE FROM learner_state")


def save_state_and_prune(store: SqliteStore, state: Snapshot, drop_published: bool = False) -> None:
    """Save the learner's state, then delete what its positions include: profile change rows and queued
    erasures (and, with ``drop_published``, every published snapshot), inside the caller's transaction."""
    save_learner_state(store, state.created_ms, state.positions, state.body)
    if drop_published:  # after an erasure: the published snapshots learned from the person (the next one did not)
        drop_snapshots(store)
    prune_profile_changes(store, state.positions.get("changes", 0))
    delete_unlearning(store, state.positions.get("unlearn", 0))


# -- feeds -----------------------------------------------------------------------------------------------------
FEED_TABLES = {"decisions": "decision_feed", "outcomes": "outcome_log", "changes": "profile_changes",
               "unlearn": "unlearn_queue"}  # the learner's positions -> tables


def last_id(store: SqliteStore, table: str) -> int:
    """The newest id of a feed table (its AUTOINCREMENT counter: ids of deleted rows are never handed out again)."""
    row = store.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return int(row[0]) if row else 0


def feed_end(store: SqliteStore, feed: str) -> int:
    """The newest position of a feed named as in the learner's positions (:data:`FEED_TABLES`)."""
    return last_id(store, FEED_TABLES[feed])


def decisions_and_events_after(store: SqliteStore, decision_pos: int, event_seq: int
                               ) -> tuple[list[FedDecision], list[tuple[int, StoredEvent]]]:
    """Every decision fed after ``decision_pos``, then events after ``event_seq``, in one read transaction: an
    event that rewards a decision is never seen before that decision."""
    decisions: list[FedDecision] = []
    events: list[tuple[int, StoredEvent]] = []
    store.conn.execute("BEGIN")
    try:
        while batch := decisions_after(store, decisions[-1].id if decisions else decision_pos):
            decisions += batch
        seq = event_seq
        while True:
            rows: list[tuple[int, StoredEvent]] = []
            for item in store.iter_events(seq):
                rows.append(item)
                if len(rows) >= _EVENTS_CHUNK:
                    break
            if not rows:
                break
            seq = rows[-1][0]
            events += rows
    finally:
        store.conn.execute("COMMIT")
    return decisions, events


def decisions_after(store: SqliteStore, after_id: int, limit: int = 5000) -> list[FedDecision]:
    cur = store.conn.execute(
        "SELECT f.id, d.decision_id, d.user_pseudo, d.timestamp_ms, d.step_id, d.reward_deadline_ms "
        "FROM decision_feed f JOIN decisions d ON d.decision_id = f.decision_id WHERE f.id > ? ORDER BY f.id LIMIT ?",
        (after_id, limit))
    return [FedDecision(*row) for row in cur]


def outcomes_after(store: SqliteStore, after_id: int, limit: int = 5000) -> list[FedOutcome]:
    cur = store.conn.execute(
        "SELECT l.id, d.decision_id, d.user_pseudo, d.timestamp_ms, d.step_id, d.context, o.reward, o.source, "
        f"d.reason, {BOOSTED_PROBABILITIES} FROM outcome_log l JOIN outcomes o ON o.decision_id = l.decision_id "
        "JOIN decisions d ON d.decision_id = l.decision_id WHERE l.id > ? ORDER BY l.id LIMIT ?", (after_id, limit))
    return [FedOutcome(i, d, u, t, s, _context(c), float(r), src, reason, _context(p))
            for i, d, u, t, s, c, r, src, reason, p in cur]


# -- unlearning -------------------------------------------------------------------------------------------------
def queue_unlearning(store: SqliteStore, pseudonyms: Sequence[str], rewarded: Sequence[JoinedRow],
                     outcome_ids: Mapping[str, int]) -> int:
    """Queue an erasure for the learner (inside the erasure's transaction); ``outcome_ids`` are the feed ids of
    the rewarded decisions' outcomes, so the learner unlearns only what it had learned. Returns the queue id."""
    body = json.dumps({"pseudonyms": list(pseudonyms),
                       "rewarded": [[r.decision_id, r.step_id, r.context, r.reward, outcome_ids.get(r.decision_id, 0),
                                     r.reason, r.probabilities, r.timestamp_ms] for r in rewarded]})
    cur = store.conn.execute("INSERT INTO unlearn_queue (body) VALUES (?)", (body,))
    return int(cur.lastrowid or 0)


def outcome_ids_of(store: SqliteStore, decision_ids: Sequence[str]) -> dict[str, int]:
    if not decision_ids:
        return {}
    cur = store.conn.execute(f"SELECT decision_id, id FROM outcome_log WHERE decision_id IN "
                             f"({','.join('?' * len(decision_ids))})", list(decision_ids))
    return dict(cur.fetchall())


def unlearning_after(store: SqliteStore, after_id: int) -> list[tuple[Unlearning, dict[str, int]]]:
    """Queued erasures after ``after_id``, with the outcome feed id of each rewarded decision."""
    out: list[tuple[Unlearning, dict[str, int]]] = []
    for qid, body in store.conn.execute("SELECT id, body FROM unlearn_queue WHERE id > ? ORDER BY id", (after_id,)):
        value: dict[str, Any] = json.loads(body)
        rows = [_queued_row(entry) for entry in value["rewarded"]]
        ids = {d: int(i) for d, _s, _c, _r, i, *_rest in value["rewarded"]}
        out.append((Unlearning(int(qid), tuple(value["pseudonyms"]), tuple(rows)), ids))
    return out


def _queued_row(entry: Sequence[Any]) -> JoinedRow:
    """One queued rewarded decision: ``[decision, step, context, reward, outcome id, reason, boosted
    probabilities, decision time]``; entries queued by earlier versions end after the outcome id or the
    probabilities, and read without what they lack."""
    d, s, c, r, _oid, *rest = entry
    reason, probabilities, ts = [*rest, *("", {}, None)[len(rest):]][:3]
    return JoinedRow(d, s, _floats(c), float(r), str(reason), _floats(probabilities),
                     None if ts is None else int(ts))


def _floats(value: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()}


def delete_unlearning(store: SqliteStore, upto_id: int) -> int:
    """Delete queued erasures the learner's saved state has removed (they hold the person's contexts)."""
    return store.conn.execute("DELETE FROM unlearn_queue WHERE id <= ?", (upto_id,)).rowcount
