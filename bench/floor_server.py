"""Onramp without its decision engine, for the serving floor: ``python -m bench.floor_server serve --port P
--db D ...`` (the arguments of ``onramp serve``) runs the real server, whose GetNextStep goes through the same
gRPC server, interceptor (request id, auth, limits, metrics, access line), validation and identity resolution,
then answers a constant response of a bandit answer's shape (:func:`bench.bare_server.answer`) without
deciding, counting the show or logging a decision. Measured beside Onramp and the bare server, it shows how
much of the gap to the bare server the decision itself (engine and decision log) accounts for."""
from __future__ import annotations

import itertools
import sys
from typing import Any

import server.cli  # first: sets GRPC_ENABLE_FORK_SUPPORT before grpc is imported
from bench.bare_server import answer
from onramp.v1 import onramp_pb2 as pb
from server.engine import DecisionEngine

_ids = itertools.count()


async def constant_next_step(self: DecisionEngine, request: pb.NextStepRequest, subject: str,
                             now_ms: int) -> Any:
    """Stands in for :meth:`DecisionEngine.next_step`: no decision, no show, no log row."""
    return answer(next(_ids))


def main(argv: list[str] | None = None) -> int:
    """Patch the engine's answer, then run the ``onramp`` command line with ``argv``."""
    DecisionEngine.next_step = constant_next_step  # type: ignore[method-assign]
    return server.cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
