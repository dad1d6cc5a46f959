"""Ids: decision ids (UUID version 7 as 32 hex characters: the time in milliseconds, then 74 random bits) and
request ids (128 random bits). A decision id starts with its time so that the decisions table's primary key
grows at its end, as the log does, rather than gaining an entry at a random page of an index as large as the
log with every decision (one more page written per commit).

A ``random.Random`` seeded from the OS draws them: one ``getrandbits`` call costs about a twentieth of
``uuid.uuid4()``, and these ids need to be unique, not secret. After a fork the child reseeds, so parent and
child never share ids.

>>> a, b = new_decision_id(), new_decision_id()
>>> len(a) == 32 and a != b and a[12] == "7" and a[16] in "89ab"
True
>>> new_decision_id(1_733_000_000_000)[:12]  # the time in milliseconds, big-endian hex: ids sort by time
'01937ed97200'

"""
from __future__ import annotations

import os
import random
import time

_RANDOM = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _RANDOM.seed(os.urandom(32)))
_MS_MASK = (1 << 48) - 1
_RAND_B = (1 << 62) - 1


def new_decision_id(now_ms: int | None = None) -> str:
    """A UUID version 7 (RFC 9562) as 32 hex characters: ``now_ms`` (default: the clock) in the first 48 bits,
    then the version, 12 random bits, the variant and 62 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    r = _RANDOM.getrandbits(74)
    return f"{((ms & _MS_MASK) << 80) | (0x7 << 76) | ((r >> 62) << 64) | (0x2 << 62) | (r & _RAND_B):032x}"


def new_request_id() -> str:
    """A new random request id: 128 random bits as 32 hex characters."""
    return f"{_RANDOM.getrandbits(128):032x}"
