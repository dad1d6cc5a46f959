"""The seam between the servicer and the decision engine: the :class:`DecisionService` and
:class:`ProfileEnricher` Protocols, the errors a decision service may raise, and :class:`StaticCoreFlow`, a
minimal real decision service (the static core flow) used until the full engine is plugged in.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from onramp.v1 import onramp_pb2 as pb
from server.catalog import Catalog, load_catalog
from server.consent import PERSONALIZATION
from server.metrics import Metrics
from server.pipeline import Pipeline
from server.profiles import Profile
from server.store import SqliteStore

DAY_MS = 24 * 3600 * 1000


class ServiceError(Exception):
    """A request the decision service refuses; ``code`` is a grpc.StatusCode name (NOT_FOUND,
    INVALID_ARGUMENT, FAILED_PRECONDITION, ...) and ``field`` the request field at fault."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code = code
        self.field = field
        self.message = message

    @classmethod
    def not_found(cls, field: str, message: str) -> "ServiceError":
        return cls("NOT_FOUND", field, message)

    @classmethod
    def invalid(cls, field: str, message: str) -> "ServiceError":
        return cls("INVALID_ARGUMENT", field, message)


@runtime_checkable
class DecisionService(Protocol):
    """Answers GetNextStep and ReportOutcome. ``subject`` is the canonical subject (identity resolved);
    ``now_ms`` is the request time (the request's timestamp_ms, or the server clock)."""

    async def next_step(self, request: pb.NextStepRequest, subject: str, now_ms: int) -> pb.NextStepResponse: ...

    async def report_outcome(self, request: pb.OutcomeRequest, now_ms: int) -> pb.OutcomeResponse: ...


@runtime_checkable
class ProfileEnricher(Protocol):
    """Adds segments and numeric context features to a profile for GetUserProfile."""

    def enrich(self, profile: Profile, now_ms: int) -> tuple[list[str], dict[str, float]]: ...


def step_message(catalog: Catalog, step_id: str) -> pb.Step:
    """The Step message of a catalog step."""
    s = catalog.step(step_id)
    return pb.Step(id=s.id, title=s.title, channel=s.channel, kind=s.kind, feature=s.feature or "")


class StaticCoreFlow:
    """Shows the core steps in their static order (the first one not completed yet), then nothing.

    Every answer is logged as a decision (propensity 1.0, reason ``core``, or ``no_consent`` when the user
    has not granted personalization, or ``none_eligible`` when every core step is done).
    """

    def __init__(self, pipeline: Pipeline, catalog: Catalog | None = None, metrics: Metrics | None = None) -> None:
        self.pipeline = pipeline
        self.catalog = catalog if catalog is not None else load_catalog(None)
        self.metrics = metrics
        self.policy_version = f"static-core:{self.catalog.version}"

    def _next_core(self, profile: Profile | None) -> str | None:
        done = profile.steps_completed if profile is not None else {}
        for step_id in self.catalog.core_order:
            if step_id not in done:
                return step_id
        return None

    async def next_step(self, request: pb.NextStepRequest, subject: str, now_ms: int) -> pb.NextStepResponse:
        """The first core step ``subject`` has not completed, logged before it is returned."""
        step_id = self._next_core(self.pipeline.profile(subject))
        personalized = self.pipeline.consent.granted(subject, PERSONALIZATION)
        decision_id = uuid.uuid4().hex
        if step_id is None:
            reason, eligible, probabilities, deadline = "none_eligible", [], {}, 0
        else:
            reason = "core" if personalized else "no_consent"
            eligible, probabilities = [step_id], {step_id: 1.0}
            deadline = now_ms + int(self.catalog.step(step_id).reward_window_hours * 3600 * 1000)
        row: dict[str, Any] = {
            "decision_id": decision_id, "user_pseudo": self.pipeline.pseudonym(subject), "timestamp_ms": now_ms,
            "surface": request.surface, "step_id": step_id or "", "propensity": 1.0, "reason": reason,
            "policy_version": self.policy_version, "experiment": "", "arm": "",
            "context": dict(request.context), "eligible": eligible, "probabilities": probabilities,
            "reward_deadline_ms": deadline,
        }
        await self.pipeline.writer.call(lambda store: store.insert_decisions([row]))
        if self.metrics is not None:
            self.metrics.record_decision(reason=reason, step=step_id or "")
        response = pb.NextStepResponse(decision_id=decision_id, has_step=step_id is not None, propensity=1.0,
                                       reason=reason, policy_version=self.policy_version)
        if step_id is not None:
            response.step.CopyFrom(step_message(self.catalog, step_id))
        return response

    async def report_outcome(self, request: pb.OutcomeRequest, now_ms: int) -> pb.OutcomeResponse:
        """Record the first outcome of a decision; later ones are answered ``duplicate``."""
        def job(store: SqliteStore) -> bool | None:
            decision = store.get_decision(request.decision_id)
            if decision is None:
                return None
            return store.insert_outcome({
                "decision_id": request.decision_id, "user_pseudo": decision["user_pseudo"],
                "reward": request.reward, "source": "reported", "outcome": request.outcome,
                "timestamp_ms": now_ms})
        recorded = await self.pipeline.writer.call(job)
        if recorded is None:
            raise ServiceError.not_found("decision_id", f"no decision {request.decision_id!r} was logged")
        if recorded and self.metrics is not None:
            self.metrics.record_reward(source="reported", reward=request.reward)
        return pb.OutcomeResponse(recorded=recorded, duplicate=not recorded)


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
