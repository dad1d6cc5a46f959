"""TLS and mutual TLS for the gRPC port, from PEM files named in the ``[tls]`` config section.

Errors name the config key and the file, so a typo in a path is found at start, not at the first call.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class TlsConfigError(ValueError):
    """A bad ``[tls]`` setting or an unusable certificate/key file; the message names the key and path."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The ``[tls]`` section: server certificate chain and key; a client CA turns on mutual TLS."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""

    @property
    def enabled(self) -> bool:
        """True when a certificate is configured (TLS on)."""
        return bool(self.cert_file)

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by ``client_ca_file``."""
        return bool(self.client_ca_file)

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "TlsConfig":
        """Validate a ``[tls]`` table (paths only; files are read by :func:`server_credentials`)."""
        section = dict(section or {})
        allowed = ("cert_file", "key_file", "client_ca_file")
        unknown = set(section) - set(allowed)
        if unknown:
            raise TlsConfigError(f"[tls] {sorted(unknown)[0]}: unknown key (expected {', '.join(allowed)})")
        for name in allowed:
            if name in section and not isinstance(section[name], str):
                raise TlsConfigError(f"[tls] {name}: expected a file path string (got {section[name]!r})")
        config = cls(**{k: section.get(k, "") for k in allowed})
        if bool(config.cert_file) != bool(config.key_file):
            missing = "key_file" if config.cert_file else "cert_file"
            raise TlsConfigError(f"[tls] {missing}: cert_file and key_file must be given together")
        if config.client_ca_file and not config.cert_file:
            raise TlsConfigError("[tls] client_ca_file: mutual TLS needs cert_file and key_file as well")
        return config


def read_pem(path: str, where: str, kind: str) -> bytes:
    """Read a PEM file; raises :class:`TlsConfigError` naming ``where`` when missing, unreadable or not PEM."""
    p = Path(path).expanduser()
    if not p.exists():
        raise TlsConfigError(f"{where}: file not found: {p}")
    if not p.is_file():
        raise TlsConfigError(f"{where}: not a regular file: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{where}: cannot read {p}: {exc.strerror or exc}") from None
    marker = b"-----BEGIN "
    if marker not in data:
        raise TlsConfigError(f"{where}: {p} is not a PEM file (expected a '-----BEGIN {kind}' block)")
    if kind == "PRIVATE KEY" and b"PRIVATE KEY-----" not in data:
        raise TlsConfigError(f"{where}: {p} holds no private key (expected '-----BEGIN ... PRIVATE KEY')")
    if kind == "CERTIFICATE" and b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsConfigError(f"{where}: {p} holds no certificate (expected '-----BEGIN CERTIFICATE')")
    return data


def server_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials for ``server.add_secure_port``; with a client CA, client certificates are required."""
    if not config.enabled:
        raise TlsConfigError("[tls] cert_file: TLS is not configured")
    cert = read_pem(config.cert_file, "[tls] cert_file", "CERTIFICATE")
    key = read_pem(config.key_file, "[tls] key_file", "PRIVATE KEY")
    client_ca = read_pem(config.client_ca_file, "[tls] client_ca_file", "CERTIFICATE") if config.mutual else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=config.mutual)


def channel_credentials(ca_file: str = "", cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials:
    """Client credentials: trust ``ca_file`` (system roots when empty) and present a client cert for mTLS."""
    ca = read_pem(ca_file, "ca_file", "CERTIFICATE") if ca_file else None
    cert = read_pem(cert_file, "cert_file", "CERTIFICATE") if cert_file else None
    key = read_pem(key_file, "key_file", "PRIVATE KEY") if key_file else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
