"""A compact in-memory filter over the keys of one of the dedupe window's larger levels (server/store/events.py):
the high 32 bits of each 64-bit key, sorted. Asked about a batch of keys, it answers "certainly absent" for nearly
every new key (a key is taken for present only when some stored key shares its high 32 bits: about one in 430
with 10M keys stored), so the level, far larger than the page cache, is read only for the few keys it may
hold. Never a false "absent": the keys it was built from stay "maybe present" until it is rebuilt.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

_DTYPE = np.dtype("<i4")


class KeyFilter:
    """The high halves of a set of signed 64-bit keys, sorted (4 bytes a key); immutable."""

    __slots__ = ("_high",)

    def __init__(self, high: np.ndarray) -> None:
        self._high = high

    @classmethod
    def of_sorted(cls, keys: Iterable[int] | np.ndarray) -> KeyFilter:
        """Built from ``keys`` in ascending order (as the level's integer primary key gives them)."""
        return cls(_highs(keys))

    @classmethod
    def from_bytes(cls, body: bytes) -> KeyFilter:
        """The filter :meth:`to_bytes` wrote."""
        return cls(np.frombuffer(body, dtype=_DTYPE))

    def to_bytes(self) -> bytes:
        return self._high.tobytes()

    def with_sorted(self, keys: Iterable[int] | np.ndarray) -> KeyFilter:
        """This filter with ``keys`` (ascending) added."""
        return self.union(KeyFilter(_highs(keys)))

    def union(self, other: KeyFilter) -> KeyFilter:
        """A filter of both filters' keys."""
        both = np.concatenate((self._high, other._high))
        both.sort(kind="stable")  # two sorted runs: a merge
        return KeyFilter(both)

    def __len__(self) -> int:
        return len(self._high)

    def maybe(self, keys: Sequence[int]) -> list[int]:
        """The keys of ``keys`` that may be among the filter's (all the others certainly are not)."""
        high = self._high
        if not len(high) or not keys:
            return []
        q = (np.fromiter(keys, dtype=np.int64, count=len(keys)) >> 32).astype(_DTYPE)
        at = np.minimum(np.searchsorted(high, q), len(high) - 1)
        return [keys[i] for i in np.flatnonzero(high[at] == q).tolist()]


def _highs(keys: Iterable[int] | np.ndarray) -> np.ndarray:
    arr = keys if isinstance(keys, np.ndarray) else np.fromiter(keys, dtype=np.int64)
    high = (arr.astype(np.int64, copy=False) >> 32).astype(_DTYPE)
    if len(high) > 1 and bool((high[1:] < high[:-1]).any()):
        high.sort()
    return high
