"""Keyed pseudonyms: HMAC-SHA256 (32 hex), stable per key (where the key comes from: test_privacy_key.py)."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from server.store.privacy import Pseudonymizer


def test_pseudonym_is_truncated_hmac_sha256() -> None:
    p = Pseudonymizer(b"k" * 32)
    expected = hmac.new(b"k" * 32, b"u1", hashlib.sha256).hexdigest()[:32]
    assert p.pseudonymize("u1") == expected == p("u1")
    assert len(expected) == 32 and int(expected, 16) >= 0
    assert p("u2") != p("u1")
    assert Pseudonymizer(b"j" * 32)("u1") != expected


@pytest.mark.parametrize("key", [b"k" * 16, b"0123456789abcdef" * 4, bytes(range(65)), b"\xff" * 200])
def test_pseudonym_equals_hmac_sha256_for_every_key_length(key: bytes) -> None:
    p = Pseudonymizer(key)
    for subject in ("u1", "anon:visitor", "", "ü" * 100):
        assert p(subject) == hmac.new(key, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")
