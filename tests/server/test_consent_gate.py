"""The ingest job's consent gate (server/ingest/consent.py, ``ConsentBook``): reading only the job's users'
tracking consent at once (``read``) gives the same verdict per subject as reading each subject's full records,
and a record written after the read is seen once the book is told (``changed``)."""
from __future__ import annotations

import pathlib

import pytest

from server.ingest.consent import ERASED, NO_CONSENT, OPTED_OUT, PERSONALIZATION, TRACKING, ConsentBook
from server.store.rows import ConsentRow
from server.store.sqlite import SqliteStore


def pseudonym(subject: str) -> str:
    return f"p-{subject}"


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "c.db")
    s.set_consent(ConsentRow("granted", TRACKING, True, "t", 1), 1)
    s.set_consent(ConsentRow("granted", PERSONALIZATION, False, "t", 1), 1)
    s.set_consent(ConsentRow("revoked", TRACKING, False, "t", 2), 2)
    s.set_consent(ConsentRow("other-purpose", PERSONALIZATION, True, "t", 3), 3)
    s.add_tombstone(pseudonym("erased"), 4)
    yield s
    s.close()


SUBJECTS = ("granted", "revoked", "other-purpose", "erased", "never")
EXPECTED = {"granted": None, "revoked": OPTED_OUT, "other-purpose": NO_CONSENT, "erased": ERASED,
            "never": NO_CONSENT}


def test_the_batch_read_gives_the_verdicts_of_the_full_records(store: SqliteStore) -> None:
    read = ConsentBook(store)
    read.read(SUBJECTS)
    full = ConsentBook(store)
    assert {s: read.tracking_gate(s, pseudonym) for s in SUBJECTS} == EXPECTED
    assert {s: full.tracking_gate(s, pseudonym) for s in SUBJECTS} == EXPECTED
    # the full records are still there when asked for, after the batch read
    assert read.get("granted", PERSONALIZATION) == ConsentRow("granted", PERSONALIZATION, False, "t", 1)
    assert read.tracking_gate("granted", pseudonym) is None


def test_a_record_written_after_the_read_is_seen_once_the_book_is_told(store: SqliteStore) -> None:
    book = ConsentBook(store)
    book.read(SUBJECTS)
    store.set_consent(ConsentRow("never", TRACKING, True, "t", 5), 5)
    store.set_consent(ConsentRow("granted", TRACKING, False, "t", 5), 5)
    book.changed("never")
    book.changed("granted")
    book.read(SUBJECTS)  # read again: only the two it forgot
    assert book.tracking_gate("never", pseudonym) is None
    assert book.tracking_gate("granted", pseudonym) == OPTED_OUT
    assert book.get("granted", TRACKING) == ConsentRow("granted", TRACKING, False, "t", 5)
