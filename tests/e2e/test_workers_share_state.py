"""Two real workers under one supervisor serve one person as one server would: concurrent GetNextStep calls of
one user, spread over both workers, never pass a daily cap together (a show is logged only if the person's
shown history is still at the version it was decided on; otherwise the worker decides again)."""
from __future__ import annotations

import pathlib
import sqlite3
import threading

import grpc
import pytest

from bench.common import to_toml
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from tests.e2e.test_supervisor_workers import CONFIG, TwoWorkers, pytestmark  # noqa: F401 - same marks
from tests.server.engine_support import demo_raw

CAP = 3
CALLS_PER_THREAD = 4
THREADS = 16  # each on its own connection: the kernel spreads them over both workers


def capped_config() -> str:
    """The demo catalog where only a daily cap of :data:`CAP` limits ``welcome`` (no cooldown, no gap)."""
    raw = demo_raw()
    welcome = next(s for s in raw["steps"] if s["id"] == "welcome")
    welcome["cooldown_hours"], welcome["max_per_day"] = 0, CAP
    raw["guardrails"]["min_gap_minutes"] = 0
    return CONFIG + to_toml(raw)


def hammer(port: int, user: str) -> list[pb.NextStepResponse]:
    """:data:`THREADS` threads, each with its own connection, ask for ``user`` at the same time."""
    answers: list[pb.NextStepResponse] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)
    lock = threading.Lock()

    def run() -> None:
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                stub = pb_grpc.OnrampStub(ch)
                grpc.channel_ready_future(ch).result(timeout=30)
                start.wait(30)
                got = [stub.GetNextStep(pb.NextStepRequest(user_id=user, surface="in_app"), timeout=60)
                       for _ in range(CALLS_PER_THREAD)]
            with lock:
                answers.extend(got)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return answers


def test_concurrent_calls_of_one_user_on_two_workers_never_pass_a_cap_together(tmp_path: pathlib.Path) -> None:
    server = TwoWorkers(tmp_path, capped_config())
    try:
        answers = hammer(server.port, "hammered")
        assert len(answers) == THREADS * CALLS_PER_THREAD
        shown = [a for a in answers if a.has_step]
        assert [a.step.id for a in shown] == ["welcome"] * CAP
        assert {a.reason for a in answers if not a.has_step} == {"capped"}
        with sqlite3.connect(server.db) as conn:
            logged = conn.execute("SELECT COUNT(*) FROM decisions WHERE step_id = 'welcome'").fetchone()[0]
            versions = conn.execute("SELECT version FROM show_history").fetchall()
        assert logged == CAP and versions == [(CAP,)]
    finally:
        server.close()
