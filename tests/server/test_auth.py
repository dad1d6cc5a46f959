"""API keys and roles: hashing, config validation, and the interceptor over real gRPC on 127.0.0.1."""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import KEYS, auth_config, captured_json_logs, key_md, ops_with, run_async, tiny_server
from server.api.auth import (
    AuthConfig, AuthConfigError, AuthError, InsecureBindError, KeyHash, KeyRing, check_bind_allowed, hash_key,
    hash_key_main, is_loopback_host, peer_host, peer_network, presented_key, required_role,
)
from server.api.serving import Operations


# -- hashing and config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["sha256", "pbkdf2", "scrypt"])
def test_hash_round_trip_and_wrong_key(scheme: str) -> None:
    stored = hash_key("correct horse", scheme)
    assert "correct horse" not in stored
    parsed = KeyHash.parse(stored)
    assert parsed.matches("correct horse")
    assert not parsed.matches("correct horsE")
    assert not parsed.matches("")


def test_salted_hashes_differ_for_the_same_key() -> None:
    assert hash_key("k", "pbkdf2") != hash_key("k", "pbkdf2")
    assert hash_key("k", "sha256") == hash_key("k", "sha256")


@pytest.mark.parametrize("bad, fragment", [
    ("plain-text-key", "expected 'sha256:<64 hex>'"),
    ("sha256:abc", "64 hex"),
    ("sha256:" + "zz" * 32, "hexadecimal"),
    ("pbkdf2_sha256:many:00:00", "bad number"),
])
def test_bad_hash_is_rejected_naming_the_key(bad: str, fragment: str) -> None:
    with pytest.raises(AuthConfigError) as err:
        AuthConfig.from_mapping({"keys": [{"name": "a", "hash": bad, "roles": ["admin"]}]})
    assert str(err.value).startswith("[auth] keys[0].hash")
    assert fragment in str(err.value)


@pytest.mark.parametrize("section, where", [
    ({"keys": [{"name": "a", "hash": hash_key("x"), "roles": ["root"]}]}, "[auth] keys[0].roles"),
    ({"keys": [{"name": "a", "hash": hash_key("x"), "roles": []}]}, "[auth] keys[0].roles"),
    ({"keys": [{"hash": hash_key("x"), "roles": ["admin"]}]}, "[auth] keys[0].name"),
    ({"keys": [{"name": "a", "hash": hash_key("x"), "roles": ["admin"]},
               {"name": "a", "hash": hash_key("y"), "roles": ["admin"]}]}, "[auth] keys[1].name"),
    ({"keys": [{"name": "a", "key": "x", "roles": ["admin"]}]}, "[auth] keys[0].key"),
    ({"enabled": True}, "[auth] enabled"),
    ({"enabled": "yes"}, "[auth] enabled"),
    ({"key": []}, "[auth] key"),
])
def test_config_errors_name_the_key(section: dict, where: str) -> None:
    with pytest.raises(AuthConfigError) as err:
        AuthConfig.from_mapping(section)
    assert str(err.value).startswith(where)


def test_auth_enabled_by_default_when_keys_are_configured() -> None:
    assert auth_config().enabled
    assert not AuthConfig.from_mapping({}).enabled
    assert not AuthConfig.from_mapping({"keys": auth_keys_raw(), "enabled": False}).enabled


def auth_keys_raw() -> list[dict]:
    return [{"name": "a", "hash": hash_key("x"), "roles": ["admin"]}]


def test_role_table() -> None:
    m = "/onramp.v1.Onramp/"
    assert [required_role(m + n) for n in ("IngestEvents", "IngestEventBatches", "ReportOutcome", "SetConsent")] \
        == ["ingest"] * 4
    assert required_role(m + "GetNextStep") == "decide"
    assert [required_role(m + n) for n in ("EraseUser", "ExportUserData", "GetUserProfile", "SomeFutureRpc")] \
        == ["admin"] * 4
    assert required_role("/other.Service/Method") == "admin"
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None


def test_presented_key_from_metadata() -> None:
    assert presented_key((("x-api-key", "abc"),)) == "abc"
    assert presented_key((("authorization", "Bearer abc"),)) == "abc"
    assert presented_key((("authorization", "bearer  abc "),)) == "abc"
    assert presented_key((("authorization", "Basic abc"),)) is None
    assert presented_key((("authorization", "Bearer xyz"), ("x-api-key", "abc"))) == "abc"
    assert presented_key(()) is None


def test_keyring_verifies_salted_keys_once_then_from_cache() -> None:
    ring = KeyRing(auth_config(scheme="pbkdf2"))
    assert ring.lookup(KEYS["ops"][0]).name == "ops"
    assert ring.lookup(KEYS["ops"][0]).name == "ops"
    assert ring.lookup("not-a-key") is None
    assert len(ring._verified) == 1


def test_peer_host_and_loopback() -> None:
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_non_loopback_bind_without_auth_needs_the_flag() -> None:
    with pytest.raises(InsecureBindError) as err:
        check_bind_allowed("0.0.0.0:50051", auth_enabled=False, allow_insecure_no_auth=False)
    assert "--allow-insecure-no-auth" in str(err.value) and "0.0.0.0:50051" in str(err.value)
    with pytest.raises(InsecureBindError):
        check_bind_allowed("[::]:50051", auth_enabled=False, allow_insecure_no_auth=False)
    assert check_bind_allowed("0.0.0.0:50051", auth_enabled=False, allow_insecure_no_auth=True) is True
    assert check_bind_allowed("127.0.0.1:50051", auth_enabled=False, allow_insecure_no_auth=False) is True
    assert check_bind_allowed("0.0.0.0:50051", auth_enabled=True, allow_insecure_no_auth=False) is False


def test_operations_warn_loudly_when_auth_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="onramp.ops"):
        Operations().check_bind("127.0.0.1:50051")
    assert any(r.levelno == logging.WARNING and "AUTHENTICATION IS OFF" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onramp.ops"):
        Operations(ops_with(auth=auth_config()).config).check_bind("0.0.0.0:50051")
    assert not caplog.records
    with pytest.raises(InsecureBindError):
        Operations().check_bind("0.0.0.0:50051")


def test_hash_key_command_reads_stdin() -> None:
    out = io.StringIO()
    assert hash_key_main([], stdin=io.StringIO("my-key\n"), stdout=out) == 0
    assert out.getvalue().strip() == hash_key("my-key")
    out = io.StringIO()
    assert hash_key_main(["--scheme", "pbkdf2"], stdin=io.StringIO("my-key\n"), stdout=out) == 0
    assert KeyHash.parse(out.getvalue().strip()).matches("my-key")
    out = io.StringIO()
    assert hash_key_main(["--generate"], stdin=io.StringIO(""), stdout=out) == 0
    key_line, hash_line = out.getvalue().splitlines()
    assert KeyHash.parse(hash_line.split()[1]).matches(key_line.split()[1])
    assert hash_key_main([], stdin=io.StringIO("\n"), stdout=io.StringIO()) == 2


# -- over gRPC ------------------------------------------------------------------------------------------

async def _auth_scenario() -> dict:
    results: dict = {}
    async with tiny_server(ops_with(auth=auth_config())) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OnrampStub(channel)
            req = pb.NextStepRequest(user_id="u1")
            for label, md in [("none", ()), ("wrong", (("x-api-key", "nope"),)),
                              ("decider_erase", key_md("decider"))]:
                call = stub.EraseUser(pb.EraseUserRequest(user_id="u1"), metadata=md) if label == "decider_erase" \
                    else stub.GetNextStep(req, metadata=md)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                results[label] = (err.value.code(), err.value.details(), dict(err.value.trailing_metadata()))
            results["decide_ok"] = await stub.GetNextStep(req, metadata=key_md("decider"))
            results["bearer_ok"] = await stub.GetNextStep(
                req, metadata=(("authorization", "Bearer " + KEYS["backend"][0]),))
            results["admin_ok"] = await stub.EraseUser(pb.EraseUserRequest(user_id="u1"), metadata=key_md("ops"))
            results["admin_cannot_decide"] = None
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetNextStep(req, metadata=key_md("ops"))
            results["admin_cannot_decide"] = (err.value.code(), err.value.details())
            events = [pb.Event(event_id=f"e{i}", user_id="u1", name="feature_used") for i in range(3)]
            results["ingest_ok"] = await stub.IngestEvents(iter(events), metadata=key_md("backend"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestEvents(iter(events))
            results["ingest_nokey"] = err.value.code()
            batches = stub.IngestEventBatches(
                iter([pb.EventBatch(sequence=1, events=events)]), metadata=key_md("decider"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ack in batches:
                    pass
            results["batches_wrong_role"] = (err.value.code(), err.value.details())
            health = health_pb2_grpc.HealthStub(channel)
            results["health"] = await health.Check(health_pb2.HealthCheckRequest(service=""))
    return results


def test_keys_and_roles_over_grpc() -> None:
    with captured_json_logs() as logs:
        r = run_async(_auth_scenario())
    code, details, trailers = r["none"]
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith("missing API key: send metadata x-api-key")
    assert trailers.get("x-request-id")
    assert r["wrong"][:2] == (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
    code, details, _ = r["decider_erase"]
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'admin'" in details and "EraseUser" in details and "'decider'" in details
    assert r["decide_ok"].decision_id == "d1"
    assert r["bearer_ok"].decision_id == "d1"
    assert r["admin_ok"].deleted == {"events": 0}
    assert r["admin_cannot_decide"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "'decide'" in r["admin_cannot_decide"][1]
    assert r["ingest_ok"].accepted == 3
    assert r["ingest_nokey"] == grpc.StatusCode.UNAUTHENTICATED
    assert r["batches_wrong_role"][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "'ingest'" in r["batches_wrong_role"][1]
    assert r["health"].status == health_pb2.HealthCheckResponse.SERVING
    text = logs.getvalue()
    assert "call refused" in text and '"caller": "decider"' in text
    for _name, (clear, _roles) in KEYS.items():
        assert clear not in text
        assert hash_key(clear).split(":")[1] not in text
    assert "nope" not in text


async def _unkeyed_codes() -> dict[str, grpc.StatusCode]:
    """Call every Onramp method (registered by the generated code: pre-registered and generic) and a method
    registered only through a generic handler, without a key, on a server from ``Operations.new_server``."""
    codes: dict[str, grpc.StatusCode] = {}
    ops = ops_with(auth=auth_config())
    extra = grpc.method_handlers_generic_handler("test.Extra", {"Echo": grpc.unary_unary_rpc_method_handler(
        lambda request, context: request)})
    server = ops.new_server()
    pb_grpc.add_OnrampServicer_to_server(pb_grpc.OnrampServicer(), server)
    server.add_generic_rpc_handlers((extra,))
    port = ops.add_port(server, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            methods = [(f"/onramp.v1.Onramp/{m.name}", m.client_streaming, m.server_streaming)
                       for m in pb.DESCRIPTOR.services_by_name["Onramp"].methods]
            for path, client_streaming, server_streaming in [*methods, ("/test.Extra/Echo", False, False)]:
                try:
                    if client_streaming and server_streaming:
                        async for _ in channel.stream_stream(path)(iter([b""])):
                            pass
                    elif client_streaming:
                        await channel.stream_unary(path)(iter([b""]))
                    elif server_streaming:
                        async for _ in channel.unary_stream(path)(b""):
                            pass
                    else:
                        await channel.unary_unary(path)(b"")
                    codes[path] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    codes[path] = err.code()
    finally:
        await server.stop(None)
    return codes


def test_every_method_registered_on_a_new_server_is_guarded() -> None:
    """Handlers are guarded as they are registered, not by a grpc interceptor: no registration path skips it."""
    codes = run_async(_unkeyed_codes())
    assert len(codes) == len(pb.DESCRIPTOR.services_by_name["Onramp"].methods) + 1
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes


def test_without_auth_every_role_is_allowed_on_loopback() -> None:
    async def scenario() -> pb.EraseUserResponse:
        async with tiny_server(Operations()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await pb_grpc.OnrampStub(channel).EraseUser(pb.EraseUserRequest(user_id="u1"))

    assert run_async(scenario()).deleted == {"events": 0}


def test_salted_keys_over_grpc_are_verified_off_the_event_loop() -> None:
    ops = ops_with(auth=auth_config(scheme="scrypt"))
    assert ops.keyring.has_slow_hashes

    async def scenario() -> tuple:
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                first = await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=key_md("decider"))
                cached = ops.keyring.is_cached(KEYS["decider"][0])
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=(("x-api-key", "guess"),))
                return first.decision_id, cached, err.value.code()

    assert run_async(scenario()) == ("d1", True, grpc.StatusCode.UNAUTHENTICATED)
    assert not ops.keyring.is_cached("guess")


def test_sync_and_async_authorize_agree() -> None:
    ring = KeyRing(auth_config(scheme="pbkdf2"))
    method = "/onramp.v1.Onramp/EraseUser"
    for md in (key_md("ops"), key_md("decider"), (("x-api-key", "guess"),), ()):
        outcomes = []
        for check in (lambda: ring.authorize(method, md), lambda: asyncio.run(ring.authorize_async(method, md))):
            try:
                outcomes.append(check().name)
            except Exception as exc:  # noqa: BLE001 - comparing the refusals of both paths
                outcomes.append((type(exc).__name__, exc.code, exc.message))
        assert outcomes[0] == outcomes[1]
    assert ring.authorize("/grpc.health.v1.Health/Check", (), "ipv4:127.0.0.1:9").name == "peer:127.0.0.1"


def test_authorize_now_answers_like_authorize_unless_a_slow_hash_is_due() -> None:
    ring = KeyRing(auth_config(scheme="pbkdf2"))
    method = "/onramp.v1.Onramp/EraseUser"
    assert ring.authorize_now(method, key_md("ops")) is None  # not verified yet: the hash goes to a thread
    assert ring.authorize_now("/grpc.health.v1.Health/Check", (), "ipv4:127.0.0.1:9").name == "peer:127.0.0.1"
    for md in (key_md("ops"), key_md("decider"), ()):
        outcomes = []
        for check in (lambda: ring.authorize(method, md), lambda: ring.authorize_now(method, md)):
            try:
                outcomes.append(check().name)
            except Exception as exc:  # noqa: BLE001 - comparing the refusals of both paths
                outcomes.append((type(exc).__name__, exc.code, exc.message))
        assert outcomes[0] == outcomes[1]  # authorize() verified (and cached) the key first


# -- cheap failures: no slow hash for a key that cannot match, a per-host failure budget -------------------

@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The salt of every PBKDF2 computation from now on (hashlib's real function, counted)."""
    calls: list[bytes] = []
    real = hashlib.pbkdf2_hmac

    def counted(name: str, password: bytes, salt: bytes, iterations: int, dklen: int | None = None) -> bytes:
        calls.append(salt)
        return real(name, password, salt, iterations, dklen)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
    return calls


GET_NEXT_STEP = "/onramp.v1.Onramp/GetNextStep"


def test_a_refused_key_runs_no_slow_hash_for_a_key_that_cannot_match(pbkdf2_calls: list[bytes]) -> None:
    ring = KeyRing(auth_config(scheme="pbkdf2"))
    pbkdf2_calls.clear()
    assert ring.lookup(KEYS["ops"][0]).name == "ops"
    assert len(pbkdf2_calls) == 3  # the first check of a key tries every salted hash
    pbkdf2_calls.clear()
    assert ring.lookup("guess-1") is None
    assert len(pbkdf2_calls) == 2  # not against 'ops' any more: that hash's key is known
    assert ring.lookup("guess-1") is None and not ring.slow_hash_due("guess-1")
    assert len(pbkdf2_calls) == 2  # refused before: no hash at all
    assert ring.lookup(KEYS["decider"][0]).name == "decider"
    assert ring.lookup(KEYS["backend"][0]).name == "backend"
    pbkdf2_calls.clear()
    for i in range(50):  # every salted key verified: an unknown key can match none of them
        assert not ring.slow_hash_due(f"random-{i}")
        with pytest.raises(AuthError) as err:
            ring.authorize_now(GET_NEXT_STEP, (("x-api-key", f"random-{i}"),))
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert pbkdf2_calls == []
    assert ring.lookup(KEYS["ops"][0]).name == "ops" and pbkdf2_calls == []


def test_refused_key_cache_is_bounded(pbkdf2_calls: list[bytes]) -> None:
    salt = b"0123456789abcdef"
    cheap = hashlib.pbkdf2_hmac("sha256", b"the-key", salt, 1000).hex()  # few iterations: a fast test
    ring = KeyRing(AuthConfig.from_mapping({"keys": [
        {"name": "ops", "hash": f"pbkdf2_sha256:1000:{salt.hex()}:{cheap}", "roles": ["admin"]}]}),
        refused_cache_size=8)
    for i in range(20):
        assert ring.lookup(f"wrong-{i}") is None
    assert ring.refused_count() == 8
    pbkdf2_calls.clear()
    assert ring.lookup("wrong-19") is None and pbkdf2_calls == []  # recent: remembered
    assert ring.lookup("wrong-0") is None and len(pbkdf2_calls) == 1  # forgotten first: hashed again
    assert ring.refused_count() == 8


def test_concurrent_checks_of_one_key_share_one_slow_hash(pbkdf2_calls: list[bytes]) -> None:
    ring = KeyRing(auth_config(scheme="pbkdf2"))
    pbkdf2_calls.clear()
    started: list[int] = []

    async def scenario() -> list[str]:
        checks = [ring.authorize_async(GET_NEXT_STEP, key_md("decider"), before_hash=lambda: started.append(1))
                  for _ in range(10)]
        return [p.name for p in await asyncio.gather(*checks)]

    try:
        assert run_async(scenario()) == ["decider"] * 10
    finally:
        ring.close()
    assert started == [1] and len(pbkdf2_calls) == 3


def test_peer_network_groups_ipv6_by_64() -> None:
    assert peer_network("ipv4:192.0.2.7:5000") == "192.0.2.7"
    assert peer_network("ipv6:[2001:db8:1:2:a:b:c:d]:5000") == peer_network("ipv6:[2001:db8:1:2::9]:1") \
        == "2001:db8:1:2::/64"
    assert peer_network("ipv6:[2001:db8:1:3::9]:1") != peer_network("ipv6:[2001:db8:1:2::9]:1")
    assert peer_network("ipv6:[::ffff:192.0.2.7]:5000") == "192.0.2.7"
    assert peer_network("ipv6:[::1]:5000") == "::1"
    assert peer_network("unix:/tmp/s") == "unix:/tmp/s"


BUDGET = {"auth_failures_per_second": 0.001, "auth_failures_burst": 3, "auth_failure_delay_ms": 0}


async def _code(call: Any) -> tuple[grpc.StatusCode, str, dict]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details(), dict(err.trailing_metadata())
    return grpc.StatusCode.OK, "", {}


def _guess(stub: pb_grpc.OnrampStub, i: int) -> Any:
    return stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=(("x-api-key", f"guess-{i}"),))


def test_failed_authentications_are_limited_per_host_over_grpc(pbkdf2_calls: list[bytes]) -> None:
    ops = ops_with(auth=auth_config(scheme="pbkdf2"), limits=BUDGET)

    async def scenario() -> dict:
        out: dict = {}
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                req = pb.NextStepRequest(user_id="u1")
                out["verified"] = await _code(stub.GetNextStep(req, metadata=key_md("decider")))
                pbkdf2_calls.clear()
                out["within_budget"] = [(await _code(_guess(stub, i)))[0] for i in range(3)]
                out["hashes_within"] = len(pbkdf2_calls)
                pbkdf2_calls.clear()
                out["over_budget"] = [await _code(_guess(stub, i)) for i in range(3, 8)]
                out["hashes_over"] = len(pbkdf2_calls)
                out["verified_after"] = await _code(stub.GetNextStep(req, metadata=key_md("decider")))
                out["new_key_same_host"] = await _code(stub.GetNextStep(req, metadata=key_md("backend")))
        out["limited"] = ops.metrics.rate_limited_total.labels(kind="auth_failures")._value.get()
        out["unauthenticated"] = ops.metrics.auth_failures_total.labels(code="UNAUTHENTICATED")._value.get()
        return out

    r = run_async(scenario())
    assert r["verified"][0] == grpc.StatusCode.OK
    assert r["within_budget"] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert r["hashes_within"] == 3 * 2  # each unknown key against the two salted keys not verified yet
    code, details, trailers = r["over_budget"][0]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("too many failed authentications from '127.0.0.1': 0.001 per second allowed "
                              "(burst 3); retry after ")
    assert f"retry after {trailers['retry-after-ms']} ms" in details and trailers["x-request-id"]
    assert {c for c, _, _ in r["over_budget"]} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert r["hashes_over"] == 0  # a spent budget stops the slow hashes
    assert r["verified_after"][0] == grpc.StatusCode.OK  # a key verified before never touches the budget
    assert r["new_key_same_host"][0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # a first check needs a token
    assert (r["limited"], r["unauthenticated"]) == (6, 3)


def test_another_client_host_keeps_its_own_budget_over_grpc() -> None:
    ops = ops_with(auth=auth_config(scheme="pbkdf2"), limits=BUDGET)
    ops.interceptor.failure_key = lambda peer: peer  # loopback has one host: count each connection as one
    separate = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel

    async def scenario() -> tuple:
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=separate) as attacker, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=separate) as other:
                stub = pb_grpc.OnrampStub(attacker)
                codes = [(await _code(_guess(stub, i)))[0] for i in range(5)]
                ok = await _code(pb_grpc.OnrampStub(other).GetNextStep(pb.NextStepRequest(user_id="u1"),
                                                                         metadata=key_md("decider")))
                return codes, ok[0]

    codes, other = run_async(scenario())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert other == grpc.StatusCode.OK  # a first check of a valid key, from a host with its budget intact


def test_concurrent_first_calls_with_one_key_take_one_token_over_grpc(pbkdf2_calls: list[bytes]) -> None:
    ops = ops_with(auth=auth_config(scheme="pbkdf2"), limits={**BUDGET, "auth_failures_burst": 1})

    async def scenario() -> list[grpc.StatusCode]:
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                pbkdf2_calls.clear()
                calls = [_code(stub.GetNextStep(pb.NextStepRequest(user_id="u1"), metadata=key_md("decider")))
                         for _ in range(10)]
                return [c for c, _, _ in await asyncio.gather(*calls)]

    assert run_async(scenario()) == [grpc.StatusCode.OK] * 10
    assert len(pbkdf2_calls) == 3  # one check of the key, against each salted hash once


def test_failed_authentications_are_answered_late_over_grpc() -> None:
    ops = ops_with(auth=auth_config(), limits={"auth_failure_delay_ms": 60_000})
    ops.interceptor.max_delayed = 1

    async def scenario() -> tuple:
        async with tiny_server(ops) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                req = pb.NextStepRequest(user_id="u1")
                held = asyncio.ensure_future(_code(stub.GetNextStep(req, metadata=(("x-api-key", "a"),),
                                                                    timeout=2)))
                for _ in range(500):
                    if ops.interceptor._delayed == 1 or held.done():
                        break
                    await asyncio.sleep(0.01)
                # One refusal is held already: the next one is answered at once (memory bound).
                at_once = await _code(stub.GetNextStep(req, metadata=(("x-api-key", "b"),), timeout=30))
                valid = await _code(stub.GetNextStep(req, metadata=key_md("decider"), timeout=30))
                return (await held)[0], at_once[0], valid[0]

    held, at_once, valid = run_async(scenario())
    assert held == grpc.StatusCode.DEADLINE_EXCEEDED  # held past its 2 s deadline, not refused at once
    assert at_once == grpc.StatusCode.UNAUTHENTICATED
    assert valid == grpc.StatusCode.OK
