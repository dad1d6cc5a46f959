"""Plain values returned by the client: the chosen next step and the totals of an ingestion flush."""
from __future__ import annotations

from dataclasses import dataclass, field

from onramp.v1 import onramp_pb2 as pb


@dataclass(frozen=True, slots=True)
class NextStep:
    """The step Onramp chose for a user, with what is needed to attribute its outcome.

    ``has_step`` is False when nothing may be shown now (caps, cooldowns); the step fields are empty then,
    but ``decision_id`` and ``reason`` are still set.
    """

    decision_id: str
    step_id: str
    title: str
    channel: str
    kind: str
    feature: str
    has_step: bool
    propensity: float
    reason: str
    policy_version: str
    experiment: str
    arm: str
    segments: tuple[str, ...]

    @classmethod
    def from_proto(cls, msg: pb.NextStepResponse) -> NextStep:
        """Copies a NextStepResponse into a NextStep."""
        step = msg.step
        return cls(decision_id=msg.decision_id, step_id=step.id, title=step.title, channel=step.channel,
                   kind=step.kind, feature=step.feature, has_step=msg.has_step, propensity=msg.propensity,
                   reason=msg.reason, policy_version=msg.policy_version, experiment=msg.experiment,
                   arm=msg.arm, segments=tuple(msg.segments))


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the server refused as invalid: which batch and position, its id, the field and why."""

    sequence: int
    index: int
    event_id: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"event {self.event_id or '<no id>'} (batch {self.sequence}, #{self.index})"
        return f"{where}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Totals of the acknowledgements received since the previous flush.

    ``accepted`` events were newly stored, ``duplicates`` were stored before (same event_id, within the
    server's dedupe window: 7 days of event time by default), ``dropped`` counts events not stored because
    of consent or erasure by reason (no_consent, opted_out, erased), and ``rejected`` lists invalid events.
    ``outside_window`` counts the accepted events older than the dedupe window: stored without the
    duplicate check, so one re-sent that late was stored again. Everything counted here is durable on the
    server.
    """

    accepted: int = 0
    duplicates: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rejected: tuple[Rejection, ...] = ()
    outside_window: int = 0

    @property
    def acknowledged(self) -> int:
        """Number of events the server answered for, whatever the answer."""
        return self.accepted + self.duplicates + sum(self.dropped.values()) + len(self.rejected)


class ResultTally:
    """Mutable running totals of BatchAcks, turned into an IngestResult on demand (not thread-safe)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.duplicates = 0
        self.outside_window = 0
        self.dropped: dict[str, int] = {}
        self.rejected: list[Rejection] = []

    def add(self, ack: pb.BatchAck) -> list[Rejection]:
        """Adds one ack and returns its rejections."""
        self.accepted += ack.accepted
        self.duplicates += ack.duplicates
        self.outside_window += ack.outside_window
        for d in ack.dropped:
            self.dropped[d.reason] = self.dropped.get(d.reason, 0) + d.count
        rejected = [Rejection(ack.sequence, r.index, r.event_id, r.field, r.message) for r in ack.rejected]
        self.rejected.extend(rejected)
        return rejected

    def snapshot(self) -> IngestResult:
        return IngestResult(self.accepted, self.duplicates, dict(self.dropped), tuple(self.rejected),
                            self.outside_window)

    def take(self) -> IngestResult:
        """The totals so far, then starts again from zero."""
        result = self.snapshot()
        self.accepted = self.duplicates = self.outside_window = 0
        self.dropped = {}
        self.rejected = []
        return result

