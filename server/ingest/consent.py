"""Consent state per subject and purpose ("tracking", "personalization"), plus erasure tombstones.

:class:`ConsentBook` reads the ``consents`` and ``tombstones`` of the store by key (any worker process may
have written them) and remembers what it read for its own lifetime: one request, or one ingest job inside its
write transaction, so the consent gate of an event sees every SetConsent committed before it. Behavioral events
are stored only with tracking consent; otherwise :meth:`ConsentBook.tracking_gate` says why not (no_consent,
opted_out or erased).
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from server.store.rows import ConsentRow

TRACKING = "tracking"
PERSONALIZATION = "personalization"
PURPOSES = (TRACKING, PERSONALIZATION)

NO_CONSENT = "no_consent"
OPTED_OUT = "opted_out"
ERASED = "erased"
DROP_REASONS = (NO_CONSENT, OPTED_OUT, ERASED)
_UNREAD = object()  # a subject whose tracking consent ConsentBook.read did not read


class ConsentReads(Protocol):
    """The consent reads of a store: the current records of subjects, and whether a pseudonym was erased."""

    def consents_of(self, subjects: Sequence[str]) -> list[ConsentRow]: ...

    def granted_of(self, subjects: Sequence[str], purpose: str) -> dict[str, bool]: ...

    def is_tombstoned(self, user_pseudo: str) -> bool: ...


class ConsentBook:
    """Current consent records by subject, and the tombstones of erased pseudonyms, as ``reads`` holds them."""

    def __init__(self, reads: ConsentReads) -> None:
        self._reads = reads
        self._records: dict[str, dict[str, ConsentRow]] = {}  # subject -> purpose -> record, as read
        # subject -> granted, of the subjects whose tracking record was read by read() (None: no record); the
        # same as their full records say, read in the same transaction (every write is followed by changed())
        self._tracking: dict[str, bool | None] = {}
        self._tombstoned: dict[str, bool] = {}

    def _of(self, subject: str) -> dict[str, ConsentRow]:
        try:
            return self._records[subject]
        except KeyError:
            rows = self._records[subject] = {r.purpose: r for r in self._reads.consents_of([subject])}
            return rows

    def read(self, subjects: Collection[str]) -> None:
        """Read whether ``subjects`` grant tracking (those not read yet), with one call: an ingest job's users at
        once, for its consent gate, which needs no other purpose and no record's details (a full record is still
        read, one subject at a time, when asked for)."""
        tracking, records = self._tracking, self._records
        todo = [s for s in subjects if s not in tracking and s not in records]
        if todo:
            granted = self._reads.granted_of(todo, TRACKING)
            for s in todo:
                tracking[s] = granted.get(s)

    def get(self, subject: str, purpose: str) -> ConsentRow | None:
        """The current record of ``subject`` for ``purpose``, or None when none was ever given."""
        return self._of(subject).get(purpose)

    def records(self, subject: str) -> list[ConsentRow]:
        """Every current record of ``subject`` (sorted by purpose)."""
        return sorted(self._of(subject).values(), key=lambda r: r.purpose)

    def granted(self, subject: str, purpose: str) -> bool:
        """True when ``subject`` currently grants ``purpose``."""
        row = self._of(subject).get(purpose)
        return row is not None and row.granted

    def is_tombstoned(self, user_pseudo: str) -> bool:
        """True when the subject of ``user_pseudo`` was erased and has not granted tracking since."""
        try:
            return self._tombstoned[user_pseudo]
        except KeyError:
            hit = self._tombstoned[user_pseudo] = self._reads.is_tombstoned(user_pseudo)
            return hit

    def tracking_gate(self, subject: str, pseudonym: Callable[[str], str]) -> str | None:
        """None when events of ``subject`` may be stored, else the drop reason (no_consent, opted_out,
        erased). ``pseudonym`` is only called when needed (to look for a tombstone)."""
        granted = self._tracking.get(subject, _UNREAD)
        if granted is _UNREAD:
            row = self._of(subject).get(TRACKING)
            granted = None if row is None else row.granted
        if granted is not None:
            return None if granted else OPTED_OUT
        return ERASED if self.is_tombstoned(pseudonym(subject)) else NO_CONSENT

    def changed(self, subject: str, user_pseudo: str = "") -> None:
        """Forget what was read of ``subject`` (and of ``user_pseudo``'s tombstone): it was just written."""
        self._records.pop(subject, None)
        self._tracking.pop(subject, None)
        if user_pseudo:
            self._tombstoned.pop(user_pseudo, None)
