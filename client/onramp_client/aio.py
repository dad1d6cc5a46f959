"""AsyncOnrampClient: the asyncio flavour of OnrampClient, for services built on asyncio.

Unary calls use a ``grpc.aio`` channel; events are buffered and streamed by the same background sender
thread as in OnrampClient (on a channel of its own), so ``track()`` stays a plain non-blocking call and
``flush()``/``close()`` wait for acknowledgements in a worker thread without blocking the event loop.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from onramp_client.errors import ClientClosed, OnrampError
from onramp_client.messages import consent_map, consent_request, next_step_request, outcome_request
from onramp_client.retry import unary_retry_delay
from onramp_client.tracking import EventTracker
from onramp_client.values import IngestResult, NextStep

log = logging.getLogger("onramp_client")


class AsyncOnrampClient(EventTracker):
    """Same settings and behaviour as OnrampClient, with awaitable calls. Create and use it in one loop::

        async with AsyncOnrampClient("127.0.0.1:50051", api_key="...") as client:
            client.track("feature_used", user_id="u42", feature="reports")
            step = await client.next_step("u42", surface="in_app")
            await client.flush()
    """

    # asyncio channels (one connection each), made on first use inside the caller's event loop; unary calls
    # go round-robin over them
    _aio_channels: list[grpc.aio.Channel] | None = None
    _aio_next: Any = None

    def _unary_stub(self) -> pb_grpc.OnrampStub:
        if self._aio_channels is None:
            self._aio_channels = [self._spec.aio_channel() for _ in range(self.connections)]
            self._aio_next = itertools.cycle([pb_grpc.OnrampStub(ch) for ch in self._aio_channels]).__next__
        return self._aio_next()

    async def flush(self, timeout: float | None = None) -> IngestResult:
        """Waits (without blocking the loop) until every buffered event is acknowledged; see OnrampClient.flush."""
        return await asyncio.to_thread(self._sender.flush, timeout)

    async def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        """Calls a unary method with an overall deadline, retrying UNAVAILABLE with backoff."""
        if self._closed:
            raise ClientClosed(method)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        fn = getattr(self._unary_stub(), method)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await fn(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                delay = unary_retry_delay(err.code(), attempt, self.max_retries, self._backoff, deadline,
                                          time.monotonic())
                if delay is None:
                    raise OnrampError.from_rpc_error(err, method) from None
                attempt += 1
                log.info("onramp: %s %s; retry %d in %.2f s", method, err.code(), attempt, delay)
                await asyncio.sleep(delay)

    async def next_step(self, user_id: str = "", *, anonymous_id: str = "", surface: str = "",
                        context: Mapping[str, str] | None = None, timestamp_ms: int = 0,
                        timeout: float | None = None) -> NextStep:
        """Asks which onboarding step to show this user on ``surface`` (in_app, email, push, or any)."""
        request = next_step_request(user_id, anonymous_id, surface, context, timestamp_ms)
        return NextStep.from_proto(await self._call("GetNextStep", request, timeout))

    async def report_outcome(self, decision_id: str, reward: float, *, outcome: str = "", timestamp_ms: int = 0,
                             timeout: float | None = None) -> bool:
        """Rewards a decision; True when recorded, False when it already had an outcome (that one stands)."""
        response = await self._call("ReportOutcome", outcome_request(decision_id, reward, outcome, timestamp_ms),
                                    timeout)
        return bool(response.recorded)

    async def set_consent(self, user_id: str = "", *, anonymous_id: str = "", purpose: str = "tracking",
                          granted: bool = True, source: str = "", timestamp_ms: int = 0,
                          timeout: float | None = None) -> dict[str, bool]:
        """Grants (or with ``granted=False`` withdraws) consent for ``purpose``; returns purpose -> granted."""
        request = consent_request(user_id, anonymous_id, purpose, granted, source, timestamp_ms)
        return consent_map(await self._call("SetConsent", request, timeout))

    async def erase_user(self, user_id: str = "", *, anonymous_id: str = "",
                         timeout: float | None = None) -> dict[str, int]:
        """Erases everything held about the user and its linked ids; returns rows deleted per table."""
        response = await self._call("EraseUser", pb.EraseUserRequest(user_id=user_id, anonymous_id=anonymous_id),
                                    timeout)
        return dict(response.deleted)

    async def export_user_data(self, user_id: str = "", *, anonymous_id: str = "",
                               timeout: float | None = None) -> pb.UserDataExport:
        """Everything held about the user (events, links, consents, profile, decisions, outcomes)."""
        return await self._call("ExportUserData",
                                pb.ExportUserDataRequest(user_id=user_id, anonymous_id=anonymous_id), timeout)

    async def get_profile(self, user_id: str = "", *, anonymous_id: str = "",
                          timeout: float | None = None) -> pb.UserProfile:
        """The user's current behavioral profile (merged across devices)."""
        return await self._call("GetUserProfile",
                                pb.GetUserProfileRequest(user_id=user_id, anonymous_id=anonymous_id), timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Flushes, stops the sender thread and closes both channels; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.to_thread(self._sender.close, timeout)
        finally:
            for channel in self._channels:
                channel.close()
            for aio_channel in self._aio_channels or ():
                await aio_channel.close()

    async def __aenter__(self) -> AsyncOnrampClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is None:
            await self.close()
            return
        try:
            await self.close()
        except OnrampError as err:  # the body's exception matters more; keep this one in the log
            log.error("onramp: close() after an exception failed: %s", err)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.pending} pending"
        return f"AsyncOnrampClient({self.target!r}, {state})"
