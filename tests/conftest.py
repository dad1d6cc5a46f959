"""Shared fixtures: a real Onramp server on a free 127.0.0.1 port (temporary database), a stub connected to
it, and small helpers to build events and grant consent.

    def test_something(server, stub, events):
        events.grant(stub, "u1")
        stub.IngestEvents(iter([events.make("u1", name="session_start")]))
"""
from __future__ import annotations

import itertools
import pathlib
import sys

# This file puts tests/ on sys.path (pytest's default "prepend" import mode), where tests/server/ would shadow
# the real `server` package as a namespace package; the project root first keeps `import server` right.
ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle, running_server


class EventFactory:
    """Builds valid events with unique ids, and grants consent through a stub."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def make(self, user_id: str = "", name: str = "feature_used", **fields: Any) -> pb.Event:
        """A valid event of ``user_id`` (or ``anonymous_id=...``) with a fresh event_id unless given."""
        fields.setdefault("event_id", f"ev-{next(self._ids)}")
        return pb.Event(user_id=user_id, name=name, **fields)

    def many(self, n: int, user_id: str = "u1", name: str = "feature_used", **fields: Any) -> list[pb.Event]:
        return [self.make(user_id, name, **fields) for _ in range(n)]

    @staticmethod
    def grant(stub: pb_grpc.OnrampStub, user_id: str = "", purpose: str = "tracking", granted: bool = True,
              anonymous_id: str = "", source: str = "test") -> pb.ConsentState:
        """SetConsent through ``stub`` (tracking grant by default)."""
        return stub.SetConsent(pb.ConsentRequest(user_id=user_id, anonymous_id=anonymous_id, purpose=purpose,
                                                 granted=granted, source=source))


@pytest.fixture
def events() -> EventFactory:
    """Event and consent helpers."""
    return EventFactory()


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    """A running Onramp server (static core flow, demo catalog, temporary database)."""
    with running_server() as handle:
        yield handle


@pytest.fixture
def channel(server: ServerHandle) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.OnrampStub:
    """A stub of the ``server`` fixture."""
    return pb_grpc.OnrampStub(channel)
