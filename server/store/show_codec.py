"""The stored form of a shown history (``{step_id: times}``, each step's times ascending): a compact binary
value whose decoding and encoding cost a few microseconds per step, however many times it holds, and the
JSON text that rows written before it hold, still read.

A history keeps up to a few hundred times per step when a catalog lifts the caps (server/decide/engine.py
``keep``); as JSON text, decoding and re-encoding it cost more of a decision's CPU than anything but the bandit.
Decoded, each step's times are an ``array('q')`` (no Python int per time: the guardrails bisect them, a new
show is inserted into a copy, and encoding copies the arrays' bytes). The binary form:

- byte 0: :data:`FORMAT` (JSON text starts with ``{`` and is stored as text, so neither is mistaken for the
  other);
- a 16-bit step count, then per step (in key order) the UTF-8 length (16-bit) of its id, its time count
  (32-bit) and the id's bytes;
- every step's times, one step after the other, as signed 64-bit values.

Every integer is little-endian.
"""
from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence

from server.store.rows import TIME_CODE

FORMAT = 1
_HEAD = struct.Struct("<BH")  # format, step count
_STEP = struct.Struct("<HI")  # id length, time count
_SWAP = sys.byteorder != "little"
assert array(TIME_CODE).itemsize == 8, "the codec stores times as 64-bit array items"


def encode_shows(shows: Mapping[str, Sequence[int]]) -> bytes:
    """The stored value of ``shows`` (each step's times ascending; a step without times keeps its key)."""
    keys = sorted(shows)
    parts = [_HEAD.pack(FORMAT, len(keys))]
    bodies = []
    for key in keys:
        times = shows[key]
        if type(times) is not array or times.typecode != TIME_CODE or _SWAP:
            times = array(TIME_CODE, times)
            if _SWAP:
                times.byteswap()
        raw = key.encode("utf-8")
        parts += (_STEP.pack(len(raw), len(times)), raw)
        bodies.append(times.tobytes())
    return b"".join(parts + bodies)


def decode_shows(value: bytes | str) -> dict[str, array]:
    """A stored shown history as ``{step_id: array('q') of times}``: the binary form, or the JSON text of
    older rows (its times sorted, as the binary form keeps them)."""
    if isinstance(value, str):
        return {k: array(TIME_CODE, sorted(v)) for k, v in json.loads(value).items()}
    fmt, n = _HEAD.unpack_from(value, 0)
    if fmt != FORMAT:
        raise ValueError(f"unknown shown-history format {fmt}")
    pos = _HEAD.size
    keys: list[tuple[str, int]] = []
    unpack, size_of = _STEP.unpack_from, _STEP.size
    for _ in range(n):
        size, count = unpack(value, pos)
        pos += size_of
        keys.append((value[pos:pos + size].decode("utf-8"), count))
        pos += size
    view = memoryview(value)
    out: dict[str, array] = {}
    for key, count in keys:
        times = array(TIME_CODE)
        end = pos + 8 * count
        times.frombytes(view[pos:end])
        if _SWAP:
            times.byteswap()
        out[key] = times
        pos = end
    if pos != len(value):
        raise ValueError(f"a shown history of {len(value)} bytes whose header counts {pos} bytes")
    return out
