"""bench.floor_server: the real Onramp server with part of GetNextStep skipped, so the serving benchmark can
split the cost. ``--variant floor`` must answer a constant without deciding or logging; ``nolog`` must decide
as Onramp does but write no decision row; both must keep the rest (bad input is still refused); ``fresh`` must
decide as Onramp does with nothing derived from the person's profile kept from their last ask."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from bench.bare_server import answer
from bench.common import bench_catalog, start_scenario_onramp, warm_users
from bench.floor_server import fresh_next_step
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.base.catalog import Catalog, parse_catalog
from server.decide.engine import DecisionEngine
from tests.server.engine_support import MIN_MS, Harness, run


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



def test_fresh_decides_again_from_the_profile_at_every_ask(tmp_path: Path) -> None:
    """Onramp keeps what it derived from a person's profile for their next ask; the ``fresh`` variant's asks
    derive it anew (a new cached context each time) and decide as Onramp does."""
    seen: dict[str, list[object]] = {"onramp": [], "fresh": []}

    async def scenario(h: Harness, engine: DecisionEngine) -> None:
        t = await h.consistent_user("ann")
        for name, ask in (("onramp", DecisionEngine.next_step), ("fresh", fresh_next_step)):
            for i in range(2):
                subject = h.pipeline.resolve("ann", "")
                got = await ask(engine, subject, "", {}, t + i)  # within the minute the cache keys by
                assert got.step is not None and got.reason in ("bandit", "rule"), got.reason
                seen[name].append(engine._segment_cache[subject])
            t += 10 * MIN_MS

    run(tmp_path, scenario, catalog=catalog_without_gaps())
    assert seen["onramp"][0] is seen["onramp"][1]
    assert seen["fresh"][0] is not seen["fresh"][1]


def catalog_without_gaps() -> Catalog:
    """The bench's personalized catalog: repeated asks of one person all reach the bandit or a rule."""
    return parse_catalog(bench_catalog())


def test_a_variant_runs_as_one_process_only(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import floor_server

    with pytest.raises(SystemExit) as exc:
        floor_server.main(["--variant", "floor", "--workers", "2", "serve", "--port", "0"])
    assert exc.value.code == 2
    assert "runs as one process" in capsys.readouterr().err
