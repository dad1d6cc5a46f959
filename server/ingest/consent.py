"""Consent state per subject and purpose ("tracking", "personalization"), plus erasure tombstones.

:class:`ConsentBook` is the in-memory index of the ``consents`` and ``tombstones`` tables; the writer thread
changes it inside the transaction that writes the rows, so the consent gate of ingestion sees every
SetConsent committed before the events that follow it. Behavioral events are stored only with tracking
consent; otherwise :meth:`ConsentBook.tracking_gate` says why not (no_consent, opted_out or erased).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from server.store.sqlite import ConsentRow

TRACKING = "tracking"
PERSONALIZATION = "personalization"
PURPOSES = (TRACKING, PERSONALIZATION)

NO_CONSENT = "no_consent"
OPTED_OUT = "opted_out"
ERASED = "erased"
DROP_REASONS = (NO_CONSENT, OPTED_OUT, ERASED)


class ConsentBook:
    """Current consent records by subject, and the pseudonyms of erased subjects."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state: dict[str, dict[str, ConsentRow]] = {}
        self._tombstones: set[str] = set()

    def load(self, rows: Iterable[ConsentRow], tombstones: Iterable[str]) -> None:
        """Replace the state with the rows of the ``consents`` and ``tombstones`` tables."""
        with self._lock:
            self._state.clear()
            for row in rows:
                self._state.setdefault(row.subject, {})[row.purpose] = row
            self._tombstones = set(tombstones)

    def get(self, subject: str, purpose: str) -> ConsentRow | None:
        """The current record of ``subject`` for ``purpose``, or None when none was ever given."""
        purposes = self._state.get(subject)
        return None if purposes is None else purposes.get(purpose)

    def records(self, subject: str) -> list[ConsentRow]:
        """Every current record of ``subject`` (sorted by purpose)."""
        with self._lock:
            return sorted(self._state.get(subject, {}).values(), key=lambda r: r.purpose)

    def granted(self, subject: str, purpose: str) -> bool:
        """True when ``subject`` currently grants ``purpose``."""
        row = self.get(subject, purpose)
        return row is not None and row.granted

    def tracking_gate(self, subject: str, pseudonym: Callable[[str], str]) -> str | None:
        """None when events of ``subject`` may be stored, else the drop reason (no_consent, opted_out,
        erased). ``pseudonym`` is only called when needed (to look for a tombstone)."""
        row = self.get(subject, TRACKING)
        if row is not None:
            return None if row.granted else OPTED_OUT
        if self._tombstones and pseudonym(subject) in self._tombstones:
            return ERASED
        return NO_CONSENT

    def set(self, row: ConsentRow) -> None:
        """Record a consent decision (after its row was written)."""
        with self._lock:
            self._state.setdefault(row.subject, {})[row.purpose] = row

    def forget(self, subjects: Iterable[str]) -> None:
        """Drop every record of ``subjects`` (erasure)."""
        with self._lock:
            for s in subjects:
                self._state.pop(s, None)

    def is_tombstoned(self, user_pseudo: str) -> bool:
        return user_pseudo in self._tombstones

    def add_tombstone(self, user_pseudo: str) -> None:
        with self._lock:
            self._tombstones.add(user_pseudo)

    def remove_tombstone(self, user_pseudo: str) -> bool:
        """Clear a tombstone (a new tracking grant); returns whether there was one."""
        with self._lock:
            if user_pseudo in self._tombstones:
                self._tombstones.discard(user_pseudo)
                return True
            return False

    def __len__(self) -> int:
        return len(self._state)
