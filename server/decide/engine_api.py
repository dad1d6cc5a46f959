"""The seam between the servicer and the decision engine: the :class:`DecisionService` and
:class:`ProfileEnricher` Protocols, the plain values they take and return (:class:`NextStep`; the servicer
alone converts them to and from protobuf), the errors a decision service may raise, and
:class:`StaticCoreFlow`, a minimal real decision service (the static core flow).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from server.base.catalog import Catalog, Step, load_catalog
from server.base.clock import HOUR_MS
from server.base.ids import new_decision_id
from server.base.metrics import Metrics
from server.base.reasons import Reason
from server.ingest.consent import PERSONALIZATION
from server.ingest.pipeline import Pipeline
from server.ingest.profiles import Profile
from server.store.interfaces import Store


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


@dataclass(frozen=True, slots=True)
class NextStep:
    """The answer to one GetNextStep: the step to show (None: nothing now) and how it was chosen."""

    decision_id: str
    step: Step | None
    propensity: float
    reason: str
    policy_version: str
    experiment: str = ""
    arm: str = ""
    segments: tuple[str, ...] | list[str] = ()


@runtime_checkable
class DecisionService(Protocol):
    """Answers GetNextStep and ReportOutcome. ``subject`` is the canonical subject (identity resolved);
    ``surface`` and ``context`` are the request's; ``now_ms`` is the request time (its timestamp_ms, or the
    server clock)."""

    async def next_step(self, subject: str, surface: str, context: Mapping[str, str], now_ms: int) -> NextStep: ...

    async def report_outcome(self, decision_id: str, reward: float, outcome: str, now_ms: int) -> bool:
        """True when recorded, False when the decision already had an outcome (a duplicate); ServiceError
        NOT_FOUND when no such decision was logged."""
        ...


@runtime_checkable
class ProfileEnricher(Protocol):
    """Adds segments and numeric context features to a profile for GetUserProfile."""

    def enrich(self, profile: Profile, now_ms: int) -> tuple[list[str], dict[str, float]]: ...


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

    async def next_step(self, subject: str, surface: str, context: Mapping[str, str], now_ms: int) -> NextStep:
        """The first core step ``subject`` has not completed, logged before it is returned."""
        step_id = self._next_core(self.pipeline.profile(subject))
        personalized = self.pipeline.consent.granted(subject, PERSONALIZATION)
        decision_id = new_decision_id()
        if step_id is None:
            reason, eligible, probabilities, deadline = str(Reason.NONE_ELIGIBLE), [], {}, 0
        else:
            reason = str(Reason.CORE if personalized else Reason.NO_CONSENT)
            eligible, probabilities = [step_id], {step_id: 1.0}
            deadline = now_ms + int(self.catalog.step(step_id).reward_window_hours * HOUR_MS)
        row: dict[str, Any] = {
            "decision_id": decision_id, "user_pseudo": self.pipeline.pseudonym(subject), "timestamp_ms": now_ms,
            "surface": surface, "step_id": step_id or "", "propensity": 1.0, "reason": reason,
            "policy_version": self.policy_version, "experiment": "", "arm": "",
            "context": dict(context), "eligible": eligible, "probabilities": probabilities,
            "reward_deadline_ms": deadline,
        }
        await self.pipeline.writer.call(lambda store: store.insert_decisions([row]))
        if self.metrics is not None:
            self.metrics.record_decision(reason=reason, step=step_id or "")
        return NextStep(decision_id, None if step_id is None else self.catalog.step(step_id), 1.0, reason,
                        self.policy_version)

    async def report_outcome(self, decision_id: str, reward: float, outcome: str, now_ms: int) -> bool:
        """Record the first outcome of a decision; later ones are duplicates (False)."""
        def job(store: Store) -> bool | None:
            decision = store.get_decision(decision_id)
            if decision is None:
                return None
            return store.insert_outcome({
                "decision_id": decision_id, "user_pseudo": decision["user_pseudo"], "reward": reward,
                "source": "reported", "outcome": outcome, "timestamp_ms": now_ms})
        recorded = await self.pipeline.writer.call(job)
        if recorded is None:
            raise ServiceError.not_found("decision_id", f"no decision {decision_id!r} was logged")
        if recorded and self.metrics is not None:
            self.metrics.record_reward(source="reported", reward=reward)
        return recorded
