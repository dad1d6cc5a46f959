"""The learner's unlearning queue (server/store/learning_log.py) on a real SQLite store: a queued erasure keeps
each rewarded decision's reason, boosted probabilities (the rule monitor unlearns them) and decision time (the
bandit unlearns at it), and an entry queued before they were kept still reads, without them; the learner's read
of decisions and events (only the events it can use, and the position to read on from)."""
from __future__ import annotations

import json
from pathlib import Path

from server.base.clock import now_ms
from server.base.records import StoredEvent
from server.store.decision_log import JoinedRow
from server.store.learning_log import queue_unlearning, unlearning_after
from server.store.sqlite import open_store

BOOSTED = JoinedRow("d1", "core_benefits", {"x": 1.0}, 1.0, "boosted:r:core_benefits",
                    {"core_benefits": 0.6, "checklist": 0.4}, 1_700_000_000_000)
PLAIN = JoinedRow("d2", "checklist", {"x": 2.0}, 0.0, "bandit", {}, 1_700_000_060_000)


def test_a_queued_erasure_keeps_reasons_and_boosted_probabilities(tmp_path: Path) -> None:
    store = open_store(tmp_path / "onramp.db", synchronous="off")
    try:
        qid = queue_unlearning(store, ["p1"], [BOOSTED, PLAIN], {"d1": 7, "d2": 9})
        ((item, ids),) = unlearning_after(store, 0)
        assert (item.id, item.pseudonyms, item.rewarded, ids) == (qid, ("p1",), (BOOSTED, PLAIN), {"d1": 7, "d2": 9})
        # an entry in the earlier form (decision, step, context, reward, outcome id) reads without them
        old = json.dumps({"pseudonyms": ["p2"], "rewarded": [["d3", "checklist", {"x": 3.0}, 1.0, 11]]})
        store.conn.execute("INSERT INTO unlearn_queue (body) VALUES (?)", (old,))
        ((item, ids),) = unlearning_after(store, qid)
        assert (item.rewarded, ids) == ((JoinedRow("d3", "checklist", {"x": 3.0}, 1.0),), {"d3": 11})
        # and one with reason and probabilities but no decision time
        old = json.dumps({"pseudonyms": ["p3"], "rewarded": [["d4", "checklist", {"x": 4.0}, 0.0, 12, "bandit", {}]]})
        cur = store.conn.execute("INSERT INTO unlearn_queue (body) VALUES (?)", (old,))
        ((item, ids),) = unlearning_after(store, int(cur.lastrowid or 0) - 1)
        assert (item.rewarded, ids) == ((JoinedRow("d4", "checklist", {"x": 4.0}, 0.0, "bandit"),), {"d4": 12})
    finally:
        store.close()


def test_the_learner_reads_only_the_events_it_can_use_and_the_position_to_read_on_from(tmp_path: Path) -> None:
    store = open_store(tmp_path / "onramp.db", synchronous="off")
    try:
        now = now_ms()
        store.append_events([StoredEvent(eid, "u1", name, now, now) for eid, name in
                             (("e1", "feature_used"), ("e2", "checklist_done"), ("e3", "feature_used"))])
        top = store.last_event_seq()
        # no decision fed and none waiting: no event is read, and the position moves past all of them
        assert store.decisions_and_events_after(0, 0, {"checklist_done"}, waiting=False) == ([], [], top)
        # a decision waits: only the events named
        decisions, events, end = store.decisions_and_events_after(0, 0, {"checklist_done"})
        assert (decisions, [e.event_id for _, e in events], end) == ([], ["e2"], top)
        # a decision fed since: the events are read although none waited before
        store.insert_decisions([{"decision_id": "d1", "user_pseudo": "p1", "timestamp_ms": now, "step_id": "s"}])
        store.conn.execute("INSERT INTO decision_feed (decision_id) VALUES ('d1')")
        decisions, events, end = store.decisions_and_events_after(0, 0, None, waiting=False)
        assert [d.decision_id for d in decisions] == ["d1"]
        assert ([e.event_id for _, e in events], end) == (["e1", "e2", "e3"], top)
    finally:
        store.close()
