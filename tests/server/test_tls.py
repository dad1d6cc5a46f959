"""TLS and mutual TLS over real gRPC with certificates made at test time by the openssl CLI."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import ops_with, run_async, tiny_server
from server.api.tls import TlsConfig, TlsConfigError, channel_credentials, server_credentials

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(cwd: Path, name: str, subject: str, ca: str, ext: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=cwd)
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-sha256", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=Onramp Test CA", cwd=d)
    _signed(d, "server", "/CN=localhost", "ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _signed(d, "client", "/CN=backend-service", "ca", "extendedKeyUsage=clientAuth\n")
    # A second CA whose client certificate the server must not accept.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.crt",
             "-days", "2", "-subj", "/CN=Other CA", cwd=d)
    _signed(d, "stranger", "/CN=stranger", "other", "extendedKeyUsage=clientAuth\n")
    return d


async def _call(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        stub = pb_grpc.OnrampStub(channel)
        try:
            response = await stub.GetNextStep(pb.NextStepRequest(user_id="u1"), timeout=10)
            return "OK:" + response.decision_id
        except grpc.aio.AioRpcError as err:
            return err.code().name


def test_tls_server_accepts_tls_clients_only(pki: Path) -> None:
    ops = ops_with(tls={"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key")})

    async def scenario() -> tuple[str, str]:
        async with tiny_server(ops) as port:
            secure = await _call(port, channel_credentials(str(pki / "ca.crt")))
            plain = await _call(port, None)
        return secure, plain

    secure, plain = run_async(scenario())
    assert secure == "OK:d1"
    assert plain == "UNAVAILABLE"


def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: Path) -> None:
    ops = ops_with(tls={"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key"),
                        "client_ca_file": str(pki / "ca.crt")})
    assert ops.config.tls.mutual

    async def scenario() -> dict[str, str]:
        async with tiny_server(ops) as port:
            ca = str(pki / "ca.crt")
            return {
                "with_cert": await _call(port, channel_credentials(ca, str(pki / "client.crt"),
                                                                   str(pki / "client.key"))),
                "no_cert": await _call(port, channel_credentials(ca)),
                "stranger": await _call(port, channel_credentials(ca, str(pki / "stranger.crt"),
                                                                  str(pki / "stranger.key"))),
            }

    r = run_async(scenario())
    assert r["with_cert"] == "OK:d1"
    assert r["no_cert"] == "UNAVAILABLE"
    assert r["stranger"] == "UNAVAILABLE"


def test_missing_and_wrong_files_give_clear_errors(pki: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsConfigError) as err:
        server_credentials(TlsConfig(cert_file=str(missing), key_file=str(pki / "server.key")))
    assert str(err.value) == f"[tls] cert_file: file not found: {missing}"
    with pytest.raises(TlsConfigError) as err:
        server_credentials(TlsConfig(cert_file=str(pki / "server.crt"), key_file=str(pki / "server.crt")))
    assert str(err.value).startswith("[tls] key_file:") and "no private key" in str(err.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(TlsConfigError) as err:
        server_credentials(TlsConfig(cert_file=str(pki / "server.crt"), key_file=str(pki / "server.key"),
                                     client_ca_file=str(garbage)))
    assert str(err.value).startswith("[tls] client_ca_file:") and "not a PEM file" in str(err.value)
    with pytest.raises(TlsConfigError) as err:
        server_credentials(TlsConfig(cert_file=str(tmp_path), key_file=str(pki / "server.key")))
    assert "not a regular file" in str(err.value)


def test_unreadable_file_is_reported(pki: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked.key"
    locked.write_bytes((pki / "server.key").read_bytes())
    locked.chmod(0)
    try:
        try:
            locked.read_bytes()
            pytest.skip("running with privileges that read any file")
        except PermissionError:
            pass
        with pytest.raises(TlsConfigError) as err:
            server_credentials(TlsConfig(cert_file=str(pki / "server.crt"), key_file=str(locked)))
        assert str(err.value).startswith("[tls] key_file: cannot read")
    finally:
        locked.chmod(0o600)


@pytest.mark.parametrize("section, where", [
    ({"cert_file": "a.crt"}, "[tls] key_file"),
    ({"key_file": "a.key"}, "[tls] cert_file"),
    ({"client_ca_file": "ca.crt"}, "[tls] client_ca_file"),
    ({"cert_file": 5, "key_file": "k"}, "[tls] cert_file"),
    ({"ca_file": "x"}, "[tls] ca_file"),
])
def test_tls_config_errors_name_the_key(section: dict, where: str) -> None:
    with pytest.raises(TlsConfigError) as err:
        TlsConfig.from_mapping(section)
    assert str(err.value).startswith(where)


def test_tls_is_off_without_a_certificate() -> None:
    assert not TlsConfig.from_mapping({}).enabled
