"""What both Onramp clients share: settings, the channel of the ingestion stream, the background sender,
and the buffered event calls (track, identify, pending, totals)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import itertools

import grpc

from onramp.v1 import onramp_pb2_grpc as pb_grpc
from onramp_client.connection import ChannelSpec, PemSource, call_metadata, channel_spec, check_connections
from onramp_client.events import PropertyValue, build_event
from onramp_client.ingest import BatchSender, SenderConfig
from onramp_client.retry import Backoff
from onramp_client.values import IngestResult


class EventTracker:
    """Validated settings plus event buffering; the clients add the unary calls and flush/close."""

    def __init__(self, target: str, *, api_key: str | None = None, timeout: float = 5.0, batch_size: int = 500,
                 flush_interval: float = 0.2, max_queue: int = 100_000, max_retries: int = 8,
                 backoff_initial: float = 0.1, backoff_max: float = 5.0,
                 root_certificates: PemSource | None = None, private_key: PemSource | None = None,
                 certificate_chain: PemSource | None = None, tls: bool = False,
                 channel_options: Sequence[tuple[str, Any]] | None = None, connections: int = 4) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout: expected seconds > 0 (got {timeout!r})")
        self.target = target
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self._backoff = Backoff(backoff_initial, backoff_max)
        config = SenderConfig(batch_size=batch_size, flush_interval=flush_interval, max_queue=max_queue,
                              max_retries=max_retries, backoff=self._backoff)
        self._metadata = call_metadata(api_key)
        self._spec: ChannelSpec = channel_spec(target, root_certificates=root_certificates, private_key=private_key,
                                               certificate_chain=certificate_chain, tls=tls,
                                               channel_options=channel_options)
        self.connections = check_connections(connections)
        # Blocking-API channels, one connection each: the sender thread streams events over the first, the
        # blocking client's unary calls go round-robin over all of them (a server of several processes sharing
        # one port balances connections, not calls, so one connection would reach one process only).
        self._channels: list[grpc.Channel] = [self._spec.sync_channel() for _ in range(self.connections)]
        self._stubs = [pb_grpc.OnrampStub(ch) for ch in self._channels]
        self._stub = self._stubs[0]
        self._next_stub = itertools.cycle(self._stubs).__next__
        self._closed = False
        self._sender = BatchSender(self._open_stream, config)

    def _open_stream(self, requests: Any) -> Any:
        return self._stub.IngestEventBatches(requests, metadata=self._metadata)

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

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

    @property
    def pending(self) -> int:
        """Events buffered or in flight, not yet acknowledged."""
        return self._sender.pending

    def totals(self) -> IngestResult:
        """Totals of all acknowledgements since the client was created."""
        return self._sender.totals()
