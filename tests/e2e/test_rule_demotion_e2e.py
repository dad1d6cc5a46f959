"""Proposing rules end to end over real gRPC: simulated users of two hidden types trigger one rule each. The
"skipped screens" rule proposes a step that almost never succeeds for its users (worse than what the bandit
picks); the "explored feature" rule proposes a step that usually succeeds (better). The server boosts both
rules' steps with exact logged probabilities; its learner demotes the bad rule (a log line,
``onramp_rule_demoted`` = 1; the next snapshot names it, and its users then get the bandit's draw) and keeps the
good one. The offline reports run on the resulting log:
``onramp report rules`` finds the bad rule worse and the good one not, ``report experiments`` and
``replay`` read the boosted decisions without error.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import math
import sqlite3
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout

import grpc
import numpy as np

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.base.reasons import boosted_rule
from server.ops.app import running_server
from server.ops.cli import main
from server.store import learning_log as feeds
from tests.server.ops_support import captured_json_logs

HOUR_MS = 3_600_000
MIN_MS = 60_000
N_USERS = 240
SEED = 5
BAD, GOOD = "skipped_screens_core_benefits", "explored_feature_advanced_tip"
MIN_OUTCOMES = 30
RULES = [
    {"name": BAD, "kind": "screens_skipped", "threshold": 2, "step": "core_benefits", "priority": 20,
     "min_outcomes_to_demote": MIN_OUTCOMES},
    {"name": GOOD, "kind": "feature_explored", "threshold": 5, "step_template": "advanced_tip_{feature}",
     "priority": 10, "min_outcomes_to_demote": MIN_OUTCOMES},
]
EXPERIMENTS = [{"name": "tailored_vs_generic", "salt": "rules-e2e", "arms": [
    {"name": "tailored", "kind": "tailored", "share": 0.8}, {"name": "generic", "kind": "generic", "share": 0.2}]}]
# hidden success probabilities: the bad rule's step fails, the good rule's step succeeds, the rest in between
SUCCESS = {"core_benefits": 0.02, "advanced_tip_reports": 0.9}
BASE = 0.45


class Population:
    """Drives one simulated user at a time through the server with its own clock."""

    def __init__(self, stub: pb_grpc.OnrampStub, now_ms: int) -> None:
        self.stub = stub
        self.now_ms = now_ms
        self._ids = itertools.count()

    def _event(self, uid: str, name: str, ts: int, **fields) -> pb.Event:
        return pb.Event(event_id=f"{uid}-{next(self._ids)}", user_id=uid, name=name, timestamp_ms=ts,
                        channel="web", device_type="desktop", **fields)

    def _send(self, events: list[pb.Event]) -> None:
        summary = self.stub.IngestEvents(iter(events), timeout=30)
        assert summary.accepted == len(events), summary

    def run_user(self, i: int) -> list[tuple[bool, int, str, str]]:
        """One user's journey; returns (skipper, ask number, reason, step) of every answered decision."""
        rng = np.random.default_rng([SEED, i])
        skipper = i % 2 == 0  # the bad rule's users; the others trigger the good rule
        uid = f"sim-{i}"
        stub = self.stub
        day_b = self.now_ms - 20 * HOUR_MS + i * 1000  # every reward window still open
        day_a = day_b - 30 * HOUR_MS
        for purpose in ("tracking", "personalization"):
            stub.SetConsent(pb.ConsentRequest(user_id=uid, purpose=purpose, granted=True, source="sim",
                                              timestamp_ms=day_a), timeout=30)
        self._send([self._event(uid, "session_start", day_a), self._event(uid, "session_start", day_a + HOUR_MS)])
        clock = day_a + 2 * HOUR_MS
        for step in ("welcome", "profile_setup", "first_project"):
            r = stub.GetNextStep(pb.NextStepRequest(user_id=uid, timestamp_ms=clock), timeout=30)
            assert (r.step.id, r.reason) == (step, "core"), r
            self._send([self._event(uid, "step_completed", clock + MIN_MS, step_id=step)])
            clock += 31 * MIN_MS
        trigger = ([self._event(uid, "screen_skipped", day_b + j + 1) for j in range(2)] if skipper else
                   [self._event(uid, "feature_used", day_b + j + 1, feature="reports") for j in range(5)])
        self._send([self._event(uid, "session_start", day_b), *trigger])
        out = []
        for j in range(3):
            ts = day_b + MIN_MS + j * 35 * MIN_MS
            r = stub.GetNextStep(pb.NextStepRequest(user_id=uid, surface="in_app", timestamp_ms=ts), timeout=30)
            if not r.has_step:
                continue
            reward = float(rng.random() < SUCCESS.get(r.step.id, BASE))
            o = stub.ReportOutcome(pb.OutcomeRequest(decision_id=r.decision_id, reward=reward, outcome="sim",
                                                     timestamp_ms=ts + MIN_MS), timeout=30)
            assert o.recorded, o
            out.append((skipper, j, r.reason, r.step.id))
        return out


def metric_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return [line for line in response.read().decode().splitlines() if line.startswith("onramp_rule_")]


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def test_a_bad_proposing_rule_is_demoted_and_a_good_one_is_not(tmp_path) -> None:
    db = tmp_path / "onramp.db"
    with captured_json_logs(logging.INFO) as logs, \
            running_server({"rules": RULES, "experiments": EXPERIMENTS}, db_path=db, ingest={"synchronous": "normal"},
                           metrics={"enabled": True, "port": 0}) as server, \
            grpc.insecure_channel(server.address) as channel:
        pop = Population(pb_grpc.OnrampStub(channel), int(time.time() * 1000))
        with ThreadPoolExecutor(6) as pool:
            answers = [a for user in pool.map(pop.run_user, range(N_USERS)) for a in user]
        learner = server.server.learner  # the monitor lives in the learner, which learns every reported outcome
        deadline = time.monotonic() + 30
        while not server.call(lambda: feeds.last_id(learner.reader, "outcome_log") <= learner.pos.outcomes):
            assert time.monotonic() < deadline, "the learner did not catch up with the outcomes"
            time.sleep(0.05)
        monitor = server.call(lambda: learner.rule_monitor.to_state())
        lines = metric_lines(server.server.ops.metrics_server.port)

    stats = monitor["stats"]
    assert stats[BAD]["demoted"] and not stats[GOOD]["demoted"], stats
    assert 1 <= stats[BAD]["looks"] <= 3 and stats[BAD]["n"] >= MIN_OUTCOMES, stats  # at 30, 60 or 120 outcomes
    assert stats[GOOD]["looks"] >= 2, stats  # the good rule was tested (at 30 and 60 outcomes) and kept
    assert f'onramp_rule_demoted{{rule="{BAD}"}} 1.0' in lines and f'onramp_rule_demoted{{rule="{GOOD}"}} 0.0' in lines
    assert f'onramp_rule_demotions_total{{rule="{BAD}"}} 1.0' in lines, lines
    records = [json.loads(x) for x in logs.getvalue().splitlines() if x.strip()]
    demotions = [r for r in records if r["logger"] == "server.learn.rule_monitor"]
    assert len(demotions) == 1 and demotions[0]["level"] == "WARNING" and \
        demotions[0]["msg"].startswith(f"rule {BAD} demoted"), demotions

    # every boosted answer carried the exact probability of its step, the rule's step at least the boost
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT reason, step_id, propensity, probabilities FROM decisions WHERE reason LIKE "
                        "'boosted:%' ORDER BY rowid").fetchall()
    conn.close()
    assert {boosted_rule(r[0])[0] for r in rows} == {BAD, GOOD}
    for reason, step, propensity, probabilities in rows:
        probs = json.loads(probabilities)
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-12) and probs[step] == propensity
        assert probs[boosted_rule(reason)[1]] >= 0.5
    n_bad = sum(1 for _, _, reason, _ in answers if reason.startswith(f"boosted:{BAD}:"))
    assert n_bad == sum(1 for r in rows if boosted_rule(r[0])[0] == BAD) >= stats[BAD]["n"]
    # a tailored skipper's first personalized answer: the bad rule fires (its step was never shown) until the
    # rule is demoted, the bandit's own draw after that
    first = [reason for skipper, j, reason, _ in answers if skipper and j == 0 and reason != "generic"]
    assert {boosted_rule(r)[0] for r in first if r != "bandit"} == {BAD}
    assert first.count("bandit") >= len(first) // 3, first

    # the offline reports read the boosted log
    code, text = cli("report", "rules", "--db", str(db), "--json")
    assert code == 1, text  # a rule significantly worse than the bandit
    verdicts = {r["rule"]: r for r in json.loads(text)["rows"]}
    assert verdicts[BAD]["verdict"] == "worse", json.dumps(verdicts)
    # the bandit soon favours the good rule's step too: the rule is at least as good, not worse
    assert verdicts[GOOD]["verdict"] != "worse" and verdicts[GOOD]["rule_value"]["value"] > 0.8, json.dumps(verdicts)
    code, text = cli("report", "experiments", "--db", str(db), "--json")
    assert code in (0, 1) and json.loads(text)["arms"], text
    code, text = cli("replay", "--db", str(db), "--json")
    assert code == 0 and json.loads(text), text
