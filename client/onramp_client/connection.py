"""Channel construction (insecure, TLS or mutual TLS) and the call metadata carrying the API key."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import grpc

API_KEY_HEADER = "x-api-key"
USER_AGENT = "onramp-client/0.1.0"
MAX_CONNECTIONS = 64
# A user export can be large (every event of the user): allow answers up to 64 MiB instead of gRPC's 4 MiB.
# Each channel keeps its own connection (gRPC otherwise shares one between channels of the same target), so a
# client's channels reach the server as that many connections.
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.primary_user_agent", USER_AGENT),
    ("grpc.use_local_subchannel_pool", 1),
)

PemSource = Union[bytes, str, "os.PathLike[str]"]


def read_pem(source: PemSource | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a file path; None stays None."""
    if source is None or isinstance(source, bytes):
        return source
    try:
        with open(source, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise ValueError(f"{what}: cannot read {os.fspath(source)!r}: {err.strerror}") from err


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: ``x-api-key`` when a key is configured."""
    if api_key is None:
        return ()
    if not api_key or any(c in api_key for c in "\r\n\0"):
        raise ValueError("api_key: must be a non-empty string without line breaks")
    return ((API_KEY_HEADER, api_key),)


@dataclass(frozen=True)
class ChannelSpec:
    """Where and how to connect: the target, TLS credentials (None: insecure) and channel options."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]

    def sync_channel(self) -> grpc.Channel:
        """A blocking-API channel."""
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel (create it inside the event loop that uses it)."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)


def check_connections(connections: int) -> int:
    """The number of connections a client spreads its calls over (1 to :data:`MAX_CONNECTIONS`)."""
    if isinstance(connections, bool) or not isinstance(connections, int) or not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections: expected an integer from 1 to {MAX_CONNECTIONS} (got {connections!r})")
    return connections


def channel_spec(target: str, *, root_certificates: PemSource | None = None, private_key: PemSource | None = None,
                 certificate_chain: PemSource | None = None, tls: bool = False,
                 channel_options: Sequence[tuple[str, Any]] | None = None) -> ChannelSpec:
    """Insecure, or TLS when ``tls`` or any certificate is given (mutual TLS with a key and chain).

    Certificates are PEM bytes or file paths. Options in ``channel_options`` override defaults of the same name.
    """
    if not target:
        raise ValueError("target: expected 'host:port' of the Onramp server")
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain: give both for mutual TLS, or neither")
    given = dict(channel_options or ())
    options = tuple((k, v) for k, v in DEFAULT_OPTIONS if k not in given) + tuple(given.items())
    if not (tls or root_certificates is not None or private_key is not None):
        return ChannelSpec(target, None, options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(root_certificates, "root_certificates"),
        private_key=read_pem(private_key, "private_key"),
        certificate_chain=read_pem(certificate_chain, "certificate_chain"))
    return ChannelSpec(target, credentials, options)
