"""Cross-device identity over real gRPC: web, iOS and email events of one person end in one profile."""
from __future__ import annotations

import sqlite3

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle


def subjects(handle: ServerHandle) -> dict[str, int]:
    with sqlite3.connect(f"file:{handle.db_path}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT subject, COUNT(*) FROM events GROUP BY subject").fetchall())


def test_web_ios_and_email_events_build_one_profile(server: ServerHandle, stub: pb_grpc.OnrampStub, events) -> None:
    events.grant(stub, anonymous_id="web-cookie")          # cookie banner on the web
    events.grant(stub, anonymous_id="ios-install")         # consent screen in the app
    events.grant(stub, "erin")
    # Before sign-in: the web visitor and the iOS install are separate anonymous subjects.
    stub.IngestEvents(iter([
        events.make("", "session_start", anonymous_id="web-cookie", channel="web", device_type="desktop"),
        events.make("", "feature_used", anonymous_id="web-cookie", channel="web", feature="reports"),
        events.make("", "session_start", anonymous_id="ios-install", device_id="iphone-1", channel="ios",
                    device_type="mobile"),
        events.make("", "feature_used", anonymous_id="ios-install", device_id="iphone-1", channel="ios",
                    feature="boards"),
        events.make("", "screen_skipped", anonymous_id="ios-install", device_id="iphone-1", channel="ios"),
    ]))
    assert subjects(server) == {"anon:web-cookie": 2, "anon:ios-install": 3}
    # Sign-in on both devices, then an email click (backend knows the user id).
    stub.IngestEvents(iter([
        events.make("erin", "identify", anonymous_id="web-cookie", channel="web"),
        events.make("erin", "identify", device_id="iphone-1", channel="ios"),
        events.make("erin", "feature_used", channel="email", feature="reports"),
        events.make("erin", "step_completed", channel="email", step_id="welcome"),
    ]))
    assert subjects(server) == {"erin": 9}  # earlier anonymous events were re-keyed to the user
    profile = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="erin"))
    assert profile.subject == "erin" and profile.event_count == 9
    assert dict(profile.channels) == {"web": 3, "ios": 4, "email": 2}
    assert dict(profile.device_types) == {"desktop": 1, "mobile": 1}
    assert dict(profile.features_used) == {"reports": 2, "boards": 1}
    assert profile.sessions == 2 and profile.screens_skipped == 1
    assert list(profile.steps_completed) == ["welcome"]
    assert {(l.kind, l.alias) for l in profile.links} == {
        ("anonymous_id", "web-cookie"), ("device_id", "iphone-1"), ("anonymous_id", "ios-install")}
    # Any linked id names the same profile; later anonymous-only events resolve to the user.
    by_anon = stub.GetUserProfile(pb.GetUserProfileRequest(anonymous_id="ios-install"))
    assert by_anon.subject == "erin" and by_anon.event_count == 9
    stub.IngestEvents(iter([events.make("", "feature_used", anonymous_id="web-cookie", channel="web",
                                        feature="exports"),
                            events.make("", "session_start", anonymous_id="new-visitor", device_id="iphone-1")]))
    profile = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="erin"))
    assert profile.event_count == 11 and profile.features_used["exports"] == 1
    assert subjects(server) == {"erin": 11}


def test_alias_of_another_user_moves_only_future_events(server: ServerHandle, stub: pb_grpc.OnrampStub,
                                                        events) -> None:
    for u in ("frank", "gina"):
        events.grant(stub, u)
    stub.IngestEvents(iter([events.make("frank", "identify", anonymous_id="shared-laptop"),
                            events.make("", "feature_used", anonymous_id="shared-laptop", feature="a")]))
    stub.IngestEvents(iter([events.make("gina", "identify", anonymous_id="shared-laptop"),
                            events.make("", "feature_used", anonymous_id="shared-laptop", feature="b")]))
    frank = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="frank"))
    gina = stub.GetUserProfile(pb.GetUserProfileRequest(user_id="gina"))
    assert dict(frank.features_used) == {"a": 1} and dict(gina.features_used) == {"b": 1}
    assert [l.alias for l in gina.links] == ["shared-laptop"] and not frank.links
