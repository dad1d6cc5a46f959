"""StaticCoreFlow over real gRPC: core steps in order, reasons, decisions logged with propensity 1.0, one
outcome per decision."""
from __future__ import annotations

import json
import sqlite3

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.decide.engine_api import DecisionService, StaticCoreFlow
from server.ops.app import Runtime, running_server


def static_flow(runtime: Runtime) -> StaticCoreFlow:
    return StaticCoreFlow(runtime.pipeline, runtime.catalog, runtime.metrics)


def test_core_steps_in_order_then_none_eligible(events) -> None:
    with running_server(decision_factory=static_flow) as handle, grpc.insecure_channel(handle.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        assert isinstance(handle.server.service.decisions, DecisionService)
        first = stub.GetNextStep(pb.NextStepRequest(user_id="kim", surface="in_app", context={"locale": "de"}))
        assert (first.step.id, first.reason, first.propensity, first.has_step) == ("welcome", "no_consent", 1.0, True)
        assert first.step.kind == "core" and first.step.title and first.policy_version.startswith("static-core:")
        events.grant(stub, "kim")
        events.grant(stub, "kim", purpose="personalization")
        seen = []
        for step_id in ("welcome", "profile_setup", "first_project"):
            answer = stub.GetNextStep(pb.NextStepRequest(user_id="kim"))
            seen.append((answer.step.id, answer.reason))
            stub.IngestEvents(iter([events.make("kim", "step_completed", step_id=step_id,
                                                decision_id=answer.decision_id)]))
        assert seen == [("welcome", "core"), ("profile_setup", "core"), ("first_project", "core")]
        done = stub.GetNextStep(pb.NextStepRequest(user_id="kim"))
        assert (done.has_step, done.reason, done.step.id) == (False, "none_eligible", "")

        assert stub.ReportOutcome(pb.OutcomeRequest(decision_id=first.decision_id, reward=1.0)) == \
            pb.OutcomeResponse(recorded=True, duplicate=False)
        assert stub.ReportOutcome(pb.OutcomeRequest(decision_id=first.decision_id, reward=0.0)) == \
            pb.OutcomeResponse(recorded=False, duplicate=True)
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportOutcome(pb.OutcomeRequest(decision_id="unknown", reward=1.0))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details().startswith("decision_id:")

        with sqlite3.connect(f"file:{handle.db_path}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT decision_id, user_pseudo, step_id, propensity, reason, context, eligible, "
                                "probabilities, surface FROM decisions ORDER BY timestamp_ms, rowid").fetchall()
            outcomes = conn.execute("SELECT decision_id, reward, source FROM outcomes").fetchall()
        assert len(rows) == 5
        assert rows[0][0] == first.decision_id and rows[0][1] == handle.runtime.pipeline.pseudonym("kim")
        assert rows[0][1] != "kim" and all(r[3] == 1.0 for r in rows)
        assert json.loads(rows[0][5]) == {"locale": "de"} and json.loads(rows[0][6]) == ["welcome"]
        assert json.loads(rows[0][7]) == {"welcome": 1.0} and rows[0][8] == "in_app"
        assert outcomes == [(first.decision_id, 1.0, "reported")]
