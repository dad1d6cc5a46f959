"""OnrampClient: the synchronous, thread-safe client a backend service uses to talk to Onramp."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from onramp_client.connection import PemSource, call_metadata, make_channel
from onramp_client.errors import ClientClosed, OnrampError
from onramp_client.events import PropertyValue, build_event
from onramp_client.ingest import BatchSender, SenderConfig
from onramp_client.retry import UNARY_RETRYABLE, Backoff
from onramp_client.values import IngestResult, NextStep

log = logging.getLogger("onramp_client")
R = TypeVar("R")


class OnrampClient:
    """Client of one Onramp server: buffered event tracking plus the unary calls, over one gRPC channel.

    ``track()`` only buffers; a background thread sends batches of ``batch_size`` events (or whatever is
    buffered after ``flush_interval`` seconds) over the IngestEventBatches stream, re-sending
    unacknowledged batches after failures. At most ``max_queue`` events wait for acknowledgement.
    Unary calls have a deadline of ``timeout`` seconds (overall, retries included) and are retried with
    backoff on UNAVAILABLE, at most ``max_retries`` times. ``api_key`` travels as ``x-api-key`` metadata.
    TLS is used when ``root_certificates`` (PEM bytes or a file path) or ``tls=True`` is given, mutual TLS
    when ``private_key`` and ``certificate_chain`` are given too; the channel is insecure otherwise.
    """

    def __init__(self, target: str, *, api_key: str | None = None, timeout: float = 5.0, batch_size: int = 500,
                 flush_interval: float = 0.2, max_queue: int = 100_000, max_retries: int = 8,
                 backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 root_certificates: PemSource | None = None, private_key: PemSource | None = None,
                 certificate_chain: PemSource | None = None, tls: bool = False,
                 channel_options: Sequence[tuple[str, Any]] | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout: expected seconds > 0 (got {timeout!r})")
        self.target = target
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self._backoff = Backoff(backoff_initial, backoff_max)
        config = SenderConfig(batch_size=batch_size, flush_interval=flush_interval, max_queue=max_queue,
                              max_retries=max_retries, backoff=self._backoff)
        self._metadata = call_metadata(api_key)
        self._channel = make_channel(target, root_certificates=root_certificates, private_key=private_key,
                                     certificate_chain=certificate_chain, tls=tls, channel_options=channel_options)
        self._stub = pb_grpc.OnrampStub(self._channel)
        self._closed = False
        self._sender = BatchSender(self._open_stream, config)

    def _open_stream(self, requests: Any) -> Any:
        return self._stub.IngestEventBatches(requests, metadata=self._metadata)

    # ----------------------------------------------------------------- events
    def track(self, name: str, *, user_id: str = "", anonymous_id: str = "", device_id: str = "",
              feature: str = "", step_id: str = "", decision_id: str = "", channel: str = "",
              device_type: str = "", properties: Mapping[str, PropertyValue] | None = None,
              timestamp_ms: int | None = None, event_id: str | None = None, block: bool = False,
              block_timeout: float | None = None) -> str:
        """Buffers one event and returns its event_id (a fresh uuid4 hex unless given); does not block.

        ``timestamp_ms`` defaults to now. Raises QueueFull when ``max_queue`` events await acknowledgement
        (with ``block=True`` it waits for room instead, up to ``block_timeout`` seconds), ValueError when
        neither user_id nor anonymous_id is given, and ClientClosed after close().
        """
        event = build_event(name, user_id=user_id, anonymous_id=anonymous_id, device_id=device_id,
                            feature=feature, step_id=step_id, decision_id=decision_id, channel=channel,
                            device_type=device_type, properties=properties, timestamp_ms=timestamp_ms,
                            event_id=event_id)
        self._sender.put(event, block=block, timeout=block_timeout)
        return event.event_id

    def identify(self, user_id: str, *, anonymous_id: str = "", device_id: str = "", channel: str = "",
                 **kw: Any) -> str:
        """Buffers an ``identify`` event linking ``anonymous_id`` and/or ``device_id`` to ``user_id``."""
        if not user_id:
            raise ValueError("identify: user_id is required")
        return self.track("identify", user_id=user_id, anonymous_id=anonymous_id, device_id=device_id,
                          channel=channel, **kw)

    def flush(self, timeout: float | None = None) -> IngestResult:
        """Sends everything buffered and blocks until all of it is acknowledged (durable on the server).

        Returns the totals of the acknowledgements since the previous flush. Raises OnrampError for an
        ingestion failure since then (its ``unsent_events`` are the events not delivered) and FlushTimeout
        when ``timeout`` seconds pass first.
        """
        return self._sender.flush(timeout)

    @property
    def pending(self) -> int:
        """Events buffered or in flight, not yet acknowledged."""
        return self._sender.pending

    def totals(self) -> IngestResult:
        """Totals of all acknowledgements since the client was created."""
        return self._sender.totals()

    # ----------------------------------------------------------------- unary calls
    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        """Calls a unary method with an overall deadline, retrying UNAVAILABLE with backoff."""
        if self._closed:
            raise ClientClosed(method)
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        fn: Callable[..., Any] = getattr(self._stub, method)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return fn(request, timeout=max(remaining, 0.001), metadata=self._metadata)
            except grpc.RpcError as err:
                code = err.code() if isinstance(err, grpc.Call) else None
                delay = self._backoff.delay(attempt, random)
                if (code in UNARY_RETRYABLE and attempt < self.max_retries
                        and time.monotonic() + delay < deadline):
                    attempt += 1
                    log.info("onramp: %s %s; retry %d in %.2f s", method, code.name, attempt, delay)
                    time.sleep(delay)
                    continue
                raise OnrampError.from_rpc_error(err, method) from None

    def next_step(self, user_id: str = "", *, anonymous_id: str = "", surface: str = "",
                  context: Mapping[str, str] | None = None, timestamp_ms: int = 0,
                  timeout: float | None = None) -> NextStep:
        """Asks which onboarding step to show this user on ``surface`` (in_app, email, push, or any)."""
        request = pb.NextStepRequest(user_id=user_id, anonymous_id=anonymous_id, surface=surface,
                                     context=dict(context or {}), timestamp_ms=timestamp_ms)
        return NextStep.from_proto(self._call("GetNextStep", request, timeout))

    def report_outcome(self, decision_id: str, reward: float, *, outcome: str = "", timestamp_ms: int = 0,
                       timeout: float | None = None) -> bool:
        """Rewards a decision; True when recorded, False when it already had an outcome (that one stands)."""
        request = pb.OutcomeRequest(decision_id=decision_id, reward=float(reward), outcome=outcome,
                                    timestamp_ms=timestamp_ms)
        response: pb.OutcomeResponse = self._call("ReportOutcome", request, timeout)
        return bool(response.recorded)

    def set_consent(self, user_id: str = "", *, anonymous_id: str = "", purpose: str = "tracking",
                    granted: bool = True, source: str = "", timestamp_ms: int = 0,
                    timeout: float | None = None) -> dict[str, bool]:
        """Grants (or with ``granted=False`` withdraws) consent for ``purpose``; returns purpose -> granted."""
        request = pb.ConsentRequest(user_id=user_id, anonymous_id=anonymous_id, purpose=purpose, granted=granted,
                                    source=source, timestamp_ms=timestamp_ms)
        state: pb.ConsentState = self._call("SetConsent", request, timeout)
        return {c.purpose: c.granted for c in state.consents}

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
            self._channel.close()

    @property
    def closed(self) -> bool:
        return self._closed

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
