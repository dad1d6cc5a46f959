"""A compact in-memory filter over the keys of the dedupe window's level 1 or of one of its sealed runs
(server/store/events.py): the high 32 bits of each 64-bit key, sorted. Asked about a batch of keys, it answers
"certainly absent" for nearly every new key (a key is taken for present only when some stored key shares its
high 32 bits: about one in 4,300 for a run of 1M keys, one in 430 summed over 10M keys in runs), so the
tables, far larger than the page cache, are read only for the few keys they may hold. Never a false "absent":
the keys it was built from stay "maybe present" until it is rebuilt.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_DTYPE = np.dtype("<i4")
BLOCK = 16  # keys per block of the sorted array: a lookup reads one block (256 bytes) after a small top index


@dataclass(frozen=True)
class Query:
    """The high halves of a batch of keys, sorted (a search for ascending values walks the filter's top index
    in order, several times faster than in random order), and where each came from in the batch: built once
    per lookup, asked of every filter."""

    high: np.ndarray
    at: np.ndarray

    @classmethod
    def of(cls, keys: Sequence[int]) -> Query:
        high = (np.fromiter(keys, dtype=np.int64, count=len(keys)) >> 32).astype(_DTYPE)
        order = np.argsort(high, kind="stable")
        return cls(high[order], order)


class KeyFilter:
    """The high halves of a set of signed 64-bit keys, sorted (4 bytes a key), in blocks of :data:`BLOCK`
    with the first of each block in a top index (1/64 the size, so it stays in the CPU cache when many
    filters are probed one after the other: a lookup costs about one cache miss per filter, not one per
    level of a binary search over megabytes); immutable."""

    __slots__ = ("_high", "_n", "_top")

    def __init__(self, high: np.ndarray) -> None:
        n = len(high)
        pad = (-n) % BLOCK
        if pad and n:  # the last block filled up with its last key (asked about, it is there anyway)
            high = np.concatenate((high, np.full(pad, high[-1], dtype=_DTYPE)))
        self._high, self._n = high, n
        self._top = high[::BLOCK].copy()

    @classmethod
    def of_sorted(cls, keys: Iterable[int] | np.ndarray) -> KeyFilter:
        """Built from ``keys`` in ascending order (as the level's integer primary key gives them)."""
        return cls(_highs(keys))

    @classmethod
    def from_bytes(cls, body: bytes) -> KeyFilter:
        """The filter :meth:`to_bytes` wrote."""
        return cls(np.frombuffer(body, dtype=_DTYPE))

    def to_bytes(self) -> bytes:
        return self._high[:self._n].tobytes()

    def with_sorted(self, keys: Iterable[int] | np.ndarray) -> KeyFilter:
        """This filter with ``keys`` (ascending) added."""
        return self.union(KeyFilter(_highs(keys)))

    def union(self, other: KeyFilter) -> KeyFilter:
        """A filter of both filters' keys."""
        both = np.concatenate((self._high[:self._n], other._high[:other._n]))
        both.sort(kind="stable")  # two sorted runs: a merge
        return KeyFilter(both)

    @classmethod
    def union_of(cls, filters: Sequence[KeyFilter]) -> KeyFilter:
        """One filter of the keys of all ``filters`` (a merge of their sorted arrays)."""
        both = np.concatenate([f._high[:f._n] for f in filters]) if filters else np.zeros(0, dtype=_DTYPE)
        both.sort(kind="stable")  # sorted runs: timsort merges them
        return cls(both)

    def __len__(self) -> int:
        return self._n

    def hits(self, query: Query) -> np.ndarray:
        """Positions (ascending) in the keys of ``query`` of those that may be among the filter's."""
        if not self._n or not len(query.high):
            return np.zeros(0, dtype=np.intp)
        block = np.searchsorted(self._top, query.high, side="right") - 1  # the last block starting at or below
        np.maximum(block, 0, out=block)
        rows = self._high.reshape(-1, BLOCK)[block]
        return np.sort(query.at[np.flatnonzero((rows == query.high[:, None]).any(axis=1))])

    def maybe(self, keys: Sequence[int]) -> list[int]:
        """The keys of ``keys`` that may be among the filter's (all the others certainly are not)."""
        if not self._n or not keys:
            return []
        return [keys[i] for i in self.hits(Query.of(keys)).tolist()]


def _highs(keys: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = keys if isinstance(keys, np.ndarray) else np.fromiter(keys, dtype=np.int64)
    high = (arr.astype(np.int64, copy=False) >> 32).astype(_DTYPE)
    if len(high) > 1 and bool((high[1:] < high[:-1]).any()):
        high.sort()
    return high
