"""bench.floor_server: the real Onramp server with part of GetNextStep skipped, so the serving benchmark can
split the cost. ``--variant floor`` must answer a constant without deciding or logging; ``nolog`` must decide
as Onramp does but write no decision row; ``offload`` must decide as Onramp does and have a separate log process
commit every row before the answer; all must keep the rest (bad input is still refused)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from bench.bare_server import answer
from bench.offload_log import child_path, serve_log
from bench.common import start_scenario_onramp, warm_users
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


def ask_twice_and_a_bad_one(address: str) -> list[pb.NextStepResponse]:
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        got = [stub.GetNextStep(pb.NextStepRequest(user_id=f"u{i}", timestamp_ms=int(time.time() * 1000)),
                                timeout=10) for i in (1, 2)]
        with pytest.raises(grpc.RpcError) as err:
            stub.GetNextStep(pb.NextStepRequest(timestamp_ms=int(time.time() * 1000)), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return got


def count(db: Path, table: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


@pytest.mark.timeout(120)
def test_floor_answers_a_constant_without_deciding_or_logging(tmp_path: Path) -> None:
    db = tmp_path / "floor.db"
    srv = start_scenario_onramp("personalized", db, module=("bench.floor_server", "--variant", "floor"))
    try:
        warm_users(srv.address, 3, scenario="personalized")  # consent and events are stored as by Onramp
        decisions_after_warm = count(db, "decisions")
        got = ask_twice_and_a_bad_one(srv.address)
    finally:
        srv.stop()
    expected = answer(0)
    assert all(g.reason == "bandit" and g.step == expected.step and g.propensity == expected.propensity
               for g in got)
    assert decisions_after_warm == count(db, "decisions") == 0
    assert count(db, "events") > 0


@pytest.mark.timeout(120)
def test_nolog_decides_like_onramp_but_writes_no_decision_row(tmp_path: Path) -> None:
    db = tmp_path / "nolog.db"
    srv = start_scenario_onramp("personalized", db, module=("bench.floor_server", "--variant", "nolog"))
    try:
        warm_users(srv.address, 3, scenario="personalized")
        got = ask_twice_and_a_bad_one(srv.address)
    finally:
        srv.stop()
    # warm users are past the personalisation threshold: the engine's bandit decided, with a real propensity
    assert [g.reason for g in got] == ["bandit", "bandit"]
    assert all(0 < g.propensity < 1 and g.has_step and len(g.decision_id) >= 20 for g in got)
    assert count(db, "decisions") == 0


@pytest.mark.timeout(120)
def test_offload_commits_every_answered_decision_in_the_log_process_before_answering(tmp_path: Path) -> None:
    db = tmp_path / "offload.db"
    srv = start_scenario_onramp("personalized", db, module=("bench.floor_server", "--variant", "offload"))
    try:
        warm_users(srv.address, 3, scenario="personalized")
        warm = count(Path(child_path(str(db))), "decisions")
        got = ask_twice_and_a_bad_one(srv.address)
        # answered only after the log process committed: the rows are readable right away
        ids = {r[0] for r in sqlite3.connect(child_path(str(db))).execute("SELECT decision_id FROM decisions")}
    finally:
        srv.stop()
    assert [g.reason for g in got] == ["bandit", "bandit"]
    assert warm == 3 and {g.decision_id for g in got} <= ids and len(ids) == 5
    assert count(db, "decisions") == 0  # none through the server's own writer


def test_log_process_commits_each_batch_and_acks_it(tmp_path: Path) -> None:
    import io
    import marshal
    import struct

    from server.store.sqlite import DECISION_COLUMNS

    row = ["d1", "p", 1, "", "s", 0.5, "bandit", "v", "e", "a", "{}", "[]", "{}", 2]
    assert len(row) == len(DECISION_COLUMNS)
    body = [marshal.dumps(row), marshal.dumps([*row[:0], "d2", *row[1:], "d3", *row[1:]])]
    inp = io.BytesIO(b"".join(struct.pack("<I", len(b)) + b for b in body))
    out = io.BytesIO()
    assert serve_log(tmp_path / "log.db", inp, out) == 2
    assert out.getvalue() == b"\x01\x01"
    assert count(tmp_path / "log.db", "decisions") == 3
    bad = io.BytesIO(struct.pack("<I", len(marshal.dumps(row[:5]))) + marshal.dumps(row[:5]))
    with pytest.raises(ValueError, match="not rows of 14"):
        serve_log(tmp_path / "log2.db", bad, io.BytesIO())
