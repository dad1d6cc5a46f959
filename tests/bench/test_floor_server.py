"""bench.floor_server: the real Onramp server (interceptor, validation, identity) answering GetNextStep with a
constant, so the serving benchmark can show the cost of the server around the decision. It must really skip
the decision (no row logged) and really keep the rest (bad input is still refused)."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from bench.bare_server import answer
from bench.common import start_scenario_onramp, warm_users
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


@pytest.mark.timeout(120)
def test_floor_server_answers_a_constant_without_logging_and_still_validates(tmp_path: Path) -> None:
    db = tmp_path / "floor.db"
    srv = start_scenario_onramp("personalized", db, module="bench.floor_server")
    try:
        warm_users(srv.address, 3, scenario="personalized")  # consent and events are stored as by Onramp
        with grpc.insecure_channel(srv.address) as ch:
            stub = pb_grpc.OnrampStub(ch)
            got = stub.GetNextStep(pb.NextStepRequest(user_id="u1", timestamp_ms=int(time.time() * 1000)),
                                   timeout=10)
            expected = answer(0)
            assert got.reason == expected.reason == "bandit" and got.step == expected.step
            assert got.decision_id.startswith("d-") and got.propensity == expected.propensity
            with pytest.raises(grpc.RpcError) as err:
                stub.GetNextStep(pb.NextStepRequest(timestamp_ms=int(time.time() * 1000)), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        srv.stop()
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 0
        assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] > 0
    finally:
        con.close()
