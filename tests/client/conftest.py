"""Fixtures of the client tests: a fake Onramp server on a free 127.0.0.1 port and clients that close."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fake_onramp import FakeServer
from onramp_client import OnrampClient, OnrampError


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.servicer.release.set()
    server.stop()


@pytest.fixture
def make_client(fake: FakeServer) -> Iterator[Callable[..., OnrampClient]]:
    """Builds OnrampClients for the fake server (fast backoff by default) and closes them at teardown."""
    made: list[OnrampClient] = []

    def make(**kw: Any) -> OnrampClient:
        kw.setdefault("backoff_initial", 0.01)
        kw.setdefault("backoff_max", 0.05)
        client = OnrampClient(kw.pop("target", fake.address), **kw)
        made.append(client)
        return client

    yield make
    fake.servicer.release.set()
    for client in made:
        try:
            client.close(timeout=10)
        except OnrampError:
            pass
