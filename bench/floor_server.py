"""Onramp with part of GetNextStep changed, to split the serving cost: ``python -m bench.floor_server
--variant floor|nolog serve --port P --db D ...`` (after ``--variant``, the arguments of ``onramp
serve``) runs the real server with

- ``floor``: GetNextStep goes through the same gRPC server, interceptor (request id, auth, limits, metrics,
  access line), validation and identity resolution, then answers a constant response of a bandit answer's
  shape (:func:`bench.bare_server.answer`) without deciding, counting the show or logging;
- ``nolog``: the engine decides and counts the show as always, but the decision row is neither encoded nor
  written (the answer does not wait for a commit);
- ``fresh``: Onramp as it is, except that every ask finds none of what the engine derived from the person's
  profile at their last ask (decoded profile, segments, context, scores, distribution): the cost of an ask
  after the person's events changed their profile, which the load (a few warm users asked again and again,
  no events) would otherwise never show.

Measured beside Onramp and the bare server (``python -m bench serving --floor``), they show what the server
around the decision, the decision itself and its durable log row each cost, and what the engine's per-person
caches save.

The patches hold in the process they are made in, so a variant always runs as one server process: ``--workers 1``
is passed to ``onramp serve`` (the default of ``onramp serve``, one worker per core, would start unpatched
workers), and any other count is refused.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Mapping

import server.ops.cli
from bench.bare_server import answer
from server.base.catalog import Step
from server.decide.engine import DecisionEngine
from server.decide.engine_api import NextStep
from server.store.decision_logger import DecisionLogger
from server.store.rows import LoggedDecision

VARIANTS = ("floor", "nolog", "fresh")
_ids = itertools.count()


async def constant_next_step(self: DecisionEngine, subject: str, surface: str, context: Mapping[str, str],
                             now_ms: int) -> NextStep:
    """Stands in for :meth:`DecisionEngine.next_step`: no decision, no show, no log row; the answer of
    :func:`bench.bare_server.answer`, which the servicer converts as any other."""
    a = answer(next(_ids))
    s = a.step
    return NextStep(a.decision_id, Step(s.id, s.title, s.channel, s.kind, s.feature), a.propensity, a.reason,
                    a.policy_version, a.experiment, a.arm, list(a.segments))


def unlogged(self: DecisionLogger, item: LoggedDecision) -> asyncio.Future[bool]:
    """Stands in for :meth:`DecisionLogger.log`: an already resolved future, no row written."""
    fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    fut.set_result(True)
    return fut


_next_step = DecisionEngine.next_step


async def fresh_next_step(self: DecisionEngine, subject: str, surface: str, context: Mapping[str, str],
                          now_ms: int) -> NextStep:
    """:meth:`DecisionEngine.next_step` after dropping what the engine derived from ``subject``'s profile before
    (as a new stored body would make it do), so each ask decodes, segments and scores the person again."""
    self._segment_cache.pop(subject, None)
    self._profiles.pop(subject, None)
    return await _next_step(self, subject, surface, context, now_ms)


def main(argv: list[str] | None = None) -> int:
    """Patch what ``--variant`` names, then run the ``onramp`` command line with the remaining arguments."""
    ap = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__)
    ap.add_argument("--variant", choices=VARIANTS, default="floor")
    ap.add_argument("--workers", type=int, default=1, help="must be 1: the patches hold in this process only")
    a, rest = ap.parse_known_args(argv)
    if a.workers != 1:
        ap.error(f"--workers {a.workers}: a variant runs as one process (its patches would not reach workers)")
    if a.variant == "floor":
        DecisionEngine.next_step = constant_next_step  # type: ignore[method-assign]
    elif a.variant == "fresh":
        DecisionEngine.next_step = fresh_next_step  # type: ignore[method-assign]
    else:
        DecisionLogger.log = unlogged  # type: ignore[method-assign]
    return server.ops.cli.main([*rest, "--workers", "1"] if rest[:1] == ["serve"] else rest)


if __name__ == "__main__":
    sys.exit(main())
