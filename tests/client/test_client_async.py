"""AsyncOnrampClient against the fake server: awaitable unary calls, flush/close, deadlines and retries."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from fake_onramp import FakeServer
from onramp_client import AsyncOnrampClient, ClientClosed, OnrampError


def test_async_client_tracks_flushes_and_calls(fake: FakeServer) -> None:
    fake.servicer.required_key = "k1"

    async def main() -> None:
        async with AsyncOnrampClient(fake.address, api_key="k1", batch_size=10) as client:
            assert await client.set_consent("u1", source="banner") == {"tracking": True, "personalization": False}
            ids = [client.track("feature_used", user_id="u1", feature="reports") for _ in range(25)]
            step = await client.next_step("u1", surface="push", context={"locale": "fr"})
            assert (step.decision_id, step.channel, step.segments) == ("d-u1", "push", ("engaged", "cluster:2"))
            assert await client.report_outcome(step.decision_id, 1.0) is True
            assert await client.report_outcome(step.decision_id, 1.0) is False
            result = await client.flush(timeout=20)
            assert result.accepted == 25 and set(fake.servicer.stored) == set(ids)
            assert len((await client.export_user_data("u1")).events) == 25
            assert (await client.get_profile(anonymous_id="a1")).subject == "anon:a1"
            assert await client.erase_user("u1") == {"events": 12, "decisions": 3, "identity_links": 1}
            client.track("session_start", user_id="u1", event_id="last")
        assert client.closed and "last" in fake.servicer.stored
        assert not client._sender.is_alive()
        await client.close()  # idempotent
        with pytest.raises(ClientClosed):
            await client.next_step("u1")

    asyncio.run(main())
    assert {c.metadata.get("x-api-key") for c in fake.servicer.unary_calls} == {"k1"}
    assert fake.servicer.stream_metadata[0]["x-api-key"] == "k1"


def test_async_deadline_and_retries(fake: FakeServer) -> None:
    async def main() -> None:
        async with AsyncOnrampClient(fake.address, timeout=10, backoff_initial=0.01, backoff_max=0.05) as client:
            fake.servicer.unary_failures = {"GetNextStep": [grpc.StatusCode.UNAVAILABLE] * 2,
                                            "EraseUser": [grpc.StatusCode.INVALID_ARGUMENT]}
            assert (await client.next_step("u1")).has_step
            assert len(fake.servicer.calls("GetNextStep")) == 3
            with pytest.raises(OnrampError) as info:
                await client.erase_user("u1")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert len(fake.servicer.calls("EraseUser")) == 1
            fake.servicer.unary_delay = 20.0  # released at teardown
            with pytest.raises(OnrampError) as info:
                await client.get_profile("u1", timeout=0.2)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(main())


def test_async_unary_calls_go_round_robin_over_the_connections(fake: FakeServer) -> None:
    async def main() -> None:
        async with AsyncOnrampClient(fake.address, connections=2) as client:
            for i in range(6):
                await client.next_step(f"u{i}")

    asyncio.run(main())
    peers = [c.peer for c in fake.servicer.calls("GetNextStep")]
    assert len(set(peers)) == 2 and peers.count(peers[0]) == 3, peers
