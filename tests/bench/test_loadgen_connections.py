"""The ingest load generator's streams each have their own TCP connection, as separate clients (and
onramp_client's channels) do: with several workers behind one port the kernel spreads connections, not calls,
so streams that shared one connection would all land on one worker."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from bench.loadgen import ingest
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


class PeerCounter(pb_grpc.OnrampServicer):
    """Acks every batch and notes the client address (host:port) each stream came from."""

    def __init__(self) -> None:
        self.peers: set[str] = set()

    async def IngestEventBatches(self, request_iterator: AsyncIterator[pb.EventBatch],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BatchAck]:
        self.peers.add(context.peer())
        async for batch in request_iterator:
            yield pb.BatchAck(sequence=batch.sequence, accepted=len(batch.events))


async def _run(streams: int) -> tuple[set[str], dict]:
    counter = PeerCounter()
    server = grpc.aio.server()
    pb_grpc.add_OnrampServicer_to_server(counter, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        res = await ingest(f"127.0.0.1:{port}", streams=streams, duration=0.3, batch=10, window=2, users=5,
                           prefix="u")
    finally:
        await server.stop(0.5)
    return counter.peers, res


def test_each_ingest_stream_has_its_own_connection() -> None:
    peers, res = asyncio.run(_run(4))
    assert res["accepted"] > 0
    assert len(peers) == 4, peers
