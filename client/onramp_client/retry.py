"""Retry policy: which gRPC codes are worth another attempt, and exponential backoff with jitter."""
from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

# Codes after which the ingestion stream is re-opened and every unacknowledged batch re-sent. CANCELLED is
# retried only when the client did not cancel the call itself (the server or a proxy cancelled it).
STREAM_RETRYABLE: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.CANCELLED,
})

# Codes after which a unary call is attempted again (all Onramp unary calls are idempotent).
UNARY_RETRYABLE: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: attempt n waits a random time in [d/2, d] with d = min(maximum, initial * 2**n).

    The random half spreads the reconnections of many clients after a server restart.
    """

    initial: float = 0.1
    maximum: float = 5.0

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.maximum >= self.initial):
            raise ValueError(f"backoff: need 0 < backoff_initial <= backoff_max "
                             f"(got {self.initial!r}, {self.maximum!r})")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
        d = min(self.maximum, self.initial * (2.0 ** min(attempt, 62)))
        return (rng or random).uniform(d / 2.0, d)


def unary_retry_delay(code: grpc.StatusCode | None, attempt: int, max_retries: int, backoff: Backoff,
                      deadline: float, now: float) -> float | None:
    """Seconds to wait before retrying a failed unary call, or None when it must not be retried.

    Retried: UNARY_RETRYABLE codes, at most ``max_retries`` times, and only while the wait ends before the
    call's overall ``deadline`` (monotonic seconds).
    """
    if code not in UNARY_RETRYABLE or attempt >= max_retries:
        return None
    delay = backoff.delay(attempt)
    return delay if now + delay < deadline else None
