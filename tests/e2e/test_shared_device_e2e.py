"""Export and erasure cover exactly one person when a device or an anonymous id is shared (over real gRPC).

The rule (docs/decisions.md, "Whose data is an event"): an event belongs to the subject it was stored under:
its user_id when it has one, else the user its anonymous id (or device) was linked to at that moment, else
the anonymous visitor. Ids an event merely carries (a tablet's device_id, a browser's cookie) never make it
somebody else's.
"""
from __future__ import annotations

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle


def _ids(export: pb.UserDataExport) -> set[str]:
    return {e.event_id for e in export.events}


def _export(stub: pb_grpc.OnrampStub, user: str) -> pb.UserDataExport:
    return stub.ExportUserData(pb.ExportUserDataRequest(user_id=user))


def test_shared_tablet_export_and_erase_cover_only_its_owner(server: ServerHandle, stub: pb_grpc.OnrampStub,
                                                             events) -> None:
    for user in ("ann", "bob"):
        events.grant(stub, user)
        events.grant(stub, user, purpose="personalization")
    mine: dict[str, set[str]] = {"ann": set(), "bob": set()}

    def send(owner: str, *evs: pb.Event) -> None:
        stub.IngestEvents(iter(evs))
        mine[owner].update(e.event_id for e in evs)

    # Ann signs in on the family tablet, then Bob uses it under his own account, interleaved in time.
    send("ann", events.make("ann", "identify", device_id="tablet-7", channel="ios"))
    send("ann", events.make("ann", "session_start", device_id="tablet-7", channel="ios", device_type="tablet"))
    send("bob", events.make("bob", "session_start", device_id="tablet-7", channel="ios", device_type="tablet"),
         events.make("bob", "feature_used", device_id="tablet-7", feature="reports", properties={"who": "bob"}))
    send("ann", events.make("ann", "feature_used", device_id="tablet-7", feature="boards"))
    send("bob", events.make("bob", "screen_skipped", device_id="tablet-7"),
         events.make("bob", "feature_used", device_id="tablet-7", feature="exports"))
    # A device-only event (no user id) while the tablet is linked to Ann is Ann's, as far as anyone can know.
    send("ann", events.make("", "feature_used", anonymous_id="tablet-browser", device_id="tablet-7",
                            feature="search"))
    bob_step = stub.GetNextStep(pb.NextStepRequest(user_id="bob"))
    stub.GetNextStep(pb.NextStepRequest(user_id="ann"))
    bob_before = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="bob"))
    bob_export_before = _export(stub, "bob")

    assert _ids(_export(stub, "ann")) == mine["ann"]
    assert _ids(bob_export_before) == mine["bob"]
    assert all(e.properties.get("who") != "bob" for e in _export(stub, "ann").events)

    summary = stub.EraseUser(pb.EraseUserRequest(user_id="ann"))
    assert summary.deleted["events"] == len(mine["ann"])
    assert _ids(_export(stub, "bob")) == mine["bob"]
    bob_after = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="bob"))
    assert bob_after.event_count == bob_before.event_count == len(mine["bob"])
    assert dict(bob_after.features_used) == dict(bob_before.features_used) == {"reports": 1, "exports": 1}
    after = _export(stub, "bob")
    assert [d.decision_id for d in after.decisions] == [d.decision_id for d in bob_export_before.decisions]
    assert bob_step.decision_id in {d.decision_id for d in after.decisions}
    gone = _export(stub, "ann")  # nothing of Ann is left to export
    assert not gone.events and not gone.links and not gone.decisions and not gone.consents


def test_anonymous_id_reused_after_logout(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    for user in ("cat", "dan"):
        events.grant(stub, user)
    events.grant(stub, anonymous_id="cookie-1")
    mine: dict[str, set[str]] = {"cat": set(), "dan": set()}

    def send(owner: str, *evs: pb.Event) -> None:
        stub.IngestEvents(iter(evs))
        mine[owner].update(e.event_id for e in evs)

    # Cat browses anonymously, signs in (the cookie's history becomes hers), uses the app, logs out.
    send("cat", events.make("", "session_start", anonymous_id="cookie-1", channel="web"))
    send("cat", events.make("cat", "identify", anonymous_id="cookie-1", channel="web"),
         events.make("cat", "feature_used", anonymous_id="cookie-1", feature="reports"))
    # Dan uses the same browser: his signed-in events carry the same cookie but are his; he signs in with
    # it, which moves the cookie to him for future events only.
    send("dan", events.make("dan", "session_start", anonymous_id="cookie-1", channel="web"))
    send("dan", events.make("dan", "identify", anonymous_id="cookie-1", channel="web"))
    send("dan", events.make("", "feature_used", anonymous_id="cookie-1", feature="boards"))

    assert _ids(_export(stub, "cat")) == mine["cat"]
    assert _ids(_export(stub, "dan")) == mine["dan"]
    summary = stub.EraseUser(pb.EraseUserRequest(user_id="cat"))
    assert summary.deleted["events"] == len(mine["cat"])
    dan = _export(stub, "dan")
    assert _ids(dan) == mine["dan"]
    assert {(l.kind, l.alias) for l in dan.links} == {("anonymous_id", "cookie-1")}
    assert stub.GetUserProfile(pb.GetUserProfileRequest(user_id="dan")).event_count == len(mine["dan"])
