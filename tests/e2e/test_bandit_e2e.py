"""The decision engine end to end over real gRPC: a seeded population of users with hidden types grants
consent, emits events over several (simulated) days so it passes the consistency guardrail, completes the
core flow, asks GetNextStep and reports outcomes drawn from its hidden type's preferences. After warm-up the
steps the bandit chooses (tailored arm) succeed clearly more often than the generic flow's (generic arm),
and every answer is in the decision log with an outcome for every reported decision.
"""
from __future__ import annotations

import itertools
import sqlite3
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import running_server

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000
N_USERS = 360
SEED = 11


@dataclass(frozen=True)
class UserType:
    """A hidden type: how its users behave (observable) and how likely each step succeeds (hidden)."""

    channel: str
    device: str
    features: tuple[str, ...]
    success: dict[str, float]  # step -> success probability (others: BASE)


BASE = 0.05
# One type's favourite is the generic order's first personalized step, so the generic flow is no straw man.
TYPES = (
    UserType("ios", "mobile", ("boards",), {"checklist": 0.85, "video_intro": 0.5}),
    UserType("web", "desktop", ("reports", "reports", "automations"), {"advanced_tip_reports": 0.85,
                                                                      "invite_team": 0.5}),
    UserType("android", "tablet", ("dashboards", "integrations"), {"template_gallery": 0.85,
                                                                   "core_benefits": 0.5}),
)


class Population:
    """Drives one simulated user at a time through the server with its own clock."""

    def __init__(self, stub: pb_grpc.OnrampStub, now_ms: int, seed: int) -> None:
        self.stub = stub
        self.now_ms = now_ms
        self.seed = seed
        self._ids = itertools.count()

    def _event(self, uid: str, name: str, ts: int, t: UserType, **fields) -> pb.Event:
        return pb.Event(event_id=f"{uid}-{next(self._ids)}", user_id=uid, name=name, timestamp_ms=ts,
                        channel=t.channel, device_type=t.device, **fields)

    def _send(self, events: list[pb.Event]) -> None:
        summary = self.stub.IngestEvents(iter(events), timeout=30)
        assert summary.accepted == len(events), summary

    def run_user(self, i: int) -> list[tuple[str, str, float]]:
        """One user's journey; returns (reason, step, reward) of every reported decision."""
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(TYPES)))
        t = TYPES[k]
        uid = f"sim-{i}"
        stub = self.stub
        day_b = self.now_ms - 20 * HOUR_MS + i * 1000  # within the last 24 h: every reward window still open
        day_a = day_b - 30 * HOUR_MS  # another UTC day, and the core shows out of day B's 24 h caps
        for purpose in ("tracking", "personalization"):
            stub.SetConsent(pb.ConsentRequest(user_id=uid, purpose=purpose, granted=True, source="sim",
                                              timestamp_ms=day_a), timeout=30)
        self._send([self._event(uid, "session_start", day_a, t), self._event(uid, "session_start", day_a + HOUR_MS, t),
                    *(self._event(uid, "feature_used", day_a + HOUR_MS + j + 1, t, feature=f)
                      for j, f in enumerate(t.features))])
        clock = day_a + 2 * HOUR_MS
        for step in ("welcome", "profile_setup", "first_project"):  # the static core flow, in order
            r = stub.GetNextStep(pb.NextStepRequest(user_id=uid, timestamp_ms=clock), timeout=30)
            assert (r.step.id, r.reason) == (step, "core"), r
            self._send([self._event(uid, "step_completed", clock + MIN_MS, t, step_id=step)])
            clock += 31 * MIN_MS
        # third session, on the later day: consistent behavior (3 sessions on 2 days) from now on
        self._send([self._event(uid, "session_start", day_b, t),
                    *(self._event(uid, "feature_used", day_b + j + 1, t, feature=f) for j, f in enumerate(t.features))])
        out = []
        for j in range(6):
            ts = day_b + MIN_MS + j * 35 * MIN_MS
            r = stub.GetNextStep(pb.NextStepRequest(user_id=uid, timestamp_ms=ts,
                                                    context={"device_type": t.device}), timeout=30)
            if not r.has_step:
                continue
            p = t.success.get(r.step.id, BASE)
            reward = 1.0 if rng.random() < p else 0.0
            o = stub.ReportOutcome(pb.OutcomeRequest(decision_id=r.decision_id, reward=reward,
                                                     outcome="completed" if reward else "ignored",
                                                     timestamp_ms=ts + MIN_MS), timeout=30)
            assert o.recorded and not o.duplicate, (r, o)
            out.append((r.reason, r.step.id, reward))
        return out


def test_bandit_beats_the_generic_flow_after_warm_up() -> None:
    started = time.monotonic()
    with running_server(ingest={"synchronous": "normal"}) as server, \
            grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        pop = Population(stub, int(time.time() * 1000), SEED)
        half = N_USERS // 2
        with ThreadPoolExecutor(6) as pool:
            warm_up = list(pool.map(pop.run_user, range(half)))
            after = list(pool.map(pop.run_user, range(half, N_USERS)))
        learned = server.call(lambda: server.server.service.decisions.learned)
        db = server.db_path
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            n_decisions = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
            reported = conn.execute("SELECT COUNT(*) FROM outcomes WHERE source = 'reported'").fetchone()[0]
            reasons = Counter(r for (r,) in conn.execute("SELECT reason FROM decisions"))
            bad = conn.execute("SELECT COUNT(*) FROM decisions WHERE step_id != '' AND (propensity <= 0 OR "
                               "propensity > 1)").fetchone()[0]

    def rate(results: list[list[tuple[str, str, float]]], reason: str) -> tuple[float, int]:
        rewards = [rw for user in results for (rs, _, rw) in user if rs == reason]
        return (float(np.mean(rewards)) if rewards else 0.0), len(rewards)

    bandit, n_bandit = rate(after, "bandit")
    generic, n_generic = rate(after, "generic")
    warm_bandit, _ = rate(warm_up, "bandit")
    print(f"\nbandit {bandit:.3f} (n={n_bandit}, warm-up {warm_bandit:.3f}) vs generic {generic:.3f} "
          f"(n={n_generic}); reasons {dict(reasons)}; learned {learned}; {time.monotonic() - started:.1f} s")
    assert n_bandit >= 150 and n_generic >= 150
    assert bandit > generic + 0.1, (bandit, generic)
    assert bad == 0
    assert reported == sum(len(u) for u in warm_up + after)
    assert learned > 0
    assert n_decisions == sum(reasons.values()) and reasons["core"] == 3 * N_USERS
    assert reasons["holdout"] > 0
