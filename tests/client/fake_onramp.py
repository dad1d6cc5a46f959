"""A scriptable in-process Onramp servicer for client tests, served by real gRPC on a free 127.0.0.1 port.

It keeps a dedup store of events by event_id (counting how often each id was stored, which must stay 1),
records every call's metadata and request, and can be told to fail streams, hold them, delay or fail
unary calls, so that the client's batching, re-sending, retries and deadlines can be observed.
"""
from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc


@dataclass
class StreamScript:
    """What one IngestEventBatches stream does: after acking ``fail_after`` batches it aborts with ``code``;
    ``store_unacked`` stores the next batch before aborting (its ack is lost: the client must re-send it);
    ``end_ok_after`` ends the stream with OK after that many acks instead."""

    fail_after: int | None = None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    store_unacked: bool = False
    end_ok_after: int | None = None


@dataclass
class BatchSeen:
    stream: int
    sequence: int
    event_ids: list[str]


@dataclass
class UnaryCall:
    method: str
    request: object
    metadata: dict[str, str]
    peer: str = ""  # the client connection it came on ("ipv4:127.0.0.1:PORT")


class FakeOnramp(pb_grpc.OnrampServicer):
    """The fake servicer; configure its public attributes before (or while) the client calls it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stored: dict[str, pb.Event] = {}
        self.store_counts: collections.Counter[str] = collections.Counter()
        self.batches: list[BatchSeen] = []
        self.streams = 0
        self.stream_metadata: list[dict[str, str]] = []
        self.scripts: list[StreamScript] = []  # per stream, in order; later streams behave normally
        self.required_key: str | None = None  # streams and calls without this x-api-key fail UNAUTHENTICATED
        self.drop_users: dict[str, str] = {}  # user_id -> drop reason
        self.hold_after: int | None = None  # a stream waits on `release` before handling this batch index
        self.holding = threading.Event()
        self.release = threading.Event()
        self.unary_calls: list[UnaryCall] = []
        self.unary_failures: dict[str, list[grpc.StatusCode]] = {}  # method -> codes of its next calls
        self.unary_delay = 0.0
        self.rewarded: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _auth(self, context: grpc.ServicerContext) -> dict[str, str]:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        if self.required_key is not None and md.get("x-api-key") != self.required_key:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "fake: invalid API key")
        return md

    def _store(self, batch: pb.EventBatch) -> pb.BatchAck:
        ack = pb.BatchAck(sequence=batch.sequence)
        dropped: collections.Counter[str] = collections.Counter()
        with self.lock:
            for i, ev in enumerate(batch.events):
                if ev.name == "bad":
                    ack.rejected.add(index=i, event_id=ev.event_id, field="name", message="fake: 'bad' is not allowed")
                elif ev.user_id in self.drop_users:
                    dropped[self.drop_users[ev.user_id]] += 1
                elif ev.event_id in self.stored:
                    ack.duplicates += 1
                else:
                    self.stored[ev.event_id] = ev
                    self.store_counts[ev.event_id] += 1
                    ack.accepted += 1
        for reason, n in sorted(dropped.items()):
            ack.dropped.add(reason=reason, count=n)
        return ack

    # ------------------------------------------------------------------ ingestion
    def IngestEventBatches(self, request_iterator: Iterator[pb.EventBatch],
                           context: grpc.ServicerContext) -> Iterator[pb.BatchAck]:
        with self.lock:
            number = self.streams
            self.streams += 1
        md = self._auth(context)
        with self.lock:
            self.stream_metadata.append(md)
        script = self.scripts[number] if number < len(self.scripts) else StreamScript()
        acks = 0
        for index, batch in enumerate(request_iterator):
            if self.hold_after is not None and index == self.hold_after:
                self.holding.set()
                self.release.wait(30)
            with self.lock:
                self.batches.append(BatchSeen(number, batch.sequence, [e.event_id for e in batch.events]))
            if script.fail_after is not None and acks >= script.fail_after:
                if script.store_unacked:
                    self._store(batch)
                context.abort(script.code, f"fake: stream {number} fails after {acks} acks")
            yield self._store(batch)
            acks += 1
            if script.end_ok_after is not None and acks >= script.end_ok_after:
                return

    # ------------------------------------------------------------------ unary calls
    def _unary(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        md = self._auth(context)
        with self.lock:
            self.unary_calls.append(UnaryCall(method, request, md, context.peer()))
            codes = self.unary_failures.get(method)
            code = codes.pop(0) if codes else None
        if self.unary_delay:
            self.release.wait(self.unary_delay)
        if code is not None:
            context.abort(code, f"fake: {method} fails with {code.name}")

    def calls(self, method: str) -> list[UnaryCall]:
        with self.lock:
            return [c for c in self.unary_calls if c.method == method]

    def GetNextStep(self, request: pb.NextStepRequest, context: grpc.ServicerContext) -> pb.NextStepResponse:
        self._unary("GetNextStep", request, context)
        subject = request.user_id or f"anon:{request.anonymous_id}"
        return pb.NextStepResponse(
            decision_id=f"d-{subject}", has_step=True, propensity=0.25, reason="bandit", policy_version="pv-7",
            experiment="tailored_vs_generic", arm="tailored", segments=["engaged", "cluster:2"],
            step=pb.Step(id="advanced_tip_reports", title="Try saved reports", channel=request.surface or "in_app",
                         kind="personalized", feature="reports"))

    def ReportOutcome(self, request: pb.OutcomeRequest, context: grpc.ServicerContext) -> pb.OutcomeResponse:
        self._unary("ReportOutcome", request, context)
        with self.lock:
            duplicate = request.decision_id in self.rewarded
            self.rewarded.add(request.decision_id)
        return pb.OutcomeResponse(recorded=not duplicate, duplicate=duplicate)

    def SetConsent(self, request: pb.ConsentRequest, context: grpc.ServicerContext) -> pb.ConsentState:
        self._unary("SetConsent", request, context)
        return pb.ConsentState(subject=request.user_id or f"anon:{request.anonymous_id}", consents=[
            pb.ConsentRecord(purpose=request.purpose, granted=request.granted, source=request.source),
            pb.ConsentRecord(purpose="personalization", granted=False, source="default")])

    def EraseUser(self, request: pb.EraseUserRequest, context: grpc.ServicerContext) -> pb.EraseUserResponse:
        self._unary("EraseUser", request, context)
        return pb.EraseUserResponse(deleted={"events": 12, "decisions": 3, "identity_links": 1})

    def ExportUserData(self, request: pb.ExportUserDataRequest, context: grpc.ServicerContext) -> pb.UserDataExport:
        self._unary("ExportUserData", request, context)
        with self.lock:
            events = [e for e in self.stored.values() if e.user_id == request.user_id]
        return pb.UserDataExport(subject=request.user_id, events=events,
                                 profile=pb.UserProfile(subject=request.user_id, event_count=len(events)))

    def GetUserProfile(self, request: pb.GetUserProfileRequest, context: grpc.ServicerContext) -> pb.UserProfile:
        self._unary("GetUserProfile", request, context)
        return pb.UserProfile(subject=request.user_id or f"anon:{request.anonymous_id}", sessions=4,
                              features_used={"reports": 3}, segments=["power_user"])


@dataclass
class FakeServer:
    """A real gRPC server on 127.0.0.1 serving a FakeOnramp; ``restart()`` drops every connection."""

    servicer: FakeOnramp = field(default_factory=FakeOnramp)
    credentials: grpc.ServerCredentials | None = None
    port: int = 0
    server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_OnrampServicer_to_server(self.servicer, server)
        bind = f"127.0.0.1:{self.port}"
        port = (server.add_secure_port(bind, self.credentials) if self.credentials
                else server.add_insecure_port(bind))
        assert port, f"could not bind {bind}"
        self.port = port
        server.start()
        self.server = server
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait(10)
            self.server = None

    def restart(self) -> None:
        """Stops at once (cancelling every open call) and serves again on the same port."""
        self.stop()
        self.start()
