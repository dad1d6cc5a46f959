"""Test support for the security/operations tests: a tiny Onramp servicer and a server on a free port.

The tiny servicer answers from the generated stubs without any storage, so the interceptor, health,
reflection, metrics and TLS can be tested over real gRPC independently of the real service.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.api.aio_servers import release_unstarted
from server.api.auth import AuthConfig, hash_key
from server.api.serving import Operations, OpsConfig
from server.base.logging_setup import JsonFormatter, RequestContextFilter

T = TypeVar("T")


def run_async(scenario: Coroutine[Any, Any, T]) -> T:
    """Run an async test scenario on a fresh event loop (``asyncio.run``)."""
    return asyncio.run(scenario)


KEYS = {
    "backend": ("k-backend-0123456789abcdef", ["ingest", "decide"]),
    "decider": ("k-decider-0123456789abcdef", ["decide"]),
    "ops": ("k-ops-0123456789abcdef", ["admin"]),
}


def auth_config(keys: dict[str, tuple[str, list[str]]] = KEYS, scheme: str = "sha256") -> AuthConfig:
    """An ``[auth]`` config holding hashes of the given clear keys."""
    return AuthConfig.from_mapping(
        {"keys": [{"name": n, "hash": hash_key(k, scheme), "roles": r} for n, (k, r) in keys.items()]})


def key_md(name: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying the clear key of ``name``."""
    return (("x-api-key", KEYS[name][0]),)


class TinyOnramp(pb_grpc.OnrampServicer):
    """Answers every RPC without storage; ``user_id`` "boom" raises and "missing" aborts NOT_FOUND (also as
    the user of a streamed event)."""

    async def IngestEvents(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> pb.IngestSummary:
        n = 0
        async for event in request_iterator:
            if event.user_id == "missing":
                await context.abort(grpc.StatusCode.NOT_FOUND, f"events[{n}].user_id: unknown user 'missing'")
            n += 1
        return pb.IngestSummary(received=n, accepted=n)

    async def IngestEventBatches(self, request_iterator: Any, context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[pb.BatchAck]:
        async for batch in request_iterator:
            if any(event.user_id == "missing" for event in batch.events):
                await context.abort(grpc.StatusCode.NOT_FOUND, "user_id: unknown user 'missing'")
            yield pb.BatchAck(sequence=batch.sequence, accepted=len(batch.events))

    async def GetNextStep(self, request: pb.NextStepRequest, context: grpc.aio.ServicerContext
                          ) -> pb.NextStepResponse:
        if request.user_id == "boom":
            raise RuntimeError("tiny servicer exploded")
        if request.user_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "user_id: unknown user 'missing'")
        logging.getLogger("tiny").info("deciding for one user")
        return pb.NextStepResponse(decision_id="d1", has_step=True, propensity=1.0, reason="core",
                                   step=pb.Step(id="welcome"))

    async def ReportOutcome(self, request: pb.OutcomeRequest, context: grpc.aio.ServicerContext
                            ) -> pb.OutcomeResponse:
        return pb.OutcomeResponse(recorded=True)

    async def SetConsent(self, request: pb.ConsentRequest, context: grpc.aio.ServicerContext) -> pb.ConsentState:
        return pb.ConsentState(subject=request.user_id)

    async def EraseUser(self, request: pb.EraseUserRequest, context: grpc.aio.ServicerContext
                        ) -> pb.EraseUserResponse:
        return pb.EraseUserResponse(deleted={"events": 0})

    async def ExportUserData(self, request: pb.ExportUserDataRequest, context: grpc.aio.ServicerContext
                             ) -> pb.UserDataExport:
        return pb.UserDataExport(subject=request.user_id)

    async def GetUserProfile(self, request: pb.GetUserProfileRequest, context: grpc.aio.ServicerContext
                             ) -> pb.UserProfile:
        return pb.UserProfile(subject=request.user_id)


@contextlib.asynccontextmanager
async def tiny_server(ops: Operations, address: str = "127.0.0.1:0") -> AsyncIterator[int]:
    """Run the tiny servicer behind ``ops`` on a free 127.0.0.1 port; yields the port."""
    server = ops.new_server()
    pb_grpc.add_OnrampServicer_to_server(TinyOnramp(), server)
    try:
        port = ops.add_port(server, address)
    except BaseException:
        await release_unstarted(server)
        raise
    await server.start()
    await ops.started()
    try:
        yield port
    finally:
        await ops.stopping()
        await server.stop(None)
        ops.stopped()


def ops_with(**sections: Any) -> Operations:
    """Operations from raw config sections, e.g. ``ops_with(auth=..., limits={...})``."""
    auth = sections.pop("auth", None)
    config = OpsConfig.from_mapping(sections)
    if auth is not None:
        config = OpsConfig(auth=auth, tls=config.tls, limits=config.limits, metrics=config.metrics,
                           logging=config.logging)
    return Operations(config)


@contextlib.contextmanager
def captured_json_logs(level: int = logging.DEBUG) -> Iterator[io.StringIO]:
    """Capture every log record, formatted as JSON lines as in production, into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
