"""Consent over real gRPC: nothing stored without tracking consent, opt-out stops collection at once,
consent carries over from an anonymous visitor on identify, export returns everything, erasure leaves no
row about the person in any table and drops later events until a new grant."""
from __future__ import annotations

import sqlite3

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle
from server.store.sqlite import TABLES


def rows(handle: ServerHandle, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(f"file:{handle.db_path}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


def drops(msg: pb.IngestSummary | pb.BatchAck) -> dict[str, int]:
    return {d.reason: d.count for d in msg.dropped}


def mentions(handle: ServerHandle, needles: list[str]) -> dict[str, int]:
    """Rows of every table whose any text column contains one of ``needles`` (ids or pseudonyms)."""
    found: dict[str, int] = {}
    with sqlite3.connect(f"file:{handle.db_path}?mode=ro", uri=True) as conn:
        for table in TABLES:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            n = 0
            for row in conn.execute(f"SELECT {', '.join(cols)} FROM {table}"):
                if any(isinstance(v, str) and any(x in v for x in needles) for v in row):
                    n += 1
            if n:
                found[table] = n
    return found


def test_no_consent_means_nothing_written(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    summary = stub.IngestEvents(iter(events.many(5, "stranger")))
    assert (summary.received, summary.accepted) == (5, 0) and drops(summary) == {"no_consent": 5}
    [ack] = stub.IngestEventBatches(iter([pb.EventBatch(sequence=1, events=events.many(3, "", anonymous_id="v1"))]))
    assert ack.accepted == 0 and drops(ack) == {"no_consent": 3}
    assert rows(server, "SELECT COUNT(*) FROM events") == [(0,)]
    # personalization consent alone does not allow tracking
    events.grant(stub, "stranger", purpose="personalization")
    assert drops(stub.IngestEvents(iter(events.many(2, "stranger")))) == {"no_consent": 2}
    assert rows(server, "SELECT COUNT(*) FROM events") == [(0,)]
    # the consent decision itself is always stored (legal record), with its history
    assert rows(server, "SELECT subject, purpose, granted FROM consents") == [("stranger", "personalization", 1)]
    assert len(rows(server, "SELECT * FROM consent_history")) == 1


def test_opt_out_stops_collection_at_once(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, "u1")
    before = stub.IngestEvents(iter(events.many(4, "u1")))
    assert before.accepted == 4
    state = events.grant(stub, "u1", granted=False, source="settings_page")
    assert state.subject == "u1"
    assert [(c.purpose, c.granted, c.source) for c in state.consents] == [("tracking", False, "settings_page")]
    after = stub.IngestEvents(iter(events.many(3, "u1")))
    assert after.accepted == 0 and drops(after) == {"opted_out": 3}
    assert rows(server, "SELECT COUNT(*) FROM events WHERE subject='u1'") == [(4,)]
    history = rows(server, "SELECT granted, source FROM consent_history WHERE subject='u1' ORDER BY id")
    assert history == [(1, "test"), (0, "settings_page")]
    events.grant(stub, "u1")  # opting in again resumes collection
    assert stub.IngestEvents(iter(events.many(2, "u1"))).accepted == 2


def test_anonymous_consent_carries_over_on_identify(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, anonymous_id="cookie-1", source="cookie_banner")
    events.grant(stub, anonymous_id="cookie-1", purpose="personalization", source="cookie_banner")
    assert stub.IngestEvents(iter(events.many(3, "", anonymous_id="cookie-1"))).accepted == 3
    summary = stub.IngestEvents(iter([events.make("alice", name="identify", anonymous_id="cookie-1"),
                                      events.make("alice", name="session_start")]))
    assert summary.accepted == 2
    profile = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="alice"))
    assert {(c.purpose, c.granted) for c in profile.consents} == {("tracking", True), ("personalization", True)}
    assert all(c.source == "carried:cookie_banner" for c in profile.consents)
    # a user with a consent record of their own keeps it
    events.grant(stub, anonymous_id="cookie-2")
    events.grant(stub, "bob", granted=False)
    out = stub.IngestEvents(iter([events.make("bob", name="identify", anonymous_id="cookie-2")]))
    assert drops(out) == {"opted_out": 1}
    assert rows(server, "SELECT COUNT(*) FROM identities WHERE user_id='bob'") == [(0,)]


def test_export_then_erase_leaves_nothing(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, anonymous_id="web-anon")
    events.grant(stub, "carol")
    events.grant(stub, "carol", purpose="personalization")
    events.grant(stub, "dave")  # another user, must survive
    stub.IngestEvents(iter([
        *events.many(3, "", anonymous_id="web-anon", channel="web"),
        events.make("carol", name="identify", anonymous_id="web-anon", device_id="iphone-9", channel="ios"),
        *events.many(2, "", anonymous_id="app-anon", device_id="iphone-9", channel="ios"),
        *events.many(2, "carol", channel="email", name="screen_viewed"),
        *events.many(2, "dave"),
    ]))
    step = stub.GetNextStep(pb.NextStepRequest(user_id="carol", surface="in_app"))
    assert step.decision_id
    stub.ReportOutcome(pb.OutcomeRequest(decision_id=step.decision_id, reward=1.0, outcome="completed"))
    anon_step = stub.GetNextStep(pb.NextStepRequest(anonymous_id="web-anon"))  # resolves to carol
    pseudonyms = [server.runtime.pipeline.pseudonym(s) for s in ("carol", "anon:web-anon", "anon:app-anon")]

    export = stub.ExportUserData(pb.ExportUserDataRequest(anonymous_id="web-anon"))
    assert export.subject == "carol"
    assert {(l.kind, l.alias) for l in export.links} == {("anonymous_id", "web-anon"), ("device_id", "iphone-9")}
    assert len(export.events) == 8  # 3 web + identify + 2 ios (device-linked) + 2 email
    assert {e.channel for e in export.events} == {"web", "ios", "email"}
    assert {d.decision_id for d in export.decisions} == {step.decision_id, anon_step.decision_id}
    assert [(o.decision_id, o.reward, o.source) for o in export.outcomes] == [(step.decision_id, 1.0, "reported")]
    assert {c.purpose for c in export.consents} >= {"tracking", "personalization"}
    assert export.profile.event_count == 8 and export.profile.subject == "carol"

    erased = stub.EraseUser(pb.EraseUserRequest(user_id="carol"))
    assert erased.deleted["events"] == 8 and erased.deleted["decisions"] == 2 and erased.deleted["outcomes"] == 1
    assert erased.deleted["identities"] == 2 and erased.deleted["profiles"] == 1
    assert erased.deleted["consents"] == 3 and erased.deleted["consent_history"] == 3
    ids = ["carol", "web-anon", "app-anon", "iphone-9"]
    leftover = mentions(server, [*ids, *pseudonyms])
    assert leftover == {"tombstones": 2}  # only the keyed pseudonyms of carol and her anonymous visitor
    assert rows(server, "SELECT COUNT(*) FROM events WHERE user_id='dave'") == [(2,)]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetUserProfile(pb.GetUserProfileRequest(user_id="carol"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(stub.ExportUserData(pb.ExportUserDataRequest(user_id="carol")).events) == 0

    # Late events of the erased user (and of her linked visitor) are dropped as erased...
    late = stub.IngestEvents(iter([*events.many(2, "carol"), events.make("", anonymous_id="web-anon")]))
    assert drops(late) == {"erased": 3}
    assert mentions(server, ids) == {}
    # ...until tracking consent is granted again.
    events.grant(stub, "carol")
    assert stub.IngestEvents(iter(events.many(1, "carol"))).accepted == 1
    assert rows(server, "SELECT COUNT(*) FROM tombstones") == [(1,)]
