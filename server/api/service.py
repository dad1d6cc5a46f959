"""The grpc.aio servicer of onramp.v1.Onramp: validates every request, then hands it to the pipeline
(ingestion, consent, erasure, export, profiles) or to the decision service (GetNextStep, ReportOutcome).

Ingestion never waits for one commit per event: IngestEvents buffers events (``commit_max_events`` or
``commit_interval_ms``) and IngestEventBatches reads batches ahead of their acks; each ack or summary is
sent only after the writer has committed what it counts.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.base.catalog import Step
from server.base.config import IngestConfig
from server.base.metrics import Metrics
from server.base.records import ANON_PREFIX, StoredEvent
from server.decide.engine_api import DecisionService, NextStep, ProfileEnricher, ServiceError
from server.ingest.pipeline import IngestResult, Pipeline, UserData
from server.ingest.profiles import Profile
from server.store.rows import ConsentRow, LinkRow
from server.api.validation import (EventValues, ValidationError, validate_batch_size, validate_consent, validate_event,
                               validate_next_step, validate_outcome, validate_subject_request)
from server.base.clock import now_ms
from server.store.writer import WriterClosed

log = logging.getLogger(__name__)
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def decision_details(row: dict[str, Any]) -> str:
    """The JSON details of a logged decision (context, eligible steps, probabilities, surface, deadline)."""
    def parsed(v: Any) -> Any:
        if isinstance(v, str) and v:
            try:
                return json.loads(v)
            except ValueError:
                return v
        return v
    return json.dumps({"surface": row.get("surface") or "", "context": parsed(row.get("context")) or {},
                       "eligible": parsed(row.get("eligible")) or [],
                       "probabilities": parsed(row.get("probabilities")) or {},
                       "reward_deadline_ms": row.get("reward_deadline_ms") or 0}, sort_keys=True)


def decision_records(rows: Sequence[dict[str, Any]]) -> list[pb.DecisionRecord]:
    """DecisionRecord messages of logged decision rows."""
    return [pb.DecisionRecord(decision_id=d["decision_id"], timestamp_ms=d["timestamp_ms"] or 0,
                              step_id=d["step_id"] or "", propensity=d["propensity"] or 0.0,
                              reason=d["reason"] or "", policy_version=d["policy_version"] or "",
                              experiment=d["experiment"] or "", arm=d["arm"] or "", details_json=decision_details(d))
            for d in rows]


def step_message(s: Step) -> pb.Step:
    """The Step message of a catalog step."""
    return pb.Step(id=s.id, title=s.title, channel=s.channel, kind=s.kind, feature=s.feature or "")


def next_step_message(a: NextStep, steps: dict[str, pb.Step] | None = None) -> pb.NextStepResponse:
    """The NextStepResponse of a decision service's answer; ``steps`` caches Step messages by step id."""
    response = pb.NextStepResponse(decision_id=a.decision_id, has_step=a.step is not None, propensity=a.propensity,
                                   reason=a.reason, policy_version=a.policy_version, experiment=a.experiment,
                                   arm=a.arm, segments=a.segments)
    step = a.step
    if step is not None:
        message = None if steps is None else steps.get(step.id)
        if message is None:
            message = step_message(step)
            if steps is not None:
                steps[step.id] = message
        response.step.CopyFrom(message)
    return response


def drop_counts(dropped: Counter[str]) -> list[pb.DropCount]:
    """DropCount messages of an ingest result's drop reasons, by reason."""
    return [pb.DropCount(reason=k, count=v) for k, v in sorted(dropped.items()) if v]


def consent_records(rows: list[ConsentRow]) -> list[pb.ConsentRecord]:
    return [pb.ConsentRecord(purpose=c.purpose, granted=c.granted, source=c.source, timestamp_ms=c.timestamp_ms)
            for c in rows]


def link_messages(rows: list[LinkRow]) -> list[pb.IdentityLink]:
    return [pb.IdentityLink(kind=x.alias_kind, alias=x.alias, user_id=x.user_id, linked_ms=x.linked_ms) for x in rows]


def event_message(e: StoredEvent) -> pb.Event:
    """The Event message of a stored event (as exported)."""
    return pb.Event(event_id=e.event_id, user_id=e.user_id, anonymous_id=e.anonymous_id, device_id=e.device_id,
                    name=e.name, timestamp_ms=e.timestamp_ms, channel=e.channel, device_type=e.device_type,
                    feature=e.feature, step_id=e.step_id, decision_id=e.decision_id, properties=e.properties)


def profile_message(profile: Profile | None, subject: str, links: list[LinkRow], consents: list[ConsentRow],
                    enricher: ProfileEnricher | None, now: int) -> pb.UserProfile:
    """The UserProfile message: counters of ``profile``, links, consent, and the enricher's segments and
    features when an enricher is given."""
    msg = pb.UserProfile(subject=subject, links=link_messages(links), consents=consent_records(consents))
    if profile is None:
        return msg
    msg.first_seen_ms = profile.first_seen_ms
    msg.last_seen_ms = profile.last_seen_ms
    msg.event_count = profile.event_count
    msg.sessions = profile.sessions
    msg.features_used.update(profile.features_used)
    msg.channels.update(profile.channels)
    msg.device_types.update(profile.device_types)
    msg.screens_skipped = profile.screens_skipped
    msg.tutorials_completed = profile.tutorials_completed
    msg.steps_completed.extend(k for k, _ in sorted(profile.steps_completed.items(), key=lambda kv: (kv[1], kv[0])))
    msg.steps_dismissed.extend(k for k, _ in sorted(profile.steps_dismissed.items(), key=lambda kv: (kv[1], kv[0])))
    if enricher is not None:
        segments, features = enricher.enrich(profile, now)
        msg.segments.extend(segments)
        msg.features.update(features)
    return msg


class OnrampService(pb_grpc.OnrampServicer):
    """Implements every RPC of onramp.v1.Onramp on top of a :class:`Pipeline` and a decision service."""

    def __init__(self, pipeline: Pipeline, decisions: DecisionService, ingest: IngestConfig | None = None,
                 enricher: ProfileEnricher | None = None, metrics: Metrics | None = None) -> None:
        self.pipeline = pipeline
        self.decisions = decisions
        self.ingest = ingest or pipeline.ingest_config
        self.enricher = enricher
        self.metrics = metrics if metrics is not None else Metrics()
        self._steps: dict[str, pb.Step] = {}  # Step messages by step id, built once

    # -- helpers ---------------------------------------------------------------------------------------------
    async def _invalid(self, context: grpc.aio.ServicerContext, err: ValidationError) -> None:
        await context.abort(INVALID, str(err))

    async def _committed(self, future: concurrent.futures.Future[IngestResult],
                         context: grpc.aio.ServicerContext) -> IngestResult:
        try:
            return await asyncio.wrap_future(future)
        except WriterClosed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; re-send the events")
        except Exception as exc:  # noqa: BLE001 - storage failure: tell the caller, keep serving
            log.exception("storing events failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"storing events failed: {type(exc).__name__}")
        raise AssertionError("unreachable")

    def _submit(self, events: list[EventValues]) -> concurrent.futures.Future[IngestResult]:
        return self.pipeline.submit_events(events)

    def _record(self, result: IngestResult, rejected: int = 0) -> None:
        self.metrics.record_events(accepted=result.accepted, duplicates=result.duplicates, rejected=rejected,
                                   dropped=result.dropped)

    # -- ingestion -------------------------------------------------------------------------------------------
    async def IngestEvents(self, request_iterator: AsyncIterator[pb.Event], context: grpc.aio.ServicerContext
                           ) -> pb.IngestSummary:
        cfg = self.ingest
        loop = asyncio.get_running_loop()
        total = IngestResult()
        buffer: list[EventValues] = []
        inflight: collections.deque[concurrent.futures.Future[IngestResult]] = collections.deque()
        timer: asyncio.TimerHandle | None = None
        received = 0

        def flush() -> None:
            nonlocal buffer, timer
            if timer is not None:
                timer.cancel()
                timer = None
            if buffer:
                try:
                    inflight.append(self._submit(buffer))
                except WriterClosed as exc:
                    failed: concurrent.futures.Future[IngestResult] = concurrent.futures.Future()
                    failed.set_exception(exc)
                    inflight.append(failed)
                buffer = []

        async def settle(all_of_them: bool) -> None:
            while inflight and (all_of_them or inflight[0].done() or len(inflight) > cfg.max_inflight_batches):
                result = await self._committed(inflight.popleft(), context)
                total.add(result)
                self._record(result)

        try:
            async for event in request_iterator:
                try:
                    values = validate_event(event, cfg, now_ms())
                except ValidationError as err:
                    flush()
                    await settle(True)  # the valid events before the bad one are committed and stay
                    self.metrics.record_events(rejected=1)
                    await self._invalid(context, err.within(f"events[{received}]"))
                received += 1
                buffer.append(values)  # the fields validation read: the pipeline need not read them again
                if len(buffer) >= cfg.commit_max_events:
                    flush()
                    await settle(False)
                elif timer is None:
                    timer = loop.call_later(cfg.commit_interval_ms / 1000.0, flush)
            flush()
            await settle(True)
        finally:
            if timer is not None:
                timer.cancel()
        return pb.IngestSummary(received=received, accepted=total.accepted, duplicates=total.duplicates,
                                dropped=drop_counts(total.dropped), outside_window=total.outside_window)

    async def IngestEventBatches(self, request_iterator: AsyncIterator[pb.EventBatch],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BatchAck]:
        cfg = self.ingest
        pending: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(cfg.max_inflight_batches)
        done = object()

        async def read() -> None:
            position = 0
            try:
                async for batch in request_iterator:
                    events = batch.events
                    try:
                        validate_batch_size(len(events), cfg)
                    except ValidationError as err:
                        pending.put_nowait(err.within(f"batches[{position}]"))
                        return
                    await slots.acquire()
                    valid: list[EventValues] = []
                    rejected: list[pb.RejectedEvent] = []
                    now = now_ms()
                    for i, ev in enumerate(events):
                        try:
                            values = validate_event(ev, cfg, now)
                        except ValidationError as err:
                            rejected.append(pb.RejectedEvent(index=i, event_id=ev.event_id, field=err.field,
                                                             message=err.message))
                        else:
                            valid.append(values)
                    future = self._submit(valid) if valid else None
                    pending.put_nowait((batch.sequence, future, rejected))
                    position += 1
            except BaseException as exc:  # noqa: BLE001 - handed to the responding side
                pending.put_nowait(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                pending.put_nowait(done)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await pending.get()
                if item is done:
                    break
                if isinstance(item, ValidationError):
                    await self._invalid(context, item)
                if isinstance(item, asyncio.CancelledError):
                    break
                if isinstance(item, BaseException):
                    raise item
                sequence, future, rejected = item
                result = await self._committed(future, context) if future is not None else IngestResult()
                slots.release()
                self._record(result, rejected=len(rejected))
                yield pb.BatchAck(sequence=sequence, accepted=result.accepted, duplicates=result.duplicates,
                                  dropped=drop_counts(result.dropped), rejected=rejected,
                                  outside_window=result.outside_window)
        finally:
            if not reader.done():
                reader.cancel()

    # -- decisions -------------------------------------------------------------------------------------------
    async def _service_call(self, context: grpc.aio.ServicerContext, coro: Any) -> Any:
        try:
            return await coro
        except ServiceError as err:
            code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(err))
        except ValidationError as err:
            await self._invalid(context, err)

    async def GetNextStep(self, request: pb.NextStepRequest, context: grpc.aio.ServicerContext
                          ) -> pb.NextStepResponse:
        now = now_ms()
        try:
            validate_next_step(request, self.ingest, now)
        except ValidationError as err:
            await self._invalid(context, err)
        subject = self.pipeline.resolve(request.user_id, request.anonymous_id)
        try:  # _service_call inlined: one coroutine less to create and resume on the hottest RPC
            return next_step_message(await self.decisions.next_step(subject, request.surface, request.context,
                                                                  request.timestamp_ms or now), self._steps)
        except ServiceError as err:
            code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(err))
        except ValidationError as err:
            await self._invalid(context, err)
        raise AssertionError("unreachable")

    async def ReportOutcome(self, request: pb.OutcomeRequest, context: grpc.aio.ServicerContext
                            ) -> pb.OutcomeResponse:
        now = now_ms()
        try:
            validate_outcome(request, self.ingest, now)
        except ValidationError as err:
            await self._invalid(context, err)
        recorded = await self._service_call(context, self.decisions.report_outcome(
            request.decision_id, request.reward, request.outcome, request.timestamp_ms or now))
        return pb.OutcomeResponse(recorded=recorded, duplicate=not recorded)

    # -- consent and user data -------------------------------------------------------------------------------
    async def SetConsent(self, request: pb.ConsentRequest, context: grpc.aio.ServicerContext) -> pb.ConsentState:
        now = now_ms()
        try:
            validate_consent(request, self.ingest, now)
        except ValidationError as err:
            await self._invalid(context, err)
        subject = self.pipeline.resolve(request.user_id, request.anonymous_id)
        rows = await self.pipeline.set_consent(subject, request.purpose, request.granted, request.source,
                                               request.timestamp_ms or now)
        return pb.ConsentState(subject=subject, consents=consent_records(rows))

    async def _subject_of(self, request: Any, context: grpc.aio.ServicerContext) -> str:
        try:
            validate_subject_request(request, self.ingest)
        except ValidationError as err:
            await self._invalid(context, err)
        return self.pipeline.resolve(request.user_id, request.anonymous_id)

    async def EraseUser(self, request: pb.EraseUserRequest, context: grpc.aio.ServicerContext
                        ) -> pb.EraseUserResponse:
        subject = await self._subject_of(request, context)
        counts = await self.pipeline.erase(subject)
        log.info("erased a subject: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return pb.EraseUserResponse(deleted=counts)

    async def ExportUserData(self, request: pb.ExportUserDataRequest, context: grpc.aio.ServicerContext
                             ) -> pb.UserDataExport:
        subject = await self._subject_of(request, context)
        data: UserData = await self.pipeline.export(subject)
        profile = profile_message(self.pipeline.profile(subject), subject, data.links,
                                  self.pipeline.consent.records(subject), self.enricher, now_ms())
        return pb.UserDataExport(
            subject=subject, links=link_messages(data.links), consents=consent_records(data.consents),
            events=[event_message(e) for e in data.events], profile=profile,
            decisions=decision_records(data.decisions),
            outcomes=[pb.OutcomeRecord(decision_id=o["decision_id"], reward=o["reward"] or 0.0,
                                       source=o["source"] or "", outcome=o["outcome"] or "",
                                       timestamp_ms=o["timestamp_ms"] or 0) for o in data.outcomes])

    async def GetUserProfile(self, request: pb.GetUserProfileRequest, context: grpc.aio.ServicerContext
                             ) -> pb.UserProfile:
        subject = await self._subject_of(request, context)
        profile = self.pipeline.profile(subject)
        links = [] if subject.startswith(ANON_PREFIX) else self.pipeline.identity.links_of(subject)
        consents = self.pipeline.consent.records(subject)
        if profile is None and not links and not consents:
            field = "user_id" if request.user_id else "anonymous_id"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"{field}: no profile for {request.user_id or request.anonymous_id!r} "
                                "(no event, consent or identity link of this subject is stored)")
        return profile_message(profile, subject, links, consents, self.enricher, now_ms())
