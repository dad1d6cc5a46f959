"""Keyed pseudonyms: HMAC-SHA256 of a subject under a secret key, so analysis tables (decisions, outcomes,
exports, tombstones) never hold a raw user id yet can still be joined per user.

The key is kept apart from the database (a key file, an environment variable or the config; never the
database, which holds only the key's fingerprint): server/store/pseudonym_key.py finds it.
"""
from __future__ import annotations

import hashlib

PSEUDONYM_CHARS = 32
META_KEY = "pseudonym_key"  # where servers before the key file kept the key (moved out at start)
META_FINGERPRINT = "pseudonym_key_fingerprint"


class Pseudonymizer:
    """Maps a subject to its keyed pseudonym (32 hex characters); results are cached per subject.

    The HMAC's inner and outer SHA-256 states are keyed once and copied per subject (RFC 2104, what
    :func:`hmac.new` recomputes on every call): the same digest at about half the cost, which matters at
    startup, when the pseudonyms of every linked visitor are computed once."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("pseudonym key: must be at least 16 bytes")
        self._key = key
        self._cache: dict[str, str] = {}
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def _hmac(self, data: bytes) -> str:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:PSEUDONYM_CHARS]

    def pseudonymize(self, subject: str) -> str:
        """HMAC-SHA256(key, subject), first 32 hex characters."""
        p = self._cache.get(subject)
        if p is None:
            p = self._hmac(subject.encode("utf-8"))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[subject] = p
        return p

    __call__ = pseudonymize

    def forget(self, subject: str) -> None:
        """Drop a subject from the cache (erasure: no raw id kept in memory)."""
        self._cache.pop(subject, None)

    def forget_all(self) -> None:
        """Drop every cached subject (an erasure another process committed: which raw ids it named is not
        known here, only that it happened)."""
        self._cache.clear()

    @property
    def fingerprint(self) -> str:
        """A short non-secret fingerprint of the key (to notice a changed key)."""
        return hashlib.sha256(b"onramp-key-fingerprint:" + self._key).hexdigest()[:16]
