"""An in-process decision engine for tests (no gRPC): a real SQLite store in a temporary directory, the real
writer thread and pipeline, a :class:`DecisionEngine` on the running asyncio loop and the :class:`Learner` that
learns its models (stepped by the test with :meth:`Harness.learn`, not run as a task)."""
from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from onramp.v1 import onramp_pb2 as pb
from server.api.service import next_step_message
from server.api.validation import event_values
from server.base.catalog import Catalog, load_catalog, parse_catalog
from server.base.config import PrivacyConfig
from server.decide.engine import DecisionEngine
from server.ingest.pipeline import Pipeline
from server.learn.learner import Learner
from server.store.pseudonym_key import open_pseudonymizer
from server.store.sqlite import open_store
from server.store.writer import Writer

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000
T0 = 1_700_000_000_000 - (1_700_000_000_000 % DAY_MS)  # a UTC midnight (2023-11-14)


def demo_raw() -> dict[str, Any]:
    """The demo catalog as a TOML-like dict (to modify in tests)."""
    import tomllib

    from server.base.catalog import demo_catalog_text
    return tomllib.loads(demo_catalog_text())


def catalog_with(**changes: Any) -> Catalog:
    """The demo catalog with top-level sections replaced or removed (value None removes)."""
    raw = demo_raw()
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    return parse_catalog(raw)


def forced_rules_catalog() -> Catalog:
    """The demo catalog with every rule in ``mode = "force"`` (the seed's deterministic rules)."""
    raw = demo_raw()
    for rule in raw["rules"]:
        rule["mode"] = "force"
    return parse_catalog(raw)


class Harness:
    """Store + writer + pipeline + engine + learner. Call :meth:`open` inside the event loop, :meth:`close` at
    the end; ``learner_kw`` go to the :class:`Learner`, the other keywords to the engine."""

    def __init__(self, db_path: Path, catalog: Catalog | None = None, learner_kw: dict[str, Any] | None = None,
                 **engine_kw: Any) -> None:
        self.db_path = db_path
        self.catalog = catalog if catalog is not None else load_catalog(None)
        self.engine_kw = engine_kw
        self.learner_kw = learner_kw or {}
        self._ids = itertools.count()

    def open(self, loop: Any) -> DecisionEngine:
        self.store = open_store(self.db_path, synchronous="off")
        self.writer = Writer(self.store)
        self.pipeline = Pipeline(self.store, self.writer, open_pseudonymizer(self.store, PrivacyConfig()))
        self.pipeline.rebuild()
        self.writer.start()
        self.pipeline.attach_loop(loop)
        # built as server/ops/app.py builds them
        self.learner = Learner(self.store, self.writer, self.catalog, self.pipeline.pseudonym, **self.learner_kw)
        self.learner.open()  # as the server's learner task does at its start
        self.engine = DecisionEngine(self.pipeline, self.catalog, **self.engine_kw)
        return self.engine

    async def learn(self, now_ms: int) -> bool:
        """One learning round at ``now_ms`` (read the feeds, join rewards, sweep windows closed before it,
        learn, publish), then the engine loads the published snapshot; returns whether one was published."""
        published = await self.learner.step(now_ms)
        self.engine.load_snapshot()
        return published

    async def erase(self, user: str, now_ms: int) -> dict[str, int]:
        """EraseUser as the server runs it: the erasure answers once the engine loaded models without the
        person, so the learner takes the queued unlearning out meanwhile (rounds at ``now_ms``)."""
        erasing = asyncio.ensure_future(self.pipeline.erase(user))
        while not erasing.done():
            await self.learn(now_ms)
            await asyncio.sleep(0.005)
        return await erasing

    async def close(self) -> None:
        await self.engine.stop()
        self.learner.close()
        self.writer.stop()
        self.pipeline.attach_loop(None)
        self.store.close()

    async def consent(self, user: str, *purposes: str, granted: bool = True, ts: int = T0) -> None:
        for purpose in purposes or ("tracking", "personalization"):
            await self.pipeline.set_consent(user, purpose, granted, "test", ts)

    async def event(self, user: str, name: str, ts: int, **fields: Any) -> None:
        ev = pb.Event(event_id=f"e{next(self._ids)}", user_id=user, name=name, timestamp_ms=ts, **fields)
        await self.pipeline.ingest([event_values(ev)])

    async def ask(self, user: str, ts: int, surface: str = "", **context: str) -> pb.NextStepResponse:
        """The engine's answer as the servicer sends it."""
        return next_step_message(await self.engine.next_step(self.pipeline.resolve(user, ""), surface, context, ts))

    async def report(self, decision_id: str, reward: float, ts: int) -> pb.OutcomeResponse:
        recorded = await self.engine.report_outcome(decision_id, reward, "", ts)
        return pb.OutcomeResponse(recorded=recorded, duplicate=not recorded)

    async def sessions(self, user: str, times: list[int]) -> None:
        for t in times:
            await self.event(user, "session_start", t, channel="web", device_type="desktop")

    async def finish_core(self, user: str, ts: int) -> int:
        """Show and complete every core step (30+ min apart); returns the time after the last one."""
        t = ts
        for step in self.catalog.core_order:
            r = await self.ask(user, t)
            assert r.step.id == step, (r.reason, r.step.id, step)
            await self.event(user, "step_completed", t + MIN_MS, step_id=step)
            t += 31 * MIN_MS
        return t

    async def consistent_user(self, user: str, day: int = 0) -> int:
        """Consent, 3 sessions on 2 days, all core steps done; returns a time at which to ask next."""
        await self.consent(user)
        start = T0 + day * DAY_MS
        await self.sessions(user, [start + 9 * HOUR_MS, start + 10 * HOUR_MS, start + DAY_MS + 9 * HOUR_MS])
        return await self.finish_core(user, start + DAY_MS + 9 * HOUR_MS + MIN_MS)


def decision_rows(db_path: Path) -> list[dict[str, Any]]:
    """Every decision row, oldest first, JSON columns decoded."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM decisions ORDER BY timestamp_ms, rowid")]
    for r in rows:
        for k in ("context", "eligible", "probabilities"):
            r[k] = json.loads(r[k])
    return rows


def outcome_rows(db_path: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return {r["decision_id"]: dict(r) for r in conn.execute("SELECT * FROM outcomes")}


Scenario = Callable[[Harness, DecisionEngine], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, **kw: Any) -> Harness:
    """Run ``scenario`` against a fresh harness on its own event loop, closing it afterwards."""
    h = Harness(tmp_path / "onramp.db", **kw)

    async def main() -> None:
        engine = h.open(asyncio.get_running_loop())
        try:
            await scenario(h, engine)
        finally:
            await h.close()
    asyncio.run(main())
    return h


def run_on(db_path: Path, body: Callable[[Harness, DecisionEngine], Awaitable[Any]],
           catalog: Catalog | None = None) -> Any:
    """Run ``body(harness, engine)`` against a harness on ``db_path`` (the catalog without experiments unless
    given) on its own event loop, closing it afterwards; returns what ``body`` returned."""
    h = Harness(db_path, catalog if catalog is not None else catalog_with(experiments=None))
    box: dict[str, Any] = {}

    async def main() -> None:
        engine = h.open(asyncio.get_running_loop())
        try:
            box["out"] = await body(h, engine)
        finally:
            await h.close()
    asyncio.run(main())
    return box["out"]
