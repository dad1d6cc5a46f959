"""SQLite store: schema, WAL, dedupe lookups, re-keying, consent history, tombstones, decisions/outcomes,
erasure of every row about a person."""
from __future__ import annotations

import pathlib
import sqlite3

import pytest

from server.base.clock import now_ms
from server.base.records import StoredEvent
import server.store.sql
from server.store.rows import digest
from server.store.sqlite import TABLES, ConsentRow, SqliteStore, SubjectKeys
from server.store.user_state import profile_body, profile_changes_after, put_profiles, read_shows


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "t.db")
    yield s
    s.close()


def event(eid: str, subject: str = "u1", **kw: object) -> StoredEvent:
    kw.setdefault("user_id", subject if not subject.startswith("anon:") else "")
    return StoredEvent(eid, subject, kw.pop("name", "feature_used"), NOW, NOW, **kw)  # type: ignore[arg-type]


NOW = now_ms()  # events of the tests are inside the dedupe window


def test_schema_and_wal(store: SqliteStore, tmp_path: pathlib.Path) -> None:
    names = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(TABLES) <= names
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[0] for r in store.conn.execute("SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    assert any("ON events ((seq >> 16), subject)" in sql for sql in indexes)  # by epochs (server/store/events.py)
    assert not any("event_id" in sql for sql in indexes)  # ids live in the dedupe levels (server/store/events.py)
    assert {"event_ids_0", "event_ids_1", "event_id_runs"} <= names
    assert any('"decisions" ("user_pseudo")' in sql for sql in indexes)
    cols = [r[1] for r in store.conn.execute("PRAGMA table_info(events)")]
    assert cols[0] == "seq" and "properties" in cols and "decision_id" in cols
    SqliteStore(tmp_path / "t.db").close()  # reopening an existing database is fine


def test_append_lookup_and_iterate(store: SqliteStore) -> None:
    store.begin()
    store.append_events([event("a", properties={"plan": "pro"}), event("b"), event("c", "anon:x", anonymous_id="x")])
    store.commit()
    assert store.existing_event_ids(["a", "c", "zz"]) == {"a", "c"}
    assert store.existing_event_ids([f"id{i}" for i in range(12_000)] + ["b"]) == {"b"}  # chunked IN lists
    seqs, events = zip(*store.iter_events())
    assert list(seqs) == sorted(seqs) and [e.event_id for e in events] == ["a", "b", "c"]
    assert events[0].properties == {"plan": "pro"} and events[1].properties == {}
    assert [e.event_id for _, e in store.iter_events(after_seq=seqs[0])] == ["b", "c"]
    with pytest.raises(sqlite3.IntegrityError):
        store.append_events([event("a")])  # an id still in the newest dedupe level


@pytest.mark.parametrize("n", [0, 1, 3, 200, 257, 511, 700])
def test_append_keeps_order_and_every_field_for_any_count(store: SqliteStore, n: int) -> None:
    events = [StoredEvent(f"e{i}", f"u{i % 7}", "feature_used" if i % 3 else "session_start", 1_000 + i, 2_000,
                          f"u{i % 7}", f"a{i}", f"d{i}", "web", "desktop", f"f{i}", f"s{i}", f"dec{i}",
                          {"k": str(i)} if i % 2 else {}) for i in range(n)]
    store.begin()
    store.append_events(events)
    store.commit()
    assert [ev for _seq, ev in store.iter_events()] == events
    seqs = [seq for seq, _ev in store.iter_events()]
    assert seqs == sorted(seqs) and len(set(seqs)) == n


def test_a_recurring_row_count_gets_one_statement_and_rows_stay_in_order(store: SqliteStore,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.store.sql, "_exact_sizes", server.store.sql._ExactSizes())  # counts start from zero
    statements: list[str] = []
    store.conn.set_trace_callback(lambda sql: statements.append(sql) if sql.startswith("INSERT INTO events") else None)
    stored: list[StoredEvent] = []
    for k in range(6):  # 300 rows six times: 512-256-... pieces (256 + 32 + 8 + 4) until 300 recurred
        events = [event(f"r{k}-{i}", f"u{i % 5}") for i in range(300)]
        store.begin()
        store.append_events(events)
        store.commit()
        stored += events
    assert [len(s.split("), (")) for s in statements] == [256, 32, 8, 4] * 2 + [300] * 4
    assert [ev for _seq, ev in store.iter_events()] == stored


def test_append_of_a_stored_event_id_fails_as_a_whole(store: SqliteStore) -> None:
    store.begin()
    store.append_events([event("a")])
    store.commit()
    store.begin()
    with pytest.raises(sqlite3.IntegrityError):
        store.append_events([event(f"n{i}") for i in range(300)] + [event("a")])
    store.rollback()
    assert store.count("events") == 1


def test_rekey_moves_anonymous_events(store: SqliteStore) -> None:
    store.append_events([event("a", "anon:x", anonymous_id="x"), event("b", "anon:y", anonymous_id="y"),
                         event("c", "u1")])
    assert store.rekey_subjects(["anon:x", "anon:y"], "u1") == 2
    assert {e.subject for _, e in store.iter_events()} == {"u1"}


def test_consent_current_and_history(store: SqliteStore) -> None:
    store.set_consent(ConsentRow("u1", "tracking", True, "banner", 10), 11)
    store.set_consent(ConsentRow("u1", "tracking", False, "settings", 20), 21)
    assert list(store.all_consents()) == [ConsentRow("u1", "tracking", False, "settings", 20)]
    history = store.consent_history_of(["u1"])
    assert [(h.granted, h.source) for h in history] == [(True, "banner"), (False, "settings")]


def test_tombstones_links_meta(store: SqliteStore) -> None:
    store.add_tombstone("p1", 5)
    store.add_tombstone("p1", 6)
    assert store.all_tombstones() == {"p1"}
    assert store.remove_tombstone("p1") and not store.remove_tombstone("p1")
    store.link_alias("anonymous_id", "x", "u1", 5)
    store.link_alias("anonymous_id", "x", "u2", 6)  # moved
    assert [(r.alias, r.user_id) for r in store.all_links()] == [("x", "u2")]
    assert store.meta_get("k") is None
    store.meta_set("k", "v")
    store.meta_set("k", "w")
    assert store.meta_get("k") == "w"


def test_decisions_and_outcomes(store: SqliteStore) -> None:
    store.insert_decisions([{"decision_id": "d1", "user_pseudo": "p1", "timestamp_ms": 5, "step_id": "welcome",
                             "propensity": 1.0, "reason": "core", "context": {"b": "2", "a": "1"},
                             "eligible": ["welcome"], "probabilities": {"welcome": 1.0}}])
    d = store.get_decision("d1")
    assert d is not None and d["context"] == '{"a":"1","b":"2"}' and d["eligible"] == '["welcome"]'
    assert store.get_decision("nope") is None
    row = {"decision_id": "d1", "user_pseudo": "p1", "reward": 1.0, "source": "reported", "outcome": "",
           "timestamp_ms": 6}
    assert store.insert_outcome(row) is True
    assert store.insert_outcome({**row, "reward": 0.0}) is False
    assert store.get_outcome("d1")["reward"] == 1.0
    assert [o["decision_id"] for o in store.outcomes_of(["p1"])] == ["d1"]


def test_erase_removes_every_row_about_a_person(store: SqliteStore) -> None:
    store.append_events([event("a", "u1"), event("b", "anon:x", anonymous_id="x"),
                         event("c", "u2", user_id="u2", device_id="dev1"), event("d", "u2", user_id="u2")])
    store.link_alias("anonymous_id", "x", "u1", 1)
    store.link_alias("device_id", "dev1", "u1", 1)
    for subject in ("u1", "anon:x", "u2"):
        store.set_consent(ConsentRow(subject, "tracking", True, "t", 1), 1)
    store.insert_decisions([{"decision_id": "d1", "user_pseudo": "p1"}, {"decision_id": "d2", "user_pseudo": "p2"}])
    store.insert_outcome({"decision_id": "d1", "user_pseudo": "p1", "reward": 1.0})
    put_profiles(store, [("p1", 1, "{}"), ("px", 1, "{}"), ("p2", 1, "{}")])
    for pseudo in ("p1", "p2"):  # the shown history the caps read
        store.conn.execute("INSERT INTO show_history (pseudo, version, shows, tracked, last_ms) "
                           "VALUES (?, 1, '{}', 1, 1)", (pseudo,))
    keys = SubjectKeys(("u1", "anon:x"), ("u1",), ("x",), ("dev1",), ("p1", "px"))
    assert sum(store.rows_about(keys).values()) > 0
    deleted = store.erase(keys)
    assert deleted == {"events": 2, "identities": 2, "consents": 2, "consent_history": 2, "outcomes": 1,
                       "decisions": 1, "profiles": 2, "show_history": 1}
    assert sum(store.rows_about(keys).values()) == 0
    # u2's events stay, the one from u1's device included: an event belongs to the subject it was stored under
    assert [e.event_id for _, e in store.iter_events()] == ["c", "d"]
    assert store.get_decision("d2") is not None and store.count("consents") == 1
    # the other person's profile, its change row and shown history stay
    assert (profile_body(store, "p2"), read_shows(store, "p2").version) == ("{}", 1)
    assert [c.pseudo for c in profile_changes_after(store, 0)] == ["p2"]


def test_profile_bodies_and_consent_verdicts_read_back_exactly_in_chunks(store: SqliteStore) -> None:
    """The ingest job's reads inside its transaction come back as one JSON row per chunk: every body exactly as
    written (quotes, backslashes, non-ASCII), absent people left out, more people than one IN list holds."""
    odd = '{"f":{"a \\"b\\" \\\\ é ✓":1},"s":"tab\\tnl"}'
    rows = [(f"p{i}", NOW, odd if i % 7 == 0 else f'[{i}]') for i in range(6_001)]
    store.begin()
    put_profiles(store, rows)
    for i in range(6_001):
        if i % 3:
            store.set_consent(ConsentRow(f"u{i}", "tracking", i % 3 == 1, "test", NOW), NOW)
    store.set_consent(ConsentRow("u0", "personalization", True, "test", NOW), NOW)  # another purpose only
    store.commit()
    asked = [f"p{i}" for i in range(6_001)] + ["nobody"]
    assert store.profile_bodies(asked) == {p: body for p, _, body in rows}
    verdicts = store.granted_of([f"u{i}" for i in range(6_001)] + ["nobody"], "tracking")
    assert verdicts == {f"u{i}": i % 3 == 1 for i in range(6_001) if i % 3}
    assert store.granted_of([], "tracking") == {} and store.profile_bodies([]) == {}


def test_id_digests_keep_the_stored_format() -> None:
    """The dedupe window's keys on disk (levels and sealed runs) were written with these digests: blake2b-96 of
    the id, its first 8 bytes as a signed big-endian key and the last 4 as an unsigned check."""
    assert digest("0f8fad5bd9cb469fa16570867728950e") == (6598707833948693054, 2810344281)
    assert digest("e1") == (729547475541546804, 508692457)
    assert digest("e2") == (-2522096635904086873, 3383667273)
