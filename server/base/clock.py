"""Time in Onramp: epoch milliseconds (UTC) everywhere, the units to build durations from, and the clock.

>>> 2 * DAY_MS == 48 * HOUR_MS == 2880 * MINUTE_MS
True
"""
from __future__ import annotations

import time

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000
