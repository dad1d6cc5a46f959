"""A bare grpc.aio Onramp server for comparison: GetNextStep only builds a NextStepResponse of the same
shape as Onramp's, IngestEventBatches only counts messages and acks each batch. Run:
``python -m bench.bare_server --port P``."""
from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import AsyncIterator

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


def answer(i: int) -> pb.NextStepResponse:
    """The ``i``-th constant answer, shaped like a real personalised one (also :mod:`bench.floor_server`'s)."""
    return pb.NextStepResponse(
        decision_id=f"d-{i:032x}", has_step=True, propensity=0.85, reason="bandit",
        step=pb.Step(id="checklist", title="Finish your checklist", channel="in_app", kind="tip", feature="boards"),
        policy_version="linucb(k=10,d=23)+EpsilonGreedy(0.1)", experiment="onboarding", arm="tailored",
        segments=["new_user", "desktop"])


class BareOnramp(pb_grpc.OnrampServicer):
    """No state, no validation, no storage: the floor of what grpc.aio + protobuf cost."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self.events = 0

    async def GetNextStep(self, request: pb.NextStepRequest, context: grpc.aio.ServicerContext) -> pb.NextStepResponse:
        """A response shaped like a real personalised answer."""
        return answer(next(self._ids))

    async def IngestEventBatches(self, request_iterator: AsyncIterator[pb.EventBatch],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BatchAck]:
        """Count the events of every batch and ack it."""
        async for batch in request_iterator:
            n = len(batch.events)
            self.events += n
            yield pb.BatchAck(sequence=batch.sequence, accepted=n)


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM/SIGINT."""
    server = grpc.aio.server()
    pb_grpc.add_OnrampServicer_to_server(BareOnramp(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
