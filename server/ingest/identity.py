"""Identity links for cross-device profiles: an ``identify`` event links an anonymous_id and/or a device_id
to a user_id, after which events carrying only the alias resolve to the user.

:class:`IdentityGraph` is the in-memory index of the ``identities`` table. The writer thread changes it
(inside the transaction that writes the rows); the event loop only reads it. A small lock makes multi-step
reads consistent.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from server.base.records import ANON_PREFIX
from server.store.sqlite import LinkRow

ANONYMOUS_ID = "anonymous_id"
DEVICE_ID = "device_id"
MAX_DEVICE_HINTS = 64  # anonymous ids remembered per not-yet-linked device


@dataclass(slots=True)
class LinkPlan:
    """What an identify event changes: aliases to (re)link to ``user_id`` and the anonymous subjects whose
    events and profiles move to the user (only aliases that were not linked to anyone before)."""

    user_id: str
    links: list[tuple[str, str]] = field(default_factory=list)  # (alias_kind, alias)
    merged_subjects: list[str] = field(default_factory=list)  # e.g. ["anon:abc"]

    @property
    def changes_anything(self) -> bool:
        return bool(self.links)


class IdentityGraph:
    """Alias -> user links, user -> aliases, and which anonymous ids were seen on not-yet-linked devices."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._links: dict[tuple[str, str], tuple[str, int]] = {}  # (kind, alias) -> (user_id, linked_ms)
        self._aliases: dict[str, set[tuple[str, str]]] = {}  # user_id -> {(kind, alias)}
        self._device_anons: dict[str, set[str]] = {}  # device_id -> anonymous ids seen on it, unlinked

    def load(self, rows: Iterable[LinkRow]) -> None:
        """Replace the state with the rows of the ``identities`` table (device hints are kept)."""
        with self._lock:
            self._links.clear()
            self._aliases.clear()
            for row in rows:
                self._add(row.alias_kind, row.alias, row.user_id, row.linked_ms)

    def __len__(self) -> int:
        return len(self._links)

    def _add(self, kind: str, alias: str, user_id: str, linked_ms: int) -> None:
        old = self._links.get((kind, alias))
        if old is not None and old[0] != user_id:
            self._aliases.get(old[0], set()).discard((kind, alias))
        self._links[(kind, alias)] = (user_id, linked_ms)
        self._aliases.setdefault(user_id, set()).add((kind, alias))

    def user_of(self, kind: str, alias: str) -> str | None:
        """The user an alias is linked to, or None."""
        hit = self._links.get((kind, alias))
        return None if hit is None else hit[0]

    def resolve(self, user_id: str, anonymous_id: str, device_id: str = "") -> str:
        """The canonical subject of an event or request: the user id; else the user a linked anonymous id
        or device id belongs to; else ``anon:<anonymous_id>``."""
        if user_id:
            return user_id
        links = self._links
        if anonymous_id:
            hit = links.get((ANONYMOUS_ID, anonymous_id))
            if hit is not None:
                return hit[0]
        if device_id:
            hit = links.get((DEVICE_ID, device_id))
            if hit is not None:
                return hit[0]
        return ANON_PREFIX + anonymous_id

    def links_of(self, user_id: str) -> list[LinkRow]:
        """Every alias linked to ``user_id``, oldest link first."""
        with self._lock:
            rows = [LinkRow(kind, alias, user_id, self._links[(kind, alias)][1])
                    for kind, alias in self._aliases.get(user_id, ())]
        return sorted(rows, key=lambda r: (r.linked_ms, r.alias_kind, r.alias))

    def note_device(self, device_id: str, anonymous_id: str) -> None:
        """Remember that an anonymous visitor's event (not linked to a user) came from ``device_id``, so that
        linking the device later links the visitor too."""
        if (DEVICE_ID, device_id) in self._links:
            return
        with self._lock:
            seen = self._device_anons.setdefault(device_id, set())
            if len(seen) < MAX_DEVICE_HINTS:
                seen.add(anonymous_id)

    def plan_link(self, user_id: str, anonymous_id: str, device_id: str) -> LinkPlan:
        """What linking ``anonymous_id``/``device_id`` to ``user_id`` would change (nothing is changed yet).

        An alias linked to another user is moved to this user for future events only (its earlier events
        stay with the earlier user). An alias not linked before brings its anonymous history along; for a
        device, so do the anonymous visitors seen on it.
        """
        plan = LinkPlan(user_id)
        with self._lock:
            if anonymous_id:
                current = self.user_of(ANONYMOUS_ID, anonymous_id)
                if current != user_id:
                    plan.links.append((ANONYMOUS_ID, anonymous_id))
                    if current is None:
                        plan.merged_subjects.append(ANON_PREFIX + anonymous_id)
            if device_id:
                current = self.user_of(DEVICE_ID, device_id)
                if current != user_id:
                    plan.links.append((DEVICE_ID, device_id))
                    if current is None:
                        for anon in sorted(self._device_anons.get(device_id, ())):
                            if anon != anonymous_id and self.user_of(ANONYMOUS_ID, anon) is None:
                                plan.links.append((ANONYMOUS_ID, anon))
                                plan.merged_subjects.append(ANON_PREFIX + anon)
        return plan

    def apply(self, plan: LinkPlan, linked_ms: int) -> None:
        """Record the links of ``plan`` (after their rows were written)."""
        with self._lock:
            for kind, alias in plan.links:
                self._add(kind, alias, plan.user_id, linked_ms)
                if kind == DEVICE_ID:
                    self._device_anons.pop(alias, None)

    def forget(self, user_ids: Iterable[str], anonymous_ids: Iterable[str], device_ids: Iterable[str]) -> None:
        """Drop every link of these users and aliases (erasure)."""
        with self._lock:
            for uid in user_ids:
                for key in self._aliases.pop(uid, set()):
                    self._links.pop(key, None)
            for kind, aliases in ((ANONYMOUS_ID, anonymous_ids), (DEVICE_ID, device_ids)):
                for alias in aliases:
                    hit = self._links.pop((kind, alias), None)
                    if hit is not None:
                        self._aliases.get(hit[0], set()).discard((kind, alias))
            for did in device_ids:
                self._device_anons.pop(did, None)
            anons = set(anonymous_ids)
            if anons:
                for seen in self._device_anons.values():
                    seen -= anons
