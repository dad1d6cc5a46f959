"""The decision log's writer path: a decision is committed when ``DecisionLogger.log`` returns True (rows of
one loop iteration share one writer job, those queued behind a commit wait out the group-commit window unless full; a show decided on a shown history that moved meanwhile is refused), its JSON columns are exactly ``json.dumps(sort_keys=True,
separators=(",", ":"))``, and a stopped writer fails every waiting caller."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from server.store.decision_log import _encoded, insert_rows
from server.store.decision_logger import Decision, DecisionLogger
from server.store.rows import LoggedDecision, Shows
from server.store.sqlite import SqliteStore
from server.store.user_state import read_shows
from server.store.writer import Writer, WriterClosed


def _decision(i: int, step: str = "tip", context: dict | None = None) -> Decision:
    return Decision(f"d{i:04d}", f"p{i % 7}", 1_000 + i, "", step, 0.25 if step else 1.0, "bandit" if step else "capped",
                    "v1", "", "", context if context is not None else ({"b": 0.5, "a": 1.0} if step else {}),
                    ["tip", "tour"] if step else [], {"tip": 0.25, "tour": 0.75} if step else {},
                    5_000 + i if step else 0)


def _logged(d: Decision, version: int = 0) -> LoggedDecision:
    """What the engine logs for ``d``: a shown step also writes the person's shown history, if still at
    ``version``."""
    if not d.step_id:
        return LoggedDecision(d.flat())
    return LoggedDecision(d.flat(), d.user_pseudo, version, {d.step_id: [d.timestamp_ms]}, feed=True)


def _dumps(v: object) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


floats = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(context=st.dictionaries(st.text(max_size=8), floats, max_size=6),
       eligible=st.lists(st.text(max_size=8), max_size=5),
       probabilities=st.dictionaries(st.text(max_size=8), floats, max_size=5))
def test_json_columns_are_encoded_like_json_dumps(context, eligible, probabilities):
    row = {"decision_id": "d", "context": context, "eligible": eligible, "probabilities": probabilities}
    out = _encoded(dict(row))
    assert out["context"] == _dumps(context)
    assert out["eligible"] == _dumps(eligible)
    assert out["probabilities"] == _dumps(probabilities)
    assert _encoded(dict(out)) == out  # already encoded values (a retried job) stay as they are


@settings(max_examples=200, deadline=None)
@given(context=st.dictionaries(st.text(max_size=8), floats, max_size=6),
       eligible=st.lists(st.text(max_size=8), max_size=5),
       probabilities=st.dictionaries(st.text(max_size=8), floats, max_size=5),
       step=st.text(max_size=6), propensity=floats)
def test_flat_rows_are_the_encoded_rows_in_column_order(context, eligible, probabilities, step, propensity):
    from server.store.sqlite import DECISION_COLUMNS

    d = Decision("d1", "p1", 5, "web", step, propensity, "bandit", "v1", "exp", "arm", context, eligible,
                 probabilities, 9)
    row = _encoded(d.row())
    assert d.flat() == tuple(row[c] for c in DECISION_COLUMNS)
    assert d.flat()[DECISION_COLUMNS.index("context")] == _dumps(context)


def test_strings_and_missing_values_are_left_alone():
    assert _encoded({"context": '{"x":1}', "eligible": None}) == {"context": '{"x":1}', "eligible": None}


def test_logged_decisions_are_committed_when_log_returns(tmp_path: Path):
    store = SqliteStore(tmp_path / "d.db")
    writer = Writer(store)
    writer.start()
    reader = SqliteStore(tmp_path / "d.db", readonly=True)

    async def scenario() -> list[tuple[bool, bool]]:
        logger = DecisionLogger(writer)
        decisions = [_decision(i, "tip" if i % 2 else "") for i in range(40)]

        async def one(d: Decision) -> tuple[bool, bool]:
            logged = await logger.log(_logged(d))
            return logged, reader.get_decision(d.decision_id) is not None  # visible to another connection

        seen = await asyncio.gather(*(one(d) for d in decisions))
        assert logger.batches == 1  # one loop iteration, one writer job
        return seen

    try:
        seen = asyncio.run(scenario())
        assert all(logged == visible for logged, visible in seen)  # True: committed when log returns
        # a show is logged only at the shown history's version it was decided on: the first show of each
        # person (expected version 0) is, the later ones of the same batch find version 1 and are refused
        first_shows = {f"p{i % 7}": i for i in range(39, 0, -2)}
        assert [i for i, (logged, _) in enumerate(seen) if not logged] == \
            sorted(set(range(1, 40, 2)) - set(first_shows.values()))
        for pseudo, i in first_shows.items():
            shows = read_shows(reader, pseudo)
            assert (shows.version, {k: list(v) for k, v in shows.shows.items()}) == (1, {"tip": [1_000 + i]})
        row = reader.get_decision("d0001")
        assert row is not None
        assert row["context"] == '{"a":1.0,"b":0.5}' and row["eligible"] == '["tip","tour"]'
        assert row["probabilities"] == '{"tip":0.25,"tour":0.75}'
        empty = reader.get_decision("d0000")
        assert empty is not None and (empty["context"], empty["eligible"], empty["probabilities"]) == ("{}", "[]", "{}")
    finally:
        reader.close()
        writer.stop()
        store.close()


def test_multi_row_inserts_store_the_same_rows_as_the_store_api(tmp_path: Path):
    a, b = SqliteStore(tmp_path / "a.db"), SqliteStore(tmp_path / "b.db")
    decisions = [_decision(i, "tip" if i % 3 else "", {"x": i / 7} if i % 3 else None) for i in range(150)]
    a.begin()
    insert_rows(a, [d.row() for d in decisions])  # 64 + 64 + 22 rows
    a.commit()
    b.begin()
    b.insert_decisions([d.row() for d in decisions])
    b.commit()
    for d in decisions:
        assert a.get_decision(d.decision_id) == b.get_decision(d.decision_id) is not None
    assert a.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 150
    a.close()
    b.close()


def test_a_stopped_writer_fails_every_waiting_caller(tmp_path: Path):
    store = SqliteStore(tmp_path / "d.db")
    writer = Writer(store)
    writer.start()
    writer.stop()

    async def scenario() -> list[BaseException | None]:
        logger = DecisionLogger(writer)
        return await asyncio.gather(*(logger.log(_logged(_decision(i))) for i in range(3)), return_exceptions=True)

    try:
        results = asyncio.run(scenario())
        assert all(isinstance(r, WriterClosed) for r in results)
    finally:
        store.close()


def test_a_failing_insert_fails_the_callers_of_that_job(tmp_path: Path):
    store = SqliteStore(tmp_path / "d.db")
    writer = Writer(store)
    writer.start()

    async def scenario() -> list[BaseException | None]:
        logger = DecisionLogger(writer)
        assert await logger.log(_logged(_decision(1)))
        # d0001 again, at the history's current version: it reaches the INSERT
        return await asyncio.gather(logger.log(_logged(_decision(1), version=1)), logger.log(_logged(_decision(2))),
                                    return_exceptions=True)

    try:
        results = asyncio.run(scenario())  # d0001 again: primary key violation, the whole job fails
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
        reader = SqliteStore(tmp_path / "d.db", readonly=True)
        assert reader.get_decision("d0002") is None  # rolled back with the faulty row of its job
        assert read_shows(reader, "p2") == Shows(0, {})  # and so is its shown history
        reader.close()
    finally:
        writer.stop()
        store.close()


def _group_commit(tmp_path: Path, window_s: float, full: int, scenario) -> object:  # type: ignore[no-untyped-def]
    """Run ``scenario(logger)`` with a real writer on a real database and a logger of that window."""
    store = SqliteStore(tmp_path / "d.db")
    writer = Writer(store)
    writer.start()
    try:
        return asyncio.run(scenario(DecisionLogger(writer, window_s=window_s, full=full)))
    finally:
        writer.stop()
        store.close()


def test_a_decision_made_while_no_commit_runs_is_sent_at_once(tmp_path: Path):
    async def scenario(logger: DecisionLogger) -> float:
        t = time.perf_counter()
        assert await asyncio.wait_for(logger.log(_logged(_decision(1))), 5)
        return time.perf_counter() - t

    assert _group_commit(tmp_path, window_s=30.0, full=32, scenario=scenario) < 5  # not held for the window


def test_decisions_queued_behind_a_commit_wait_out_their_window(tmp_path: Path):
    window = 0.5

    async def scenario(logger: DecisionLogger) -> tuple[float, int]:
        first = logger.log(_logged(_decision(1)))
        await asyncio.sleep(0)  # sent: its job is with the writer
        queued_at = time.perf_counter()
        later = [logger.log(_logged(_decision(i))) for i in (2, 3, 4)]  # queued behind it
        assert await first
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in later) and logger.batches == 1  # held: their window has not ended
        assert all(await asyncio.gather(*later))
        return time.perf_counter() - queued_at, logger.batches

    waited, batches = _group_commit(tmp_path, window_s=window, full=32, scenario=scenario)
    assert waited >= window * 0.9 and batches == 2  # one commit for the three, after the window


def test_a_full_batch_is_sent_without_waiting_out_its_window(tmp_path: Path):
    async def scenario(logger: DecisionLogger) -> int:
        first = logger.log(_logged(_decision(1)))
        await asyncio.sleep(0)  # sent: its job is with the writer
        two = [logger.log(_logged(_decision(i))) for i in (2, 3)]
        assert await first
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in two)  # 2 of 4: waiting out the window
        more = [logger.log(_logged(_decision(i))) for i in (4, 5)]  # now 4 wait: full
        assert all(await asyncio.wait_for(asyncio.gather(*two, *more), 5))
        queued = [logger.log(_logged(_decision(i, ""))) for i in range(6, 14)]  # 8 behind nothing: sent at once
        assert all(await asyncio.wait_for(asyncio.gather(*queued), 5))
        return logger.batches

    assert _group_commit(tmp_path, window_s=30.0, full=4, scenario=scenario) == 3
