"""The shown history's stored form (server/store/show_codec.py): binary values decode to the times they were
made of, rows written as JSON text before it are still read, a person's history written and read through a real
SQLite store gets the guardrail verdicts the JSON history got (every reason equal), new shows and merges keep
the latest ``keep`` times per step as before, and a value of an unknown format is refused."""
from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits.guardrails import DAY_MS, GuardrailConfig, StepSpec, UserHistory, eligible
from server.store.rows import LoggedDecision, latest_show, merged_shows, with_show
from server.store.show_codec import decode_shows, encode_shows
from server.store.sqlite import SqliteStore
from server.store.user_state import merge_show_history, read_shows

HOUR = 3_600_000
NOW = 400 * DAY_MS
STEPS = [f"s{i}" for i in range(6)]
CHANNELS = ["in_app", "email", "push"]
INT64 = st.integers(-(2 ** 63), 2 ** 63 - 1)


def lists(shows) -> dict[str, list[int]]:
    return {k: list(v) for k, v in shows.items()}


def json_text(shows) -> str:
    """A shown history as the server stored it before the binary form."""
    return json.dumps(lists(shows), sort_keys=True, separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12).filter(lambda k: "\x00" not in k), st.lists(INT64, max_size=40).map(sorted),
                       max_size=8))
def test_binary_values_decode_to_the_times_they_were_made_of(shows):
    decoded = decode_shows(encode_shows(shows))
    assert lists(decoded) == shows and list(decoded) == sorted(shows)
    assert all(type(v) is array for v in decoded.values())
    assert encode_shows(decoded) == encode_shows(shows)  # arrays and lists encode alike


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(STEPS), st.lists(st.integers(0, 2 ** 53), max_size=20), max_size=6))
def test_json_rows_of_before_are_read_with_their_times_sorted(shows):
    assert lists(decode_shows(json.dumps(shows))) == {k: sorted(v) for k, v in shows.items()}


def test_a_value_of_an_unknown_format_or_length_is_refused():
    good = encode_shows({"a": [1, 2]})
    with pytest.raises(ValueError, match="format"):
        decode_shows(b"\x07" + good[1:])
    with pytest.raises(ValueError):
        decode_shows(good + b"\x00" * 8)
    with pytest.raises(ValueError):
        decode_shows(good[:-8])
    with pytest.raises(ValueError, match="NUL"):
        encode_shows({"a\x00b": [1]})


@st.composite
def guarded(draw):
    """A catalog's guardrails and a person's shown history of up to ``keep`` times per step."""
    steps = tuple(StepSpec(sid, draw(st.sampled_from(CHANNELS)), draw(st.sampled_from(["core", "personalized"])),
                           cooldown_ms=draw(st.integers(0, 2 * DAY_MS)), max_per_day=draw(st.integers(0, 40)))
                  for sid in STEPS)
    cfg = GuardrailConfig({c: draw(st.integers(0, 60)) for c in draw(st.lists(st.sampled_from(CHANNELS), unique=True))},
                          max_per_day_total=draw(st.integers(0, 80)), min_gap_ms=draw(st.integers(0, 2 * HOUR)),
                          min_sessions_for_personalization=0)
    shows = {sid: sorted(draw(st.lists(st.integers(NOW - 3 * DAY_MS, NOW + HOUR), max_size=50)))
             for sid in draw(st.lists(st.sampled_from([*STEPS, "gone"]), unique=True))}
    return steps, cfg, shows, draw(st.sampled_from([None, "in_app", "email"])), NOW + draw(st.integers(-HOUR, HOUR))


@settings(max_examples=150, deadline=None)
@given(guarded())
def test_guardrail_verdicts_on_the_stored_history_equal_those_on_the_json_history(tmp_path_factory, case):
    steps, cfg, shows, surface, now = case
    store = SqliteStore(Path(tmp_path_factory.mktemp("shows")) / "s.db")
    try:
        store.begin()
        store.conn.execute("INSERT INTO show_history (pseudo, version, shows, tracked, last_ms) VALUES (?, 1, ?, 1, 0)",
                           ("old", json_text(shows)))
        assert store.log_decisions([LoggedDecision(("d1", "new", 1, "", "s0", 1.0, "bandit", "v", "", "", "{}", "[]",
                                                    "{}", 0), "new", 0, shows)]) == [True]
        store.commit()
        old = UserHistory(shown=json.loads(json_text(shows)))  # the JSON history, counted time by time
        expected = eligible(steps, old, cfg, now, surface)
        for pseudo in ("old", "new"):
            read = read_shows(store, pseudo)
            assert lists(read.shows) == shows
            assert eligible(steps, UserHistory(shown=read.shows, ascending=True), cfg, now, surface) == expected
        assert store.conn.execute("SELECT last_ms FROM show_history WHERE pseudo = 'new'").fetchone()[0] == \
            max((t for v in shows.values() for t in v), default=0)
    finally:
        store.close()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(STEPS), st.lists(st.integers(0, 10 ** 6), max_size=12).map(sorted), max_size=5),
       st.sampled_from(STEPS), st.integers(0, 10 ** 6), st.integers(1, 10))
def test_a_new_show_keeps_the_latest_keep_times_as_sorting_did(shows, step, ts, keep):
    stored = decode_shows(encode_shows(shows))
    out = with_show(stored, step, ts, keep)
    assert lists(out) == {**shows, step: sorted([*shows.get(step, ()), ts])[-keep:]}
    assert lists(stored) == shows  # the history read is not changed
    assert latest_show(out) == max([ts, *(t for v in shows.values() for t in v)])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(STEPS), st.lists(st.integers(0, 10 ** 6), max_size=12).map(sorted), max_size=5),
       st.dictionaries(st.sampled_from(STEPS), st.lists(st.integers(0, 10 ** 6), max_size=12).map(sorted), max_size=5),
       st.integers(1, 10))
def test_merged_histories_keep_the_latest_keep_times_as_before(a, b, keep):
    expected = {k: list(v) for k, v in a.items()}
    for step, times in b.items():
        expected[step] = sorted([*expected.get(step, ()), *times])[-keep:]
    assert lists(merged_shows(decode_shows(encode_shows(a)), decode_shows(encode_shows(b)), keep)) == expected


def test_merging_a_json_row_of_before_into_a_binary_one(tmp_path):
    store = SqliteStore(tmp_path / "m.db")
    try:
        store.begin()
        store.conn.execute("INSERT INTO show_history (pseudo, version, shows, tracked, last_ms) VALUES "
                           "('visitor', 3, ?, 0, 50)", (json.dumps({"s1": [50, 20], "s2": [40]}),))
        store.log_decisions([LoggedDecision(("d1", "user", 30, "", "s1", 1.0, "bandit", "v", "", "", "{}", "[]", "{}", 0),
                                            "user", 0, {"s1": [10, 30]})])
        merge_show_history(store, ["visitor"], "user", keep=3)
        store.commit()
        merged = read_shows(store, "user")
        assert (merged.version, lists(merged.shows)) == (2, {"s1": [20, 30, 50], "s2": [40]})
        assert read_shows(store, "visitor").version == 0
        assert type(store.conn.execute("SELECT shows FROM show_history WHERE pseudo = 'user'").fetchone()[0]) is bytes
    finally:
        store.close()
