"""The stored form of a shown history (``{step_id: times}``, each step's times ascending): a compact binary
value whose decoding and encoding cost a few microseconds per step, however many times it holds, and the
JSON text that rows written before it hold, still read.

A history keeps up to a few hundred times per step when a catalog lifts the caps (server/decide/engine.py
``keep``); as JSON text, decoding and re-encoding it cost more of a decision's CPU than anything but the bandit.
Decoded, each step's times are an ``array('q')`` (no Python int per time: the guardrails bisect them, a new
show is inserted into a copy, and encoding copies the arrays' bytes). The binary form:

- byte 0: :data:`FORMAT` (JSON text starts with ``{`` and is stored as text, so neither is mistaken for the
  other), then the step count (16-bit);
- each step's time count (32-bit), in key order;
- the byte length (32-bit) of the step ids, then the ids in UTF-8 joined by NUL (catalog step ids are
  ``[a-z][a-z0-9_]*``);
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
_NAMES = struct.Struct("<I")  # byte length of the joined step ids
_SEP = "\x00"
_SWAP = sys.byteorder != "little"
assert array(TIME_CODE).itemsize == 8 and array("I").itemsize == 4, "the item sizes the stored form is made of"


def _little(a: array) -> bytes:
    if _SWAP:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def encode_shows(shows: Mapping[str, Sequence[int]]) -> bytes:
    """The stored value of ``shows`` (each step's times ascending; a step without times keeps its key)."""
    keys = sorted(shows)
    joined = _SEP.join(keys)
    if joined.count(_SEP) != max(0, len(keys) - 1):
        raise ValueError("a shown history's step id holds a NUL character")
    names = joined.encode("utf-8")
    times = [t if type(t) is array and t.typecode == TIME_CODE else array(TIME_CODE, t)
             for t in map(shows.__getitem__, keys)]
    head = [_HEAD.pack(FORMAT, len(keys)), _little(array("I", map(len, times))), _NAMES.pack(len(names)), names]
    return b"".join(head + (list(map(_little, times)) if _SWAP else [t.tobytes() for t in times]))


def decode_shows(value: bytes | str) -> dict[str, array]:
    """A stored shown history as ``{step_id: array('q') of times}``: the binary form, or the JSON text of
    older rows (its times sorted, as the binary form keeps them)."""
    if isinstance(value, str):
        return {k: array(TIME_CODE, sorted(v)) for k, v in json.loads(value).items()}
    fmt, n = _HEAD.unpack_from(value, 0)
    if fmt != FORMAT:
        raise ValueError(f"unknown shown-history format {fmt}")
    pos = _HEAD.size + 4 * n
    counts = array("I")
    counts.frombytes(value[_HEAD.size:pos])
    (size,) = _NAMES.unpack_from(value, pos)
    pos += _NAMES.size
    names = value[pos:pos + size].decode("utf-8").split(_SEP) if n else []
    times = array(TIME_CODE)
    times.frombytes(value[pos + size:])
    if _SWAP:
        counts.byteswap()
        times.byteswap()
    if len(names) != n or sum(counts) != len(times):
        raise ValueError(f"a shown history of {len(value)} bytes that does not match its header")
    out: dict[str, array] = {}
    i = 0
    for name, count in zip(names, counts):
        j = i + count
        out[name] = times[i:j]
        i = j
    return out
