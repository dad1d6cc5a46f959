"""Request builders and response converters shared by the blocking and the asyncio clients."""
from __future__ import annotations

from collections.abc import Mapping

from onramp.v1 import onramp_pb2 as pb


def next_step_request(user_id: str, anonymous_id: str, surface: str, context: Mapping[str, str] | None,
                      timestamp_ms: int) -> pb.NextStepRequest:
    return pb.NextStepRequest(user_id=user_id, anonymous_id=anonymous_id, surface=surface,
                              context=dict(context or {}), timestamp_ms=timestamp_ms)


def outcome_request(decision_id: str, reward: float, outcome: str, timestamp_ms: int) -> pb.OutcomeRequest:
    return pb.OutcomeRequest(decision_id=decision_id, reward=float(reward), outcome=outcome,
                             timestamp_ms=timestamp_ms)


def consent_request(user_id: str, anonymous_id: str, purpose: str, granted: bool, source: str,
                    timestamp_ms: int) -> pb.ConsentRequest:
    return pb.ConsentRequest(user_id=user_id, anonymous_id=anonymous_id, purpose=purpose, granted=granted,
                             source=source, timestamp_ms=timestamp_ms)


def consent_map(state: pb.ConsentState) -> dict[str, bool]:
    """purpose -> granted of a ConsentState."""
    return {c.purpose: c.granted for c in state.consents}
