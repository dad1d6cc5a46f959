"""Unary calls of OnrampClient against a fake server: field mapping, API-key metadata, deadlines, retries."""
from __future__ import annotations

import collections
from collections.abc import Callable

import grpc
import pytest

from fake_onramp import FakeServer
from onramp.v1 import onramp_pb2 as pb
from onramp_client import NextStep, OnrampClient, OnrampError

MakeClient = Callable[..., OnrampClient]


def test_next_step_maps_request_and_response(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client()
    step = client.next_step("u1", surface="email", context={"device_type": "mobile", "locale": "de"},
                            timestamp_ms=1_700_000_000_000)
    assert step == NextStep(decision_id="d-u1", step_id="advanced_tip_reports", title="Try saved reports",
                            channel="email", kind="personalized", feature="reports", has_step=True,
                            propensity=0.25, reason="bandit", policy_version="pv-7",
                            experiment="tailored_vs_generic", arm="tailored", segments=("engaged", "cluster:2"))
    (call,) = fake.servicer.calls("GetNextStep")
    assert call.request == pb.NextStepRequest(user_id="u1", surface="email", timestamp_ms=1_700_000_000_000,
                                              context={"device_type": "mobile", "locale": "de"})
    anon = client.next_step(anonymous_id="a1")
    assert anon.decision_id == "d-anon:a1" and anon.channel == "in_app"


def test_next_step_without_a_step(fake: FakeServer, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake.servicer, "GetNextStep", lambda request, context: pb.NextStepResponse(
        decision_id="d9", has_step=False, propensity=1.0, reason="capped"))
    fake.restart()  # handlers are bound when the server starts
    step = make_client().next_step("u1")
    assert (step.has_step, step.step_id, step.title, step.reason, step.decision_id) == (False, "", "", "capped", "d9")


def test_report_outcome_true_then_false_for_duplicate(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client()
    assert client.report_outcome("d1", 1.0, outcome="completed", timestamp_ms=5) is True
    assert client.report_outcome("d1", 0.0) is False
    first = fake.servicer.calls("ReportOutcome")[0].request
    assert first == pb.OutcomeRequest(decision_id="d1", reward=1.0, outcome="completed", timestamp_ms=5)


def test_consent_erase_export_profile(fake: FakeServer, make_client: MakeClient) -> None:
    client = make_client()
    assert client.set_consent("u1", purpose="tracking", granted=False, source="settings_page") == {
        "tracking": False, "personalization": False}
    assert fake.servicer.calls("SetConsent")[0].request == pb.ConsentRequest(
        user_id="u1", purpose="tracking", granted=False, source="settings_page")
    assert client.set_consent(anonymous_id="a1") == {"tracking": True, "personalization": False}
    assert fake.servicer.calls("SetConsent")[1].request.anonymous_id == "a1"

    assert client.erase_user("u1") == {"events": 12, "decisions": 3, "identity_links": 1}
    assert fake.servicer.calls("EraseUser")[0].request == pb.EraseUserRequest(user_id="u1")

    client.track("feature_used", user_id="u2", feature="reports", event_id="x1")
    client.flush(timeout=10)
    export = client.export_user_data("u2")
    assert isinstance(export, pb.UserDataExport)
    assert [e.event_id for e in export.events] == ["x1"] and export.profile.event_count == 1

    profile = client.get_profile(anonymous_id="a3")
    assert isinstance(profile, pb.UserProfile)
    assert (profile.subject, profile.sessions, dict(profile.features_used)) == ("anon:a3", 4, {"reports": 3})


def test_api_key_travels_on_every_call(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.required_key = "k-123"
    client = make_client(api_key="k-123")
    client.track("feature_used", user_id="u1")
    client.flush(timeout=10)
    client.next_step("u1")
    client.report_outcome("d1", 1.0)
    client.set_consent("u1")
    client.erase_user("u1")
    client.export_user_data("u1")
    client.get_profile("u1")
    seen = [c.metadata.get("x-api-key") for c in fake.servicer.unary_calls]
    assert seen == ["k-123"] * 6
    assert [md.get("x-api-key") for md in fake.servicer.stream_metadata] == ["k-123"]
    assert all(md.get("user-agent", "").startswith("onramp-client/") for md in fake.servicer.stream_metadata)


def test_no_api_key_sends_no_header(fake: FakeServer, make_client: MakeClient) -> None:
    make_client().next_step("u1")
    assert "x-api-key" not in fake.servicer.unary_calls[0].metadata


def test_wrong_api_key_is_a_readable_error(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.required_key = "right"
    with pytest.raises(OnrampError) as info:
        make_client(api_key="wrong").next_step("u1")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert str(info.value) == "GetNextStep: UNAUTHENTICATED: fake: invalid API key"


def test_deadline_exceeded_surfaces_and_is_not_retried(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.unary_delay = 20.0  # released at teardown
    # deadlines long enough for each call to reach the server on a loaded machine (it counts them)
    client = make_client(timeout=1.0)
    with pytest.raises(OnrampError) as info:
        client.next_step("u1")
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.method == "GetNextStep"
    with pytest.raises(OnrampError) as info:
        client.get_profile("u1", timeout=0.6)  # per-call timeout
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(fake.servicer.unary_calls) == 2


def test_unavailable_is_retried_with_backoff(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.unary_failures = {"ReportOutcome": [grpc.StatusCode.UNAVAILABLE] * 2}
    assert make_client(timeout=10).report_outcome("d1", 1.0) is True
    assert len(fake.servicer.calls("ReportOutcome")) == 3


def test_unary_retries_stop_at_max_retries(fake: FakeServer, make_client: MakeClient) -> None:
    fake.servicer.unary_failures = {"SetConsent": [grpc.StatusCode.UNAVAILABLE] * 10}
    with pytest.raises(OnrampError) as info:
        make_client(timeout=10, max_retries=2).set_consent("u1")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(fake.servicer.calls("SetConsent")) == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND])
def test_other_errors_are_not_retried(fake: FakeServer, make_client: MakeClient, code: grpc.StatusCode) -> None:
    fake.servicer.unary_failures = {"EraseUser": [code]}
    with pytest.raises(OnrampError) as info:
        make_client().erase_user("u1")
    assert info.value.code == code and info.value.details == f"fake: EraseUser fails with {code.name}"
    assert len(fake.servicer.calls("EraseUser")) == 1


def test_server_down_unary_call_fails_within_its_budget(make_client: MakeClient) -> None:
    client = make_client(target="127.0.0.1:1", timeout=0.5, backoff_initial=0.05, backoff_max=0.1)
    with pytest.raises(OnrampError) as info:
        client.next_step("u1")
    assert info.value.code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.mark.parametrize("connections", [1, 3])
def test_unary_calls_go_round_robin_over_the_connections(make_client, fake, connections) -> None:
    """A server of several processes sharing a port balances connections, not calls: the client's calls must
    come on ``connections`` distinct connections, evenly."""
    client = make_client(connections=connections)
    for i in range(4 * connections):
        client.next_step(f"u{i}")
    peers = collections.Counter(c.peer for c in fake.servicer.calls("GetNextStep"))
    assert len(peers) == connections and set(peers.values()) == {4}, peers


@pytest.mark.parametrize("bad", [0, 65, 2.5, True, "4"])
def test_connections_must_be_a_small_positive_integer(fake, bad) -> None:
    with pytest.raises(ValueError, match="connections: expected an integer from 1 to 64"):
        OnrampClient(fake.address, connections=bad)
