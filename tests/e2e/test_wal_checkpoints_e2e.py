"""`onramp serve --workers 2`: the WAL is checkpointed by the learner process's thread, not in the workers'
commits (server/store/checkpointer.py), and stays short while both workers write: real processes, real gRPC."""
from __future__ import annotations

import os
import pathlib
import sys

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.store.checkpointer import CHECKPOINT_FRAMES, FALLBACK_AUTOCHECKPOINT_FRAMES, wal_frames
from tests.e2e.test_supervisor_workers import TwoWorkers

pytestmark = [pytest.mark.timeout(240), pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                            reason="reads /proc")]
PAGE = 4096


def test_the_learner_process_keeps_the_wal_short_while_two_workers_write(tmp_path: pathlib.Path) -> None:
    serve = TwoWorkers(tmp_path)
    most_frames = 0
    acked = 0
    try:
        big = {f"p{k}": f"{k}" * 1000 for k in range(3)}  # about one page per event
        channels = [grpc.insecure_channel(f"127.0.0.1:{serve.port}", options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]  # the kernel spreads them over both workers
        for i in range(100):
            stub = pb_grpc.OnrampStub(channels[i % len(channels)])
            user = f"w{i % 10}"
            if i < 10:
                stub.SetConsent(pb.ConsentRequest(user_id=user, purpose="tracking", granted=True), timeout=10)
            summary = stub.IngestEvents(iter([pb.Event(event_id=f"e{i}-{j}", user_id=user, name="feature_used",
                                                       feature="reports", properties=big) for j in range(60)]),
                                        timeout=30)
            acked += summary.accepted
            most_frames = max(most_frames, wal_frames(str(serve.db))[0])
        for ch in channels:
            ch.close()
    finally:
        serve.close()
    assert acked == 6000
    db_pages = os.path.getsize(serve.db) // PAGE
    assert db_pages > 5000  # the events' pages reached the database file
    # Without the learner's checkpointer the workers' commits would checkpoint only from 8000 frames: the WAL
    # would have held every page written. It was copied and restarted all along instead.
    assert most_frames < 3 * CHECKPOINT_FRAMES < min(db_pages, FALLBACK_AUTOCHECKPOINT_FRAMES)
