"""The event log's layout (server/store/events.py): an event_id is stored once among events whose time is
within the dedupe window, an older one is stored again and reported as such, the dedupe levels merge and
prune without losing an id of the window, erasure takes a person's ids out of the window, per-subject access
finds a person's events in every epoch of the subject index (and SQLite searches that index for it), and a
database written with the unique event_id index (Onramp at main b6789c1) or the index on subject alone is
converted when opened for writing."""
from __future__ import annotations

import pathlib
import shutil
import sqlite3
import threading
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import server.store.events as events_mod
from server.base.clock import now_ms
from server.store.events import (EPOCH_SIZE, HOUR_MS, LAYOUT, LAYOUT_KEY, LEVELS, OLD_SUBJECT_INDEX, RUNS_TABLE,
                                 SUBJECT_INDEX)
from server.store.id_filter import KeyFilter
from server.store.sqlite import SqliteStore, SubjectKeys

DATA = pathlib.Path(__file__).parent / "data"
NOW = now_ms()
WINDOW_H = 168


def rows(*events: tuple[str, int], subject: str = "u1") -> list[Any]:
    """Flat EVENT_COLUMNS values of (event_id, timestamp_ms) pairs."""
    flat: list[Any] = []
    for eid, ts in events:
        flat.extend((eid, subject, subject, "", "", "feature_used", ts, NOW, "web", "", "", "", "", "{}"))
    return flat


def expect(model: dict[str, int], part: list[tuple[str, int]], horizon: int) -> tuple[set[int], set[int]]:
    """The positions an append of ``part`` ((event_id, event time) pairs) must report as duplicates and as outside
    the window starting at ``horizon``, by a model of the window (id -> newest event time stored), which it
    updates with the ids stored."""
    duplicates, outside = set(), set()
    for i, (eid, ts) in enumerate(part):
        if ts < horizon:
            outside.add(i)
        elif model.get(eid, horizon - 1) >= horizon:
            duplicates.add(i)
        else:
            model[eid] = ts
    return duplicates, outside


def stored_ids(store: SqliteStore) -> list[str]:
    return [e.event_id for _, e in store.iter_events()]


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "e.db", dedupe_window_hours=WINDOW_H)
    yield s
    s.close()


def test_an_id_is_stored_once_within_the_window_and_again_outside_it(store: SqliteStore) -> None:
    old = NOW - (WINDOW_H + 1) * HOUR_MS
    first = store.append_new_events(rows(("a", NOW), ("b", NOW - HOUR_MS), ("old", old), ("a", NOW)), NOW)
    assert first.duplicates == {3} and first.outside_window == {2}  # "a" twice in one call: stored once
    again = store.append_new_events(rows(("b", NOW - HOUR_MS), ("a", NOW), ("old", old), ("c", NOW)), NOW)
    assert again.duplicates == {0, 1} and again.outside_window == {2}
    assert stored_ids(store) == ["a", "b", "old", "old", "c"]  # the old id stored again, as reported
    assert store.existing_event_ids(["a", "b", "c", "old", "zz"], NOW) == {"a", "b", "c"}
    # the window is counted from the server's clock: a week later, "a" may be stored again
    later = NOW + (WINDOW_H + 1) * HOUR_MS
    assert store.append_new_events(rows(("a", NOW)), later) == events_mod.Appended(frozenset(), frozenset({0}))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2 * WINDOW_H)), min_size=1, max_size=80),
       st.integers(1, 6), st.lists(st.integers(0, 60), min_size=27, max_size=27))
@example([(i, 1) for i in range(10)] + [(0, 1)], 1, [0] * 27)  # id0 re-sent after two merges and seals
@example([(i, 1) for i in range(12)] + [(0, 1), (13, 1), (1, 200)], 1, [0, 0, 0, 0, WINDOW_H])  # two runs dropped
def test_levels_merge_seal_and_drop_without_losing_an_id_of_the_window(
        tmp_path_factory: pytest.TempPathFactory, sends: list[tuple[int, int]], level_rows: int,
        hours: list[int]) -> None:
    """Against a model (a dict of id -> newest event time stored): with levels a few rows large, every
    merge, seal and drop of a run happens, each append stores exactly the ids the model says are new (each id
    of the window once), every id of the window stays held, and no run outlives its newest event time."""
    path = tmp_path_factory.mktemp("levels") / "l.db"
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (level_rows, level_rows * 2))
    s = SqliteStore(path, dedupe_window_hours=WINDOW_H)
    try:
        model: dict[str, int] = {}
        clock = NOW
        expected: list[str] = []
        for k in range(0, len(sends), 3):
            clock += hours[k // 3] * HOUR_MS  # the server's clock: runs leave the window within an example
            horizon = clock - WINDOW_H * HOUR_MS
            part = [(f"id{n}", clock - age * HOUR_MS) for n, age in sends[k:k + 3]]
            want_dup, want_out = expect(model, part, horizon)
            s.begin()
            got = s.append_new_events(rows(*part), clock)
            s.commit()
            assert (got.duplicates, got.outside_window) == (want_dup, want_out)
            expected += [eid for i, (eid, _) in enumerate(part) if i not in want_dup]
            runs = s.conn.execute(f"SELECT run, newest FROM {RUNS_TABLE}").fetchall()
            assert all(newest >= horizon for _, newest in runs)  # a run that left the window is dropped
            held = {h for t in s.events.id_tables() for (h,) in s.conn.execute(f"SELECT h FROM {t}")}
            assert {events_mod.digest(eid)[0] for eid, ts in model.items() if ts >= horizon} <= held
        assert stored_ids(s) == expected
    finally:
        s.close()
        mp.undo()


def test_runs_are_dropped_once_out_of_the_window_and_a_late_resend_is_stored_again(tmp_path: pathlib.Path) -> None:
    """Runs of 4 ids sealed an hour apart in event time: as the server's clock passes each run's newest event
    time plus the window, that run's table and listing go, and the others stay; an id of a dropped run sent
    again with its old event time is stored again and counted outside the window."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    s = SqliteStore(tmp_path / "drop.db", dedupe_window_hours=WINDOW_H)
    try:
        for hour in range(3):
            ts = NOW + hour * HOUR_MS
            s.begin()
            assert not s.append_new_events(rows(*((f"h{hour}-{i}", ts) for i in range(4))), ts).duplicates
            s.commit()
        runs = s.conn.execute(f"SELECT run, newest FROM {RUNS_TABLE} ORDER BY run").fetchall()
        assert [newest for _, newest in runs] == [NOW, NOW + HOUR_MS, NOW + 2 * HOUR_MS]
        tables = s.events.id_tables()[len(LEVELS):]
        assert len(tables) == 3
        # the clock an hour and a half past the first run's window: the first run goes, the others stay
        later = NOW + WINDOW_H * HOUR_MS + HOUR_MS + HOUR_MS // 2
        s.begin()
        again = s.append_new_events(rows(("h0-0", NOW), ("h1-0", NOW + HOUR_MS), ("h2-0", NOW + 2 * HOUR_MS)), later)
        s.commit()
        assert (again.outside_window, again.duplicates) == ({0, 1}, {2})  # h1's time has just left the window too
        assert s.events.id_tables()[len(LEVELS):] == tables[2:]
        names = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not set(tables[:2]) & names
        ids = stored_ids(s)
        assert (ids.count("h0-0"), ids.count("h1-0"), ids.count("h2-0")) == (2, 2, 1)
    finally:
        s.close()
        mp.undo()


def test_lookups_find_ids_in_every_run_and_level(tmp_path: pathlib.Path) -> None:
    """Ids spread over five runs, level 1 and level 0 (by another connection after a reopen too): each is a
    duplicate when re-sent, and only those."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (3, 9))
    path = tmp_path / "runs.db"
    s = SqliteStore(path, dedupe_window_hours=WINDOW_H)
    try:
        sent = [f"id{i}" for i in range(66)]
        for k in range(0, len(sent), 2):  # a run of 12 ids sealed every 12 ids
            s.begin()
            s.append_new_events(rows(*((eid, NOW) for eid in sent[k:k + 2])), NOW)
            s.commit()
        counts = [s.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in s.events.id_tables()]
        assert len(counts) == 2 + 5 and all(counts)  # level 0, level 1 and five runs all hold ids
        assert sum(counts) == len(sent)
    finally:
        s.close()
    reopened = SqliteStore(path, dedupe_window_hours=WINDOW_H)
    try:
        assert reopened.existing_event_ids([*sent, "new"], NOW) == set(sent)
        reopened.begin()
        got = reopened.append_new_events(rows(*((eid, NOW) for eid in ["new", *sent])), NOW)
        reopened.commit()
        assert got.duplicates == frozenset(range(1, len(sent) + 1)) and not got.outside_window
    finally:
        reopened.close()
        mp.undo()


def test_erasure_takes_the_persons_ids_out_of_the_window(store: SqliteStore) -> None:
    store.append_new_events(rows(("a1", NOW), ("a2", NOW), subject="ann") + rows(("b1", NOW), subject="bob"), NOW)
    keys = SubjectKeys(("ann",), ("ann",), (), (), ())
    assert store.erase(keys)["events"] == 2
    held = {h for table in store.events.id_tables() for (h,) in store.conn.execute(f"SELECT h FROM {table}")}
    assert held == {events_mod.digest("b1")[0]}
    again = store.append_new_events(rows(("a1", NOW), subject="ann") + rows(("b1", NOW), subject="bob"), NOW)
    assert again.duplicates == {1}  # a1 is judged anew (the pipeline's consent gate drops it: tombstone)


def open_v1(tmp_path: pathlib.Path) -> pathlib.Path:
    db = tmp_path / "v1.db"
    shutil.copy(DATA / "event_log_v1.db", db)
    return db


def test_a_database_of_the_earlier_layout_is_converted_when_opened(tmp_path: pathlib.Path) -> None:
    db = open_v1(tmp_path)
    before = sqlite3.connect(db)
    rows_before = before.execute("SELECT * FROM events ORDER BY seq").fetchall()
    times = dict(before.execute("SELECT event_id, timestamp_ms FROM events"))
    before.close()
    assert len(rows_before) == 40
    reader = SqliteStore(db, readonly=True)  # the offline tools read it as it is
    assert len(list(reader.iter_events())) == 40
    reader.close()
    # 100 years of window: every id of the fixture (December 2025) is inside it
    store = SqliteStore(db, dedupe_window_hours=24 * 365 * 100)
    try:
        assert store.meta_get(LAYOUT_KEY) == LAYOUT
        indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "idx_events_event_id" not in indexes and OLD_SUBJECT_INDEX not in indexes
        assert SUBJECT_INDEX in indexes
        assert store.conn.execute("SELECT * FROM events ORDER BY seq").fetchall() == rows_before
        again = store.append_new_events(rows(*sorted(times.items())) + rows(("new", NOW)), NOW)
        assert len(again.duplicates) == 40 and not again.outside_window
        assert store.events_about(SubjectKeys(("u1", "anon:v1"), (), (), (), ()))[0].event_id == "ev-001"
    finally:
        store.close()
    SqliteStore(db).close()  # opening a converted database again changes nothing
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM events").fetchone()[0] == 41


def test_conversion_keeps_only_the_ids_within_the_window(tmp_path: pathlib.Path) -> None:
    db = open_v1(tmp_path)
    newest = sqlite3.connect(db).execute("SELECT MAX(timestamp_ms) FROM events").fetchone()[0]
    # a window reaching back to 9.5 hours before the newest event (events are an hour apart): its ten newest
    horizon = newest - 9 * HOUR_MS - HOUR_MS // 2
    store = SqliteStore(db, dedupe_window_hours=(now_ms() - horizon) / HOUR_MS)
    try:
        held = sum(store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                   for table in store.events.id_tables())
        assert held == 10 == store.conn.execute("SELECT COUNT(*) FROM events WHERE timestamp_ms >= ?",
                                                (horizon,)).fetchone()[0]
    finally:
        store.close()


def layout_2_database(path: pathlib.Path, levels: list[list[tuple[str, int]]]) -> None:
    """A database as layout 2 wrote it (Onramp at main cbf7e3b): the events, and their ids in
    ``event_ids_0``, ``event_ids_1`` and the leveled last level ``event_ids_2``, the filters of levels 1 and 2
    in ``event_ids_filter``, level 2's row count and the layout in ``meta``; the schema as that code created
    it (the other tables are created when the store opens it)."""
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, subject TEXT NOT "
              "NULL, user_id TEXT, anonymous_id TEXT, device_id TEXT, name TEXT NOT NULL, timestamp_ms INTEGER, "
              "received_ms INTEGER, channel TEXT, device_type TEXT, feature TEXT, step_id TEXT, decision_id TEXT, "
              "properties TEXT)")
    c.execute("CREATE INDEX idx_events_subject ON events (subject)")
    c.execute("CREATE TABLE [meta] ([key] TEXT PRIMARY KEY, [value] TEXT)")
    for level in ("event_ids_0", "event_ids_1", "event_ids_2"):
        c.execute(f"CREATE TABLE {level} (h INTEGER PRIMARY KEY, chk INTEGER NOT NULL, ts INTEGER NOT NULL)")
    c.execute("CREATE TABLE event_ids_filter (level INTEGER PRIMARY KEY, token INTEGER NOT NULL, body BLOB NOT NULL)")
    for i, ids in enumerate(levels):
        c.executemany("INSERT INTO events (event_id, subject, user_id, name, timestamp_ms, received_ms, properties) "
                      "VALUES (?, 'u1', 'u1', 'feature_used', ?, ?, '{}')", [(eid, ts, ts) for eid, ts in ids])
        keyed = sorted((*events_mod.digest(eid), ts) for eid, ts in ids)
        c.executemany(f"INSERT INTO event_ids_{i} (h, chk, ts) VALUES (?, ?, ?)", keyed)
        if i:
            c.execute("INSERT INTO event_ids_filter (level, token, body) VALUES (?, ?, ?)",
                      (i, 1000 + i, KeyFilter.of_sorted([h for h, _, _ in keyed]).to_bytes()))
    c.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                  [("event_log_layout", "2"), ("event_ids_2_rows", str(len(levels[2])))])
    c.commit()
    c.close()


def test_a_database_of_layout_2_opens_with_its_last_level_as_the_first_run(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "v2.db"
    levels = [[(f"l{i}-{k}", NOW - (3 - i) * HOUR_MS + k) for k in range(n)] for i, n in enumerate((5, 10, 30))]
    layout_2_database(db, levels)
    reader = SqliteStore(db, readonly=True)  # the offline tools read it as it is
    assert len(list(reader.iter_events())) == 45
    reader.close()
    store = SqliteStore(db, dedupe_window_hours=WINDOW_H)
    try:
        assert store.meta_get(LAYOUT_KEY) == LAYOUT and store.meta_get("event_ids_2_rows") is None
        names = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "event_ids_2" not in names
        assert store.conn.execute(f"SELECT run, rows, newest FROM {RUNS_TABLE}").fetchall() == \
            [(1, 30, max(ts for _, ts in levels[2]))]
        assert [lv for (lv,) in store.conn.execute("SELECT level FROM event_ids_filter")] == [1]
        assert store.events.id_tables() == [*LEVELS, "event_ids_r1"]
        sent = [e for level in levels for e in level]
        store.begin()
        again = store.append_new_events(rows(*sent, ("new", NOW)), NOW)
        store.commit()
        assert again.duplicates == frozenset(range(45)) and not again.outside_window
        assert stored_ids(store)[-1] == "new" and len(stored_ids(store)) == 46
        # the converted run leaves the window with its newest event (l2-29, 1 hour before NOW)
        later = NOW + WINDOW_H * HOUR_MS - HOUR_MS // 2
        store.begin()
        late = store.append_new_events(rows(("l2-0", later), ("l1-0", NOW - 2 * HOUR_MS)), later)
        store.commit()
        assert (late.duplicates, late.outside_window) == (frozenset(), frozenset({1}))
        assert store.events.id_tables() == list(LEVELS)
    finally:
        store.close()
    SqliteStore(db).close()  # opening a converted database again changes nothing
    assert sqlite3.connect(db).execute(f"SELECT COUNT(*) FROM {RUNS_TABLE}").fetchone()[0] == 0


@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=150), st.lists(st.integers(-2**63, 2**63 - 1), max_size=30),
       st.integers(0, 2**32 - 1))
@example([((i // 20) << 32) + i for i in range(100)], [k << 32 for k in range(-2, 8)], 5)  # equal highs over edges
def test_the_key_filter_never_rules_out_a_key_it_was_built_from(stored: list[int], others: list[int],
                                                                 low: int) -> None:
    """Every stored key (and only keys sharing a stored key's high half) is "maybe", in blocks and across
    their edges (up to 150 keys: ten blocks); keys that differ from a stored one in the low half only are the
    filter's false positives."""
    half = len(stored) // 2
    f = KeyFilter.of_sorted(sorted(set(stored[:half]))).with_sorted(sorted(set(stored[half:])))
    f = KeyFilter.from_bytes(f.to_bytes())
    near = [((k >> 32) << 32) | low for k in stored]
    asked = stored + others + near
    highs = {k >> 32 for k in stored}
    assert f.maybe(asked) == [k for k in asked if k >> 32 in highs]


def test_a_merge_and_a_seal_by_another_process_are_seen_by_the_next_lookup(tmp_path: pathlib.Path) -> None:
    """Two connections (two workers): the second read the filter of level 1 and the (empty) list of runs
    before the first merged new ids into level 1 and sealed runs; re-sent to the second, every one of those
    ids is a duplicate (it reads the new filter and the new runs)."""
    path = tmp_path / "two.db"
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    first, second = SqliteStore(path), SqliteStore(path)
    try:
        second.begin()
        assert second.append_new_events(rows(("seed", NOW)), NOW).duplicates == frozenset()
        second.commit()
        sent = [(f"e{i}", NOW) for i in range(14)]
        for k in range(0, len(sent), 2):
            first.begin()
            first.append_new_events(rows(*sent[k:k + 2]), NOW)
            first.commit()
        tables = first.events.id_tables()
        assert first.conn.execute(f"SELECT COUNT(*) FROM {LEVELS[1]}").fetchone()[0] > 0 and len(tables) > 3
        second.begin()
        got = second.append_new_events(rows(*sent), NOW)
        second.commit()
        assert got.duplicates == frozenset(range(len(sent)))
        assert stored_ids(second) == ["seed", *(eid for eid, _ in sent)]
    finally:
        first.close()
        second.close()
        mp.undo()


SENDS = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2 * WINDOW_H)), min_size=1, max_size=6)


@settings(max_examples=80, deadline=None)
@given(SENDS, st.lists(SENDS, max_size=8), SENDS, st.integers(0, 6),
       st.lists(st.one_of(st.tuples(st.just("send"), SENDS), st.tuples(st.just("erase"), st.integers(0, 2)),
                          st.tuples(st.just("wait"), st.integers(1, WINDOW_H))), max_size=6))
@example([(1, 0)], [[(2, 0), (3, 0), (4, 0), (5, 0)]], [(1, 0), (2, 0), (6, 0)], 6, [])  # found in a run, ahead
@example([(1, 0)], [], [(1, 0), (7, 0)], 6, [("send", [(7, 0), (8, 0), (9, 0), (10, 0)])])  # sent by B meanwhile
@example([(1, 0)], [[(2, 0), (5, 0), (8, 0), (11, 0)]], [(2, 0), (5, 0)], 6, [("erase", 2)])  # erased meanwhile
@example([(1, 0)], [[(2, 0), (3, 0), (4, 0), (5, 0)]], [(2, 0), (3, 0)], 6, [("wait", WINDOW_H), ("wait", 1)])
@example([(1, 0)], [[(2, 0), (3, 0), (4, 0), (5, 0)]], [(6, 0), (2, 0), (3, 0)], 1, [])  # in a run, not ahead
def test_a_look_ahead_before_another_writers_changes_answers_as_asking_everything(
        tmp_path_factory: pytest.TempPathFactory, first: list[tuple[int, int]], earlier: list[list[tuple[int, int]]],
        batch: list[tuple[int, int]], ahead_of: int, meanwhile: list[tuple[str, Any]]) -> None:
    """Writer A looks the first ``ahead_of`` ids of a batch up ahead (outside its transaction; the others join
    later, as batches queued while the write lock was awaited), then writer B (another connection, as another
    worker) sends ids, merging, sealing and dropping runs (levels a few rows large), erases a person or lets
    time pass; A's append of the batch given that look-ahead stores exactly the ids a model of the window says
    are new. Ids the window held in level 1 or a run at the look-ahead are in it (it looked them up)."""
    path = tmp_path_factory.mktemp("ahead") / "a.db"
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    a, b = SqliteStore(path, dedupe_window_hours=WINDOW_H), SqliteStore(path, dedupe_window_hours=WINDOW_H)
    model: dict[str, int] = {}  # id -> newest event time stored
    clock = NOW

    def subject(eid: str) -> str:
        return f"s{int(eid[2:]) % 3}"

    def send(store: SqliteStore, sends: list[tuple[int, int]], ahead: Any = None) -> None:
        part = [(f"id{n}", clock - age * HOUR_MS) for n, age in sends]
        want_dup, want_out = expect(model, part, clock - WINDOW_H * HOUR_MS)
        flat = [v for eid, ts in part for v in rows((eid, ts), subject=subject(eid))]
        store.begin()
        got = store.append_new_events(flat, clock, ahead=ahead)
        store.commit()
        assert (got.duplicates, got.outside_window) == (want_dup, want_out)

    try:
        for sends in [first, *earlier]:
            send(b, sends)
        keys = [events_mod.digest(f"id{n}")[0] for n, _ in batch[:ahead_of]]
        ahead = a.look_ahead(keys)
        assert not a.conn.in_transaction and not a.write_lock.held
        level_0 = {h for (h,) in a.conn.execute(f"SELECT h FROM {LEVELS[0]}")}
        held = {h for t in a.events.id_tables() for (h,) in a.conn.execute(f"SELECT h FROM {t}")} - level_0
        assert set(keys) & held <= {h for _, hits in ahead.parts.values() for h in hits}
        for kind, arg in meanwhile:
            if kind == "send":
                send(b, arg)
            elif kind == "erase":
                b.begin()
                b.erase(SubjectKeys((f"s{arg}",), (f"s{arg}",), (), (), ()))
                b.commit()
                model = {eid: ts for eid, ts in model.items() if subject(eid) != f"s{arg}"}
            else:
                clock += arg * HOUR_MS
        send(a, batch, ahead)
    finally:
        a.close()
        b.close()
        mp.undo()


def test_one_look_ahead_serves_both_appends_of_a_transaction_across_its_own_merge_and_seal(store: SqliteStore) -> None:
    """As an ingest job with an identify event: its first append merges level 0 into level 1 and seals level 1
    as a run, and its second append, given the same look-ahead, still finds the ids the first stored and those
    level 1 held at the look-ahead. With level 1's filter row missing (a database converted from layout 2), the
    look-ahead leaves level 1 to the append, which finds its ids."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    try:
        store.append_new_events(rows(("x0", NOW), ("x1", NOW)), NOW)  # merged into level 1
        ids = ["x0", "x1", "y0", "y1", "y2", "y3"]
        ahead = store.look_ahead([events_mod.digest(eid)[0] for eid in ids])
        assert {h for _, hits in ahead.parts.values() for h in hits} == {events_mod.digest(e)[0] for e in ids[:2]}
        store.begin()
        first = store.append_new_events(rows(("y0", NOW), ("y1", NOW)), NOW, ahead=ahead)  # merge, then seal
        assert not store.conn.execute(f"SELECT COUNT(*) FROM {LEVELS[1]}").fetchone()[0]
        second = store.append_new_events(rows(("x0", NOW), ("y0", NOW), ("y2", NOW), ("y3", NOW)), NOW, ahead=ahead)
        store.commit()
        assert (first.duplicates, second.duplicates) == (frozenset(), frozenset({0, 1}))

        store.append_new_events(rows(("z0", NOW), ("z1", NOW)), NOW)  # level 1: z0, z1
        store.conn.execute("DELETE FROM event_ids_filter WHERE level = 1")
        ahead = store.look_ahead([events_mod.digest(eid)[0] for eid in ("z0", "z2")])
        assert LEVELS[1] not in ahead.parts
        store.begin()
        again = store.append_new_events(rows(("z0", NOW), ("z2", NOW)), NOW, ahead=ahead)
        store.commit()
        assert again.duplicates == frozenset({0})
    finally:
        mp.undo()


def test_the_union_of_the_runs_is_built_ahead_and_adopted_by_the_first_lookup(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """A store opened on runs written earlier builds their union on a thread of its own; its first lookup adopts
    it (and merges a run sealed since), and finds every id. When the build fails, the lookup builds it and says
    so."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    path = tmp_path / "preload.db"
    writer = SqliteStore(path, dedupe_window_hours=WINDOW_H)
    sent = [f"id{i}" for i in range(26)]
    try:
        for k in range(0, 20, 2):  # five runs of 4 ids
            writer.append_new_events(rows(*((eid, NOW) for eid in sent[k:k + 2])), NOW)
        store = SqliteStore(path, dedupe_window_hours=WINDOW_H)
        runs, built = store.preload_id_filters().result(30)
        assert len(runs) == 5 and built is not None and len(built[0]) == 5 and len(built[1]) == 20
        for k in range(20, 26, 2):  # another run sealed after the build
            writer.append_new_events(rows(*((eid, NOW) for eid in sent[k:k + 2])), NOW)
        merged: list[int] = []  # how many filters each union built here merges
        union_of = KeyFilter.union_of.__func__
        mp.setattr(KeyFilter, "union_of", classmethod(lambda cls, fs: merged.append(len(fs)) or union_of(cls, fs)))
        store.begin()
        got = store.append_new_events(rows(*((eid, NOW) for eid in [*sent, "new"])), NOW)
        store.commit()
        assert got.duplicates == frozenset(range(len(sent)))
        assert merged == [2]  # the union built ahead, and the run sealed since: not the six runs again
        store.close()

        failing = SqliteStore(path, dedupe_window_hours=WINDOW_H)

        def broken() -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")
        with pytest.raises(sqlite3.OperationalError):
            failing.events.preload(broken).result(30)
        with caplog.at_level("ERROR", logger="server.store.events"):
            assert failing.existing_event_ids([*sent, "other"], NOW) == set(sent)
        assert "reading them when first needed" in caplog.text
        failing.close()
    finally:
        writer.close()
        mp.undo()


def jump_to_epoch(store: SqliteStore, epoch: int) -> None:
    """Make the next appended event the first of ``epoch`` (as if the events between had been stored and erased)."""
    store.conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (epoch * EPOCH_SIZE - 1,))


def test_per_subject_access_finds_events_in_every_epoch(store: SqliteStore) -> None:
    """A person's events spread over epochs 0, 1, 3 and 7 (epochs between without any of theirs, one without any
    event at all) are read, counted, re-keyed and erased in full; nobody else's are touched."""
    placed: dict[int, list[int]] = {}
    for n, epoch in enumerate((0, 1, 3, 7)):
        if epoch:
            jump_to_epoch(store, epoch)
        store.append_new_events(rows((f"ann-{n}", NOW), (f"anon-{n}", NOW), subject="ann")
                                + rows((f"bob-{n}", NOW), subject="bob")
                                + rows((f"v-{n}", NOW), subject="anon:v"), NOW)
        placed[epoch] = [seq for (seq,) in store.conn.execute("SELECT seq FROM events WHERE event_id = ?",
                                                              (f"ann-{n}",))]
    assert sorted(seq >> events_mod.EPOCH_BITS for seqs in placed.values() for seq in seqs) == [0, 1, 3, 7]
    ann = SubjectKeys(("ann",), ("ann",), (), (), ())
    assert [e.event_id for e in store.events_about(ann)] == [f"{p}-{n}" for n in range(4) for p in ("ann", "anon")]
    assert store.rows_about(ann)["events"] == 8
    assert store.rekey_subjects(["anon:v"], "ann") == 4
    assert store.events.count_about(["ann"]) == 12 and store.events.count_about(["anon:v"]) == 0
    assert store.erase(ann)["events"] == 12
    assert [e.event_id for e in store.events_about(SubjectKeys(("bob",), ("bob",), (), (), ()))] == \
        [f"bob-{n}" for n in range(4)]
    assert store.events.count_about(["ann", "anon:v"]) == 0


def test_per_subject_statements_search_the_epoch_index(store: SqliteStore) -> None:
    """Every statement that reads, re-keys or deletes a person's events searches the subject index by epoch and
    subject (SQLite's plan), never scans the log."""
    for epoch in (0, 2):
        jump_to_epoch(store, epoch) if epoch else None
        store.append_new_events(rows((f"a{epoch}", NOW), subject="ann") + rows((f"b{epoch}", NOW), subject="bob"),
                                NOW)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        ann = SubjectKeys(("ann",), ("ann",), (), (), ())
        store.events_about(ann)
        store.rows_about(ann)
        store.rekey_subjects(["bob"], "bob2")
        store.erase(ann)
    finally:
        store.conn.set_trace_callback(None)
    per_subject = [q for q in statements if " events " in f"{q} " and "subject IN" in q]
    assert len(per_subject) >= 5, per_subject  # read, count, re-key, the erased ids, delete
    for q in per_subject:
        plan = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {q}")]
        assert any(f"INDEX {SUBJECT_INDEX} (<expr>=? AND subject=?)" in step for step in plan), (q, plan)
        assert not any(step.startswith("SCAN events") for step in plan), (q, plan)


def test_a_database_with_the_subject_index_alone_is_converted_to_epochs(tmp_path: pathlib.Path) -> None:
    """The log as Onramp wrote it before the epochs (main 7202311: an index on subject alone) opens with that
    index replaced, and a person's events are still found."""
    db = tmp_path / "old-index.db"
    old = SqliteStore(db)
    old.append_new_events(rows(("a1", NOW), ("a2", NOW), subject="ann") + rows(("b1", NOW), subject="bob"), NOW)
    old.conn.execute(f"DROP INDEX {SUBJECT_INDEX}")
    old.conn.execute(f"CREATE INDEX {OLD_SUBJECT_INDEX} ON events (subject)")
    old.close()
    store = SqliteStore(db)
    try:
        indexes = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                                    "tbl_name = 'events'")}
        assert indexes == {SUBJECT_INDEX}
        assert [e.event_id for e in store.events_about(SubjectKeys(("ann",), ("ann",), (), (), ()))] == ["a1", "a2"]
        assert store.append_new_events(rows(("a1", NOW), ("a3", NOW), subject="ann"), NOW).duplicates == {0}
    finally:
        store.close()


def test_a_run_sealed_again_under_a_dropped_runs_number_is_seen_by_another_connection(tmp_path: pathlib.Path) -> None:
    """Connection A holds the runs' union filter; B erases the person whose ids were the whole newest run (it is
    dropped) and seals new ids as a run of the same number: A still finds those ids (its union is built again),
    and no longer the erased ones."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    path = tmp_path / "union.db"
    a, b = SqliteStore(path, dedupe_window_hours=WINDOW_H), SqliteStore(path, dedupe_window_hours=WINDOW_H)
    try:
        for who in ("ann", "bob"):  # run 1: ann's 4 ids, run 2: bob's 4 ids
            for k in range(0, 4, 2):
                a.begin()
                a.append_new_events(rows(*((f"{who}{i}", NOW) for i in range(k, k + 2)), subject=who), NOW)
                a.commit()
        assert a.conn.execute(f"SELECT run FROM {RUNS_TABLE} ORDER BY run").fetchall() == [(1,), (2,)]
        assert a.existing_event_ids(["ann0", "bob3", "cat0"], NOW) == {"ann0", "bob3"}  # union built
        b.begin()
        b.erase(SubjectKeys(("bob",), ("bob",), (), (), ()))
        b.commit()
        for k in range(0, 4, 2):
            b.begin()
            b.append_new_events(rows(*((f"cat{i}", NOW) for i in range(k, k + 2)), subject="cat"), NOW)
            b.commit()
        assert b.conn.execute(f"SELECT run FROM {RUNS_TABLE} ORDER BY run").fetchall() == [(1,), (2,)]
        assert a.existing_event_ids(["ann0", "bob3", "cat0", "cat3"], NOW) == {"ann0", "cat0", "cat3"}
    finally:
        a.close()
        b.close()
        mp.undo()


def test_a_large_union_takes_in_a_new_run_on_a_thread_of_its_own_and_lookups_do_not_wait(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """Once the union is over MERGE_AHEAD_KEYS, a run B seals is merged into A's union on a thread of its own:
    A's lookups meanwhile return at once and find the new run's ids (its own filter is asked), and a later
    lookup adopts the merged union. A merge that fails there is done on the writer's thread at the next
    lookup."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    mp.setattr(events_mod, "MERGE_AHEAD_KEYS", 0)
    path = tmp_path / "ahead.db"
    a, b = SqliteStore(path, dedupe_window_hours=WINDOW_H), SqliteStore(path, dedupe_window_hours=WINDOW_H)
    gate = threading.Event()
    merged_union = events_mod.merged_union
    outcomes = ["merge", "fail"]  # of A's merges on a thread of their own, in turn (B's merge as they would)

    def held_back(held: Any, runs: Any) -> Any:
        if threading.current_thread().name == "onramp-id-union" and held is a.events._union:
            assert gate.wait(10)
            if outcomes.pop(0) == "fail":
                raise MemoryError("no room for the union")
        return merged_union(held, runs)
    mp.setattr(events_mod, "merged_union", held_back)

    def seal(store: SqliteStore, who: str) -> None:  # one run of 4 ids, all of ``who``
        for k in range(0, 4, 2):
            store.append_new_events(rows(*((f"{who}{i}", NOW) for i in range(k, k + 2)), subject=who), NOW)
    try:
        seal(a, "ann")
        seal(a, "bob")
        assert a.existing_event_ids(["ann0", "bob3", "cat0"], NOW) == {"ann0", "bob3"}  # built at once: none held
        seal(b, "cat")
        assert a.existing_event_ids(["ann0", "cat0", "cat3", "dan0"], NOW) == {"ann0", "cat0", "cat3"}
        assert len(a.events._union[0]) == 2  # the merge waits behind the gate; the lookup did not
        gate.set()
        a.events._merging.result(10)
        assert a.existing_event_ids(["cat1", "bob0"], NOW) == {"cat1", "bob0"}
        assert len(a.events._union[0]) == 3 and len(a.events._union[1]) == 12  # adopted
        seal(b, "dan")
        assert a.existing_event_ids(["dan0"], NOW) == {"dan0"} and len(a.events._union[0]) == 3
        with pytest.raises(MemoryError):
            a.events._merging.result(10)
        with caplog.at_level("ERROR", logger="server.store.events"):
            assert a.existing_event_ids(["dan1", "ann1", "eve0"], NOW) == {"dan1", "ann1"}
        assert len(a.events._union[0]) == 4 and "merging them on the writer's" in caplog.text
    finally:
        a.close()
        b.close()
        mp.undo()


def test_the_runs_union_takes_in_each_new_run_and_sheds_dropped_ones(tmp_path: pathlib.Path) -> None:
    """Connection A's union of the runs' keys: a run B seals is merged into it (A then finds its ids), the keys of
    runs B drops stay in it only until they are a quarter of it (then it is built from the runs again), and no id
    is ever taken for absent while a run holds it."""
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (2, 4))
    path = tmp_path / "union.db"
    a, b = SqliteStore(path, dedupe_window_hours=WINDOW_H), SqliteStore(path, dedupe_window_hours=WINDOW_H)

    def seal(store: SqliteStore, who: str) -> None:  # one run of 4 ids, all of ``who``
        for k in range(0, 4, 2):
            store.begin()
            store.append_new_events(rows(*((f"{who}{i}", NOW) for i in range(k, k + 2)), subject=who), NOW)
            store.commit()

    def union_size() -> tuple[int, int]:
        union = a.events._union
        assert union is not None
        return len(union[1]), sum(len(run.filter) for run in a.events._runs.values())

    try:
        people = [f"p{n}" for n in range(8)]
        for who in people[:4]:
            seal(a, who)
        ids = [f"{who}{i}" for who in people for i in range(4)]
        assert a.existing_event_ids(ids, NOW) == {f"{who}{i}" for who in people[:4] for i in range(4)}
        assert union_size() == (16, 16)
        for who in people[4:]:  # B seals four more runs; A merges each in when it next looks
            seal(b, who)
            assert f"{who}0" in a.existing_event_ids([f"{who}0", "nobody"], NOW)
        assert a.existing_event_ids(ids, NOW) == set(ids) and union_size() == (32, 32)
        sizes = []
        for n, who in enumerate(people[:3]):  # B erases three people: their runs are dropped
            b.begin()
            b.erase(SubjectKeys((who,), (who,), (), (), ()))
            b.commit()
            kept = {f"{p}{i}" for p in people[n + 1:] for i in range(4)}
            assert a.existing_event_ids(ids, NOW) == kept
            sizes.append(union_size())
        assert sizes == [(32, 28), (32, 24), (20, 20)]  # stale keys kept while at most a quarter, then rebuilt
    finally:
        a.close()
        b.close()
        mp.undo()
