"""What each user has been shown: recent show times per step, keyed by the user's pseudonym, so the
guardrails (caps per channel and day, cooldowns, min gap) can be checked without reading the database.

A decision counts as *shown* when GetNextStep answers it with a step; the engine records the show before
the decision is written, so concurrent requests of one user see each other's shows. At startup the
history is rebuilt from the ``decisions`` table (see :func:`server.store.decision_log.iter_shows`). When an
anonymous visitor is identified, the visitor's shows move to the user (:meth:`ShownHistory.merge`), so
caps see the person's whole history; an erasure forgets them (:meth:`ShownHistory.forget`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

KEEP_PER_STEP = 16  # show times kept per (user, step); caps only need the latest max_per_day of them


class ShownHistory:
    """Per-user, per-step show times (epoch ms, ascending), bounded per step.

    Only the latest ``keep`` times of a step are kept: a step shows at most ``max_per_day`` times in any
    rolling 24 h (the guardrails block more), so the latest ``max_per_day`` times decide every cap and the
    latest one decides the cooldown and the min gap.
    """

    def __init__(self, keep: int = KEEP_PER_STEP) -> None:
        self.keep = max(1, int(keep))
        self._users: dict[str, dict[str, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._users)

    _EMPTY: Mapping[str, list[int]] = {}

    def of(self, user_pseudo: str) -> Mapping[str, list[int]]:
        """The shows of a user (step -> ascending times); an empty mapping when none. Do not mutate."""
        return self._users.get(user_pseudo, self._EMPTY)

    def record(self, user_pseudo: str, step_id: str, ts_ms: int) -> None:
        """Count one show of ``step_id`` to ``user_pseudo`` at ``ts_ms``."""
        steps = self._users.get(user_pseudo)
        if steps is None:
            steps = self._users[user_pseudo] = {}
        times = steps.get(step_id)
        if times is None:
            steps[step_id] = [ts_ms]
            return
        if not times or ts_ms >= times[-1]:
            times.append(ts_ms)
        else:  # out of order (a replayed or skewed clock): keep the list sorted
            times.append(ts_ms)
            times.sort()
        if len(times) > self.keep:
            del times[: len(times) - self.keep]

    def unrecord(self, user_pseudo: str, step_id: str, ts_ms: int) -> None:
        """Take back one show (its decision could not be logged)."""
        times = self._users.get(user_pseudo, {}).get(step_id)
        if times and ts_ms in times:
            times.remove(ts_ms)

    def load(self, shows: Iterable[tuple[str, str, int]]) -> int:
        """Add (user_pseudo, step_id, timestamp_ms) shows, e.g. from the decision log; returns how many."""
        n = 0
        record = self.record
        for pseudo, step, ts in shows:
            record(pseudo, step, ts)
            n += 1
        return n

    def merge(self, from_pseudo: str, into_pseudo: str) -> int:
        """Move every show of ``from_pseudo`` to ``into_pseudo`` (an anonymous visitor identified as a user:
        the visitor's shows count toward the user's caps); returns how many shows moved."""
        if from_pseudo == into_pseudo:
            return 0
        steps = self._users.pop(from_pseudo, None)
        if not steps:
            return 0
        n = 0
        for step, times in steps.items():
            for ts in times:
                self.record(into_pseudo, step, ts)
                n += 1
        return n

    def forget(self, user_pseudo: str) -> bool:
        """Drop a user's shows (erasure). Returns whether any were held."""
        return self._users.pop(user_pseudo, None) is not None
