"""OnrampClient: the synchronous, thread-safe client a backend service uses to talk to Onramp."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp_client.errors import ClientClosed, OnrampError
from onramp_client.messages import consent_map, consent_request, next_step_request, outcome_request
from onramp_client.retry import unary_retry_delay
from onramp_client.tracking import EventTracker
from onramp_client.values import IngestResult, NextStep

log = logging.getLogger("onramp_client")


class OnrampClient(EventTracker):
    """Client of one Onramp server: buffered event tracking plus the unary calls, over one gRPC channel.

    ``track()`` only buffers; a background thread sends batches of ``batch_size`` events (or whatever is
    buffered after ``flush_interval`` seconds) over the IngestEventBatches stream, re-sending
    unacknowledged batches after failures. At most ``max_queue`` events wait for acknowledgement.
    Unary calls have a deadline of ``timeout`` seconds (overall, retries included) and are retried with
    backoff on UNAVAILABLE, at most ``max_retries`` times. ``api_key`` travels as ``x-api-key`` metadata.
    TLS is used when ``root_certificates`` (PEM bytes or a file path) or ``tls=True`` is given, mutual TLS
    when ``private_key`` and ``certificate_chain`` are given too; the channel is insecure otherwise.
    Unary calls go round-robin over ``connections`` connections (default 4), so that a server of several
    processes sharing its port (which balances connections, not calls) serves them on all of its processes.
    """

    def flush(self, timeout: float | None = None) -> IngestResult:
        """Sends everything buffered and blocks until all of it is acknowledged (durable on the server).

        Returns the totals of the acknowledgements since the previous flush. Raises OnrampError for an
        ingestion failure since then (its ``unsent_events`` are the events not delivered) and FlushTimeout
        when ``timeout`` seconds pass first.
        """
        return self._sender.flush(timeout)

    # ----------------------------------------------------------------- unary calls
    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        """Calls a unary method with an overall deadline, retrying UNAVAILABLE with backoff."""
        if self._closed:
            raise ClientClosed(method)
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        fn: Callable[..., Any] = getattr(self._next_stub(), method)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return fn(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as err:
                code = err.code() if callable(getattr(err, "code", None)) else None  # type: ignore[attr-defined]
                delay = unary_retry_delay(code, attempt, self.max_retries, self._backoff, deadline, time.monotonic())
                if delay is None:
                    raise OnrampError.from_rpc_error(err, method) from None
                attempt += 1
                log.info("onramp: %s %s; retry %d in %.2f s", method, code, attempt, delay)
                time.sleep(delay)

    def next_step(self, user_id: str = "", *, anonymous_id: str = "", surface: str = "",
                  context: Mapping[str, str] | None = None, timestamp_ms: int = 0,
                  timeout: float | None = None) -> NextStep:
        """Asks which onboarding step to show this user on ``surface`` (in_app, email, push, or any)."""
        request = next_step_request(user_id, anonymous_id, surface, context, timestamp_ms)
        return NextStep.from_proto(self._call("GetNextStep", request, timeout))

    def report_outcome(self, decision_id: str, reward: float, *, outcome: str = "", timestamp_ms: int = 0,
                       timeout: float | None = None) -> bool:
        """Rewards a decision; True when recorded, False when it already had an outcome (that one stands)."""
        request = outcome_request(decision_id, reward, outcome, timestamp_ms)
        response: pb.OutcomeResponse = self._call("ReportOutcome", request, timeout)
        return bool(response.recorded)

    def set_consent(self, user_id: str = "", *, anonymous_id: str = "", purpose: str = "tracking",
                    granted: bool = True, source: str = "", timestamp_ms: int = 0,
                    timeout: float | None = None) -> dict[str, bool]:
        """Grants (or with ``granted=False`` withdraws) consent for ``purpose``; returns purpose -> granted."""
        request = consent_request(user_id, anonymous_id, purpose, granted, source, timestamp_ms)
        return consent_map(self._call("SetConsent", request, timeout))

    def erase_user(self, user_id: str = "", *, anonymous_id: str = "",
                   timeout: float | None = None) -> dict[str, int]:
        """Erases everything held about the user and its linked ids; returns rows deleted per table."""
        request = pb.EraseUserRequest(user_id=user_id, anonymous_id=anonymous_id)
        response: pb.EraseUserResponse = self._call("EraseUser", request, timeout)
        return dict(response.deleted)

    def export_user_data(self, user_id: str = "", *, anonymous_id: str = "",
                         timeout: float | None = None) -> pb.UserDataExport:
        """Everything held about the user (events, links, consents, profile, decisions, outcomes)."""
        request = pb.ExportUserDataRequest(user_id=user_id, anonymous_id=anonymous_id)
        return self._call("ExportUserData", request, timeout)

    def get_profile(self, user_id: str = "", *, anonymous_id: str = "",
                    timeout: float | None = None) -> pb.UserProfile:
        """The user's current behavioral profile (merged across devices)."""
        request = pb.GetUserProfileRequest(user_id=user_id, anonymous_id=anonymous_id)
        return self._call("GetUserProfile", request, timeout)

    # ----------------------------------------------------------------- lifecycle
    def close(self, timeout: float | None = None) -> None:
        """Flushes, stops the background thread and closes the channel. Safe to call more than once.

        Raises what flush() would (an ingestion failure, or FlushTimeout with the events not delivered).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._sender.close(timeout)
        finally:
            for channel in self._channels:
                channel.close()

    def __enter__(self) -> OnrampClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except OnrampError as err:  # the body's exception matters more; keep this one in the log
            log.error("onramp: close() after an exception failed: %s", err)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.pending} pending"
        return f"OnrampClient({self.target!r}, {state})"
