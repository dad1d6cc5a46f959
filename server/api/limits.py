"""Token-bucket rate limits per caller (API key name, or peer host without auth), a budget of failed
authentications per client host, and message-size limits.

Two buckets per caller: calls per second (every RPC) and events per second (each streamed event counts
one). One bucket per client host for failed authentications (:class:`AuthFailureLimiter`), so guessing keys
and forcing slow salted hashes is bounded. A refused call ends with RESOURCE_EXHAUSTED whose message and
trailing metadata ``retry-after-ms`` say when to retry. The ``[limits]`` config section is parsed by
:meth:`LimitsConfig.from_mapping`.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

RETRY_AFTER_MS_HEADER = "retry-after-ms"
AUTH_FAILURES = "auth_failures"  # the RateLimited kind of a refusal by the failed-authentication budget
MAX_AUTH_FAILURE_DELAY_MS = 60_000
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class LimitsConfigError(ValueError):
    """A bad ``[limits]`` setting; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """The ``[limits]`` section. A rate of 0 turns that limit off (the default for calls and events; failed
    authentications are limited by default); burst 0 means 2 x rate."""

    calls_per_second: float = 0.0
    calls_burst: float = 0.0
    events_per_second: float = 0.0
    events_burst: float = 0.0
    auth_failures_per_second: float = 1.0
    auth_failures_burst: float = 10.0
    auth_failure_delay_ms: int = 250
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_tracked_callers: int = 10_000

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "LimitsConfig":
        """Validate a ``[limits]`` table; errors name the key, e.g. ``[limits] calls_per_second``."""
        section = dict(section or {})
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(section) - names
        if unknown:
            raise LimitsConfigError(f"[limits] {sorted(unknown)[0]}: unknown key (expected one of {sorted(names)})")
        values: dict[str, Any] = {}
        for name in ("calls_per_second", "calls_burst", "events_per_second", "events_burst",
                     "auth_failures_per_second", "auth_failures_burst"):
            if name in section:
                value = section[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value < 0:
                    raise LimitsConfigError(f"[limits] {name}: expected a number >= 0 (got {value!r})")
                values[name] = float(value)
        for name, low, high in (("max_message_bytes", 1024, None), ("max_tracked_callers", 1, None),
                                ("auth_failure_delay_ms", 0, MAX_AUTH_FAILURE_DELAY_MS)):
            if name in section:
                value = section[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < low \
                        or (high is not None and value > high):
                    within = f">= {low}" if high is None else f"from {low} to {high}"
                    raise LimitsConfigError(f"[limits] {name}: expected an integer {within} (got {value!r})")
                values[name] = value
        return cls(**values)

    def burst_for(self, rate: float, burst: float) -> float:
        """The effective bucket size: ``burst`` if set, else twice the rate (at least 1)."""
        return burst if burst > 0 else max(1.0, 2.0 * rate)


class TokenBucket:
    """A token bucket: ``rate`` tokens per second up to ``burst``.

    A request larger than the burst is admitted when the bucket is full and leaves it in debt, so an
    oversized batch is slowed down rather than refused forever.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` tokens; returns 0.0 when admitted, else the seconds to wait before retrying."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        needed = min(amount, self.burst)
        if self.tokens >= needed:
            self.tokens -= amount
            return 0.0
        return (needed - self.tokens) / self.rate

    def give(self, amount: float) -> None:
        """Return ``amount`` tokens taken for something that turned out not to count (up to the burst)."""
        self.tokens = min(self.burst, self.tokens + amount)


class RateLimited(Exception):
    """A refusal: what was limited, for whom, and the milliseconds after which a retry can succeed."""

    def __init__(self, kind: str, caller: str, retry_after_ms: int, rate: float, burst: float) -> None:
        self.kind = kind
        self.caller = caller
        self.retry_after_ms = retry_after_ms
        self.rate = rate
        self.burst = burst
        super().__init__(self.message)

    def after(self, seconds: float) -> "RateLimited":
        """This refusal as answered ``seconds`` later: the retry hint shortened by that much (at least 1 ms)."""
        if seconds <= 0:
            return self
        retry = max(1, self.retry_after_ms - math.floor(seconds * 1000))
        return RateLimited(self.kind, self.caller, retry, self.rate, self.burst)

    @property
    def message(self) -> str:
        """The status message sent to the client (names the limit and the retry hint)."""
        if self.kind == AUTH_FAILURES:
            return (f"too many failed authentications from {self.caller!r}: {self.rate:g} per second allowed "
                    f"(burst {self.burst:g}); retry after {self.retry_after_ms} ms")
        unit = "calls" if self.kind == "calls" else "events"
        return (f"rate limit exceeded for {self.caller!r}: {self.rate:g} {unit}/s (burst {self.burst:g}); "
                f"retry after {self.retry_after_ms} ms")


class RateLimiter:
    """Per-caller call and event buckets; thread-safe, with the least recently seen callers forgotten first."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: OrderedDict[str, TokenBucket] = OrderedDict()
        self._events: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def active(self) -> bool:
        """True when any rate limit is configured."""
        return self.config.calls_per_second > 0 or self.config.events_per_second > 0

    def _take(self, table: OrderedDict[str, TokenBucket], kind: str, caller: str, rate: float, burst: float,
              amount: float) -> None:
        if rate <= 0:
            return
        size = self.config.burst_for(rate, burst)
        with self._lock:
            now = self._clock()
            bucket = table.get(caller)
            if bucket is None:
                bucket = table[caller] = TokenBucket(rate, size, now)
                while len(table) > self.config.max_tracked_callers:
                    table.popitem(last=False)
            else:
                table.move_to_end(caller)
            wait = bucket.take(amount, now)
        if wait > 0:
            raise RateLimited(kind, caller, max(1, math.ceil(wait * 1000)), rate, size)

    def check_call(self, caller: str) -> None:
        """Admit one call by ``caller`` or raise :class:`RateLimited`."""
        self._take(self._calls, "calls", caller, self.config.calls_per_second, self.config.calls_burst, 1)

    def check_events(self, caller: str, count: int) -> None:
        """Admit ``count`` events from ``caller`` or raise :class:`RateLimited`."""
        if count > 0:
            self._take(self._events, "events", caller, self.config.events_per_second,
                       self.config.events_burst, count)


class AuthFailureLimiter:
    """The budget of failed authentications per client host (one token bucket each, least recently seen hosts
    forgotten first beyond ``max_tracked_callers``); thread-safe.

    :meth:`take` is called for each refused key and before each slow salted-hash check (which :meth:`give`
    refunds when the key turns out valid), so an empty bucket also stops the hashing a host can force."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.rate = config.auth_failures_per_second
        self.burst = config.burst_for(self.rate, config.auth_failures_burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def active(self) -> bool:
        """True when failed authentications are limited (``auth_failures_per_second`` > 0)."""
        return self.rate > 0

    def take(self, host: str) -> None:
        """Take one token from ``host``'s bucket or raise :class:`RateLimited` (kind ``auth_failures``)."""
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(host)
            if bucket is None:
                bucket = self._buckets[host] = TokenBucket(self.rate, self.burst, now)
                while len(self._buckets) > self.config.max_tracked_callers:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(host)
            wait = bucket.take(1, now)
        if wait > 0:
            raise RateLimited(AUTH_FAILURES, host, max(1, math.ceil(wait * 1000)), self.rate, self.burst)

    def give(self, host: str) -> None:
        """Give back the token :meth:`take` took for ``host`` (its key turned out valid)."""
        with self._lock:
            bucket = self._buckets.get(host)
            if bucket is not None:
                bucket.give(1)

    def __len__(self) -> int:
        """Hosts tracked now."""
        with self._lock:
            return len(self._buckets)


def server_options(config: LimitsConfig) -> list[tuple[str, int]]:
    """grpc server options enforcing the message-size limit in both directions."""
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
