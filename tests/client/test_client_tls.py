"""OnrampClient over TLS and mutual TLS, with certificates made at test time by the openssl CLI."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fake_onramp import FakeServer
from onramp_client import OnrampClient, OnrampError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key(cwd: Path, name: str) -> None:
    _openssl(cwd, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")


def _signed(cwd: Path, name: str, cn: str, ext: str) -> None:
    _key(cwd, name)
    _openssl(cwd, "req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    (cwd / f"{name}.ext").write_text(ext)
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-sha256", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("client-pki")
    _key(d, "ca")
    _openssl(d, "req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Test CA")
    _signed(d, "server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _signed(d, "client", "backend", "extendedKeyUsage=clientAuth\n")
    return d


def _tls_server(pki: Path, require_client_auth: bool) -> FakeServer:
    creds = grpc.ssl_server_credentials([((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
                                        root_certificates=(pki / "ca.crt").read_bytes(),
                                        require_client_auth=require_client_auth)
    return FakeServer(credentials=creds).start()


@pytest.fixture
def tls_server(pki: Path) -> Iterator[FakeServer]:
    server = _tls_server(pki, require_client_auth=False)
    yield server
    server.stop()


@pytest.fixture
def mtls_server(pki: Path) -> Iterator[FakeServer]:
    server = _tls_server(pki, require_client_auth=True)
    yield server
    server.stop()


def test_tls_with_root_certificates_from_a_path_or_bytes(tls_server: FakeServer, pki: Path) -> None:
    for roots in (pki / "ca.crt", str(pki / "ca.crt"), (pki / "ca.crt").read_bytes()):
        with OnrampClient(tls_server.address, root_certificates=roots) as client:
            client.track("feature_used", user_id="u1")
            assert client.next_step("u1").decision_id == "d-u1"
    assert len(tls_server.servicer.stored) == 3


def test_insecure_client_cannot_talk_to_a_tls_server(tls_server: FakeServer) -> None:
    with OnrampClient(tls_server.address, timeout=2.0, max_retries=0) as client:
        with pytest.raises(OnrampError) as info:
            client.next_step("u1")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(mtls_server: FakeServer, pki: Path) -> None:
    with OnrampClient(mtls_server.address, root_certificates=pki / "ca.crt", private_key=pki / "client.key",
                      certificate_chain=pki / "client.crt") as client:
        client.track("feature_used", user_id="u1")
        assert client.next_step("u1").has_step
    assert len(mtls_server.servicer.stored) == 1
    with OnrampClient(mtls_server.address, root_certificates=pki / "ca.crt", timeout=2.0, max_retries=0) as anon:
        with pytest.raises(OnrampError) as info:
            anon.next_step("u1")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_unreadable_certificate_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root_certificates: cannot read"):
        OnrampClient("127.0.0.1:1", root_certificates=tmp_path / "missing.crt")
