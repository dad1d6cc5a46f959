"""Exceptions raised by the Onramp client: one base class carrying the gRPC status code and details."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from onramp.v1 import onramp_pb2 as pb

if TYPE_CHECKING:
    from onramp_client.values import IngestResult


class OnrampError(Exception):
    """A call to Onramp failed; ``code`` is the gRPC status code and ``details`` the server's message.

    For ingestion failures ``unsent_events`` holds every event that was not acknowledged (so the caller
    may keep or re-send them; re-sending is safe, event_id is an idempotency key) and ``result`` the
    acknowledgements that did arrive before the failure.
    """

    def __init__(self, code: grpc.StatusCode | None, details: str, *, method: str = "",
                 unsent_events: Sequence[pb.Event] = (), result: IngestResult | None = None) -> None:
        self.code = code
        self.details = details
        self.method = method
        self.unsent_events: list[pb.Event] = list(unsent_events)
        self.result = result
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.method}: " if self.method else ""
        code = f"{self.code.name}: " if self.code is not None else ""
        unsent = f" ({len(self.unsent_events)} events not delivered)" if self.unsent_events else ""
        return f"{where}{code}{self.details}{unsent}"

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, method: str) -> OnrampError:
        """Wraps a grpc.RpcError (a grpc.Call, or a grpc.aio.AioRpcError) into an OnrampError naming the method."""
        code = err.code() if callable(getattr(err, "code", None)) else None  # type: ignore[attr-defined]
        details = err.details() if callable(getattr(err, "details", None)) else None  # type: ignore[attr-defined]
        return cls(code, details or str(err) or "no details", method=method)


class QueueFull(OnrampError):
    """track() found the client's buffer full (``max_queue`` events not yet acknowledged)."""

    def __init__(self, max_queue: int) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"event buffer is full ({max_queue} events not yet acknowledged); call flush(), "
                         f"raise max_queue, or track(..., block=True)", method="track")


class ClientClosed(OnrampError):
    """The client was used after close()."""

    def __init__(self, method: str) -> None:
        super().__init__(None, "the client is closed", method=method)


class FlushTimeout(OnrampError):
    """flush() or close() gave up waiting for acknowledgements; the events stay buffered."""

    def __init__(self, timeout: float, pending: int, *, method: str = "flush",
                 unsent_events: Sequence[pb.Event] = ()) -> None:
        self.pending = pending
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED,
                         f"{pending} events still unacknowledged after {timeout:g} s", method=method,
                         unsent_events=unsent_events)
