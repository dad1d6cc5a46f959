"""The event log's layout (server/store/events.py): an event_id is stored once among events whose time is
within the dedupe window, an older one is stored again and reported as such, the dedupe levels merge and
prune without losing an id of the window, erasure takes a person's ids out of the window, and a database
written with the unique event_id index (Onramp at main b6789c1) is converted when opened for writing."""
from __future__ import annotations

import pathlib
import random
import shutil
import sqlite3
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import server.store.events as events_mod
from server.base.clock import now_ms
from server.store.events import HOUR_MS, LAYOUT, LAYOUT_KEY, LEVELS
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
       st.integers(1, 6), st.randoms(use_true_random=False))
@example([(i, 1) for i in range(10)] + [(0, 1)], 1, random.Random(1))  # id0 re-sent after two merges
def test_levels_merge_and_prune_without_losing_an_id_of_the_window(
        tmp_path_factory: pytest.TempPathFactory, sends: list[tuple[int, int]], level_rows: int,
        rnd: random.Random) -> None:
    """Against a model (a dict of id -> newest event time stored): with levels a few rows large, every
    merge and prune happens, and each append stores exactly the ids the model says are new."""
    path = tmp_path_factory.mktemp("levels") / "l.db"
    mp = pytest.MonkeyPatch()
    mp.setattr(events_mod, "LEVEL_ROWS", (level_rows, level_rows * 2))
    s = SqliteStore(path, dedupe_window_hours=WINDOW_H)
    try:
        model: dict[str, int] = {}
        clock = NOW
        expected: list[str] = []
        for k in range(0, len(sends), 3):
            clock += rnd.randint(0, 12) * HOUR_MS
            horizon = clock - WINDOW_H * HOUR_MS
            part = [(f"id{n}", clock - age * HOUR_MS) for n, age in sends[k:k + 3]]
            want_dup, want_out = set(), set()
            for i, (eid, ts) in enumerate(part):
                if ts < horizon:
                    want_out.add(i)
                elif model.get(eid, horizon - 1) >= horizon:
                    want_dup.add(i)
                else:
                    model[eid] = ts
            s.begin()
            got = s.append_new_events(rows(*part), clock)
            s.commit()
            assert (got.duplicates, got.outside_window) == (want_dup, want_out)
            expected += [eid for i, (eid, _) in enumerate(part) if i not in want_dup]
        assert stored_ids(s) == expected
    finally:
        s.close()
        mp.undo()


def test_erasure_takes_the_persons_ids_out_of_the_window(store: SqliteStore) -> None:
    store.append_new_events(rows(("a1", NOW), ("a2", NOW), subject="ann") + rows(("b1", NOW), subject="bob"), NOW)
    keys = SubjectKeys(("ann",), ("ann",), (), (), ())
    assert store.erase(keys)["events"] == 2
    held = {h for level in LEVELS for (h,) in store.conn.execute(f"SELECT h FROM {level}")}
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
        assert "idx_events_event_id" not in indexes and "idx_events_subject" in indexes
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
        held = sum(store.conn.execute(f"SELECT COUNT(*) FROM {level}").fetchone()[0] for level in LEVELS)
        assert held == 10 == store.conn.execute("SELECT COUNT(*) FROM events WHERE timestamp_ms >= ?",
                                                (horizon,)).fetchone()[0]
    finally:
        store.close()


@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=60), st.lists(st.integers(-2**63, 2**63 - 1), max_size=30),
       st.integers(0, 2**32 - 1))
def test_the_key_filter_never_rules_out_a_key_it_was_built_from(stored: list[int], others: list[int],
                                                                 low: int) -> None:
    """Every stored key (and only keys sharing a stored key's high half) is "maybe"; keys that differ from a
    stored one in the low half only are the filter's false positives."""
    half = len(stored) // 2
    f = KeyFilter.of_sorted(sorted(set(stored[:half]))).with_sorted(sorted(set(stored[half:])))
    f = KeyFilter.from_bytes(f.to_bytes())
    near = [((k >> 32) << 32) | low for k in stored]
    asked = stored + others + near
    highs = {k >> 32 for k in stored}
    assert f.maybe(asked) == [k for k in asked if k >> 32 in highs]


def test_a_merge_into_level_2_by_another_process_is_seen_by_the_next_lookup(tmp_path: pathlib.Path) -> None:
    """Two connections (two workers): the second built the filters of levels 1 and 2 before the first merged
    new ids into both; re-sent to the second, every one of those ids is a duplicate (it reads the new
    filters)."""
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
        assert [first.conn.execute(f"SELECT COUNT(*) FROM {level}").fetchone()[0] > 0 for level in LEVELS[1:]] \
            == [True, True]  # both filtered levels were merged into by the first connection
        second.begin()
        got = second.append_new_events(rows(*sent), NOW)
        second.commit()
        assert got.duplicates == frozenset(range(len(sent)))
        assert stored_ids(second) == ["seed", *(eid for eid, _ in sent)]
    finally:
        first.close()
        second.close()
        mp.undo()
