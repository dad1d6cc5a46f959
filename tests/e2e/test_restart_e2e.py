"""Restart on the same database: profiles, consent, identity links and tombstones come back from SQLite, the
pseudonym key from the key file beside it, and duplicates are still detected."""
from __future__ import annotations

import pathlib

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.decide.engine_api import StaticCoreFlow
from server.ops.app import Runtime, running_server


def static_flow(runtime: Runtime) -> StaticCoreFlow:
    return StaticCoreFlow(runtime.pipeline, runtime.catalog, runtime.metrics)


def test_state_is_rebuilt_after_a_restart(tmp_path: pathlib.Path, events) -> None:
    db = tmp_path / "onramp.db"
    with running_server(db_path=db, decision_factory=static_flow) as first, grpc.insecure_channel(first.address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        events.grant(stub, anonymous_id="cookie")
        events.grant(stub, "hana", purpose="personalization")
        events.grant(stub, "ivan", granted=False)
        events.grant(stub, "jay")
        sent = [events.make("", "feature_used", anonymous_id="cookie", channel="web", feature="reports"),
                events.make("hana", "identify", anonymous_id="cookie", device_id="pixel-7"),
                events.make("hana", "session_start", channel="android"),
                events.make("hana", "step_completed", step_id="welcome", channel="email"),
                *events.many(2, "jay")]
        assert stub.IngestEvents(iter(sent)).accepted == 6
        erased = stub.EraseUser(pb.EraseUserRequest(user_id="jay"))
        assert erased.deleted["events"] == 2
        before = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="hana"))
        decision = stub.GetNextStep(pb.NextStepRequest(user_id="hana"))
        pseudonym = first.runtime.pipeline.pseudonym("hana")
    assert before.event_count == 4

    with running_server(db_path=db, decision_factory=static_flow) as second, grpc.insecure_channel(second.address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        after = stub.GetUserProfile(pb.GetUserProfileRequest(anonymous_id="cookie"))  # identity link rebuilt
        assert after.subject == "hana"
        assert after.event_count == before.event_count
        assert dict(after.features_used) == dict(before.features_used) == {"reports": 1}
        assert dict(after.channels) == dict(before.channels)
        assert list(after.steps_completed) == ["welcome"] and after.sessions == 1
        assert {(l.kind, l.alias) for l in after.links} == {(l.kind, l.alias) for l in before.links}
        assert {(c.purpose, c.granted) for c in after.consents} == {("tracking", True), ("personalization", True)}
        # duplicates are still detected
        again = stub.IngestEvents(iter(sent[:4]))
        assert (again.accepted, again.duplicates) == (0, 4)
        # consent state: ivan opted out, jay erased (tombstone), an anonymous-only event resolves to hana
        out = stub.IngestEvents(iter([events.make("ivan"), events.make("jay"),
                                      events.make("", anonymous_id="cookie", feature="boards"),
                                      events.make("", device_id="pixel-7", anonymous_id="fresh")]))
        assert {d.reason: d.count for d in out.dropped} == {"opted_out": 1, "erased": 1}
        assert out.accepted == 2
        profile = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="hana"))
        assert profile.event_count == 6
        # the pseudonym key is read from the key file again: decisions before and after share the pseudonym
        assert second.runtime.pipeline.pseudonym("hana") == pseudonym
        nxt = stub.GetNextStep(pb.NextStepRequest(user_id="hana"))
        assert nxt.step.id == "profile_setup", nxt
        export = stub.ExportUserData(pb.ExportUserDataRequest(user_id="hana"))
        assert {d.decision_id for d in export.decisions} >= {decision.decision_id}
        assert len(export.decisions) == 2
