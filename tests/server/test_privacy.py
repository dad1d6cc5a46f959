"""Keyed pseudonyms: HMAC-SHA256 (32 hex), stable per key, key generated once and kept in the meta table."""
from __future__ import annotations

import hashlib
import hmac
import logging
import pathlib

import pytest

from server.privacy import META_KEY, Pseudonymizer, load_pseudonymizer
from server.store import SqliteStore


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


def test_generated_key_is_kept_in_meta(tmp_path: pathlib.Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    first = load_pseudonymizer(store, None)
    key = store.meta_get(META_KEY)
    assert key is not None and len(bytes.fromhex(key)) == 32
    store.close()
    store = SqliteStore(tmp_path / "db.sqlite")
    again = load_pseudonymizer(store, None)
    assert again("user-7") == first("user-7")
    store.close()
    other = SqliteStore(tmp_path / "other.sqlite")
    assert load_pseudonymizer(other, None)("user-7") != first("user-7")
    other.close()


def test_configured_key_wins_and_a_change_is_warned(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    configured = load_pseudonymizer(store, "a-configured-key-0001")
    assert configured("u1") == hmac.new(b"a-configured-key-0001", b"u1", hashlib.sha256).hexdigest()[:32]
    assert store.meta_get(META_KEY) is None  # nothing generated when a key is configured
    with caplog.at_level(logging.WARNING, logger="server.privacy"):
        load_pseudonymizer(store, "another-configured-key")
    assert "pseudonym key differs" in caplog.text
    store.close()
