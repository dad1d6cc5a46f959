"""Identity links for cross-device profiles: an ``identify`` event links an anonymous_id and/or a device_id
to a user_id, after which events carrying only the alias resolve to the user.

:class:`IdentityGraph` reads the links from the store by key (any worker process may have written them), and
remembers what it read for its own lifetime: one request, or one ingest job inside its write transaction. It
holds nothing across calls, so every decision and every job sees each link committed before it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from server.base.records import ANON_PREFIX
from server.store.rows import LinkRow

ANONYMOUS_ID = "anonymous_id"
DEVICE_ID = "device_id"
MAX_DEVICE_HINTS = 64  # anonymous ids remembered per not-yet-linked device


class IdentityReads(Protocol):
    """The identity reads of a store: links by alias and by user, and the device hints (the anonymous ids seen
    on a device not linked to anyone)."""

    def identity_of(self, alias_kind: str, alias: str) -> str | None: ...

    def links_of(self, user_ids: Sequence[str]) -> list[LinkRow]: ...

    def device_anonymous_ids(self, device_id: str) -> list[str]: ...


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
    """Alias -> user links as ``reads`` holds them, read by key and remembered for this object's lifetime."""

    def __init__(self, reads: IdentityReads) -> None:
        self._reads = reads
        self._seen: dict[tuple[str, str], str | None] = {}  # (kind, alias) -> user_id, as read

    def user_of(self, kind: str, alias: str) -> str | None:
        """The user an alias is linked to, or None."""
        key = (kind, alias)
        try:
            return self._seen[key]
        except KeyError:
            user = self._seen[key] = self._reads.identity_of(kind, alias)
            return user

    def resolve(self, user_id: str, anonymous_id: str, device_id: str = "") -> str:
        """The canonical subject of an event or request: the user id; else the user a linked anonymous id
        or device id belongs to; else ``anon:<anonymous_id>``."""
        if user_id:
            return user_id
        if anonymous_id:
            user = self.user_of(ANONYMOUS_ID, anonymous_id)
            if user is not None:
                return user
        if device_id:
            user = self.user_of(DEVICE_ID, device_id)
            if user is not None:
                return user
        return ANON_PREFIX + anonymous_id

    def links_of(self, user_id: str) -> list[LinkRow]:
        """Every alias linked to ``user_id``, oldest link first."""
        return self._reads.links_of([user_id])

    def plan_link(self, user_id: str, anonymous_id: str, device_id: str) -> LinkPlan:
        """What linking ``anonymous_id``/``device_id`` to ``user_id`` would change (nothing is changed yet).

        An alias linked to another user is moved to this user for future events only (its earlier events
        stay with the earlier user). An alias not linked before brings its anonymous history along; for a
        device, so do the anonymous visitors seen on it.
        """
        plan = LinkPlan(user_id)
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
                    for anon in self._reads.device_anonymous_ids(device_id):
                        if anon != anonymous_id and self.user_of(ANONYMOUS_ID, anon) is None:
                            plan.links.append((ANONYMOUS_ID, anon))
                            plan.merged_subjects.append(ANON_PREFIX + anon)
        return plan

    def applied(self, plan: LinkPlan) -> None:
        """Note that the links of ``plan`` were written (to the store this graph reads)."""
        for key in plan.links:
            self._seen[key] = plan.user_id
