"""Random ids: decision ids (UUID version 4 as 32 hex characters) and request ids (128 random bits).

A ``random.Random`` seeded from the OS draws them: one ``getrandbits`` call costs about a twentieth of
``uuid.uuid4()``, and these ids need to be unique, not secret. After a fork the child reseeds, so parent and
child never share ids.

>>> a, b = new_decision_id(), new_decision_id()
>>> len(a) == 32 and a != b and a[12] == "4" and a[16] in "89ab"
True
"""
from __future__ import annotations

import os
import random

_RANDOM = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _RANDOM.seed(os.urandom(32)))
_UUID4_CLEAR = ~((0xF << 76) | (0xC << 60))
_UUID4_SET = (0x4 << 76) | (0x8 << 60)


def new_decision_id() -> str:
    """A random UUID version 4 as 32 hex characters (122 random bits, like ``uuid.uuid4().hex``)."""
    return f"{(_RANDOM.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def new_request_id() -> str:
    """A new random request id: 128 random bits as 32 hex characters."""
    return f"{_RANDOM.getrandbits(128):032x}"
