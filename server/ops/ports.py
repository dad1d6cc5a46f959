"""Whether the gRPC port is free, asked before ``onramp serve`` creates anything.

A start on a busy port would otherwise create the database and its key file before gRPC
finds out, and gRPC core would print its own error line first. :func:`check_port_free` binds a throwaway
socket the way gRPC's listener does (``SO_REUSEADDR``, so a port left in TIME_WAIT by a stopped server counts
as free) and raises :class:`PortBusy` naming the address.
"""
from __future__ import annotations

import errno
import socket


class PortBusy(OSError):
    """The address to listen on is taken by another process."""


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortBusy` when another socket listens on ``host:port``. Port 0 (any free port), a host that
    does not resolve and an address this machine does not have pass: the server's own bind reports those."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return
    for family, kind, proto, _name, address in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortBusy(f"cannot listen on {host}:{port}: the port is in use by another process "
                                   "(another onramp serve? choose a free port with --port)") from None
