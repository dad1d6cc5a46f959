"""Checkpoints written by a forked child (server/ops/state.py): a child killed mid-write or failing leaves the
previous checkpoint in place (loaded at the next start), its temp file is removed, the failure is raised and
logged and the server keeps serving; stop() waits for a running child; without fork (no os.fork, the key
off, GRPC_ENABLE_FORK_SUPPORT not "0") the in-process pickle writes the same checkpoint."""
from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
import tempfile
import time
from typing import Any

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops.app import ServerHandle, running_server
from server.ops.state import CheckpointInfo
from server.store.checkpoint import read_checkpoint, write_checkpoint
from server.store.marks import LogMark

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="checkpoints by a forked child need os.fork")]

KEY = "fork-checkpoint-test-key-0123456789"


def config(**server: Any) -> dict[str, Any]:
    return {"privacy": {"pseudonym_key": KEY}, "ingest": {"synchronous": "normal"},
            "server": {"checkpoint_interval_s": 3600, **server}}


def checkpoint_now(handle: ServerHandle) -> CheckpointInfo:
    assert handle.server.checkpointer is not None
    return asyncio.run_coroutine_threadsafe(handle.server.checkpointer.checkpoint(), handle.loop).result(60)


def ingest(stub: pb_grpc.OnrampStub, users: range, tag: str) -> None:
    now = int(time.time() * 1000) - 60_000
    for i in users:
        stub.SetConsent(pb.ConsentRequest(user_id=f"u{i}", purpose="tracking", granted=True, source="t",
                                          timestamp_ms=now), timeout=30)
    events = [pb.Event(event_id=f"{tag}-{i}-{k}", user_id=f"u{i}", name="feature_used", feature=f"f{k}",
                       timestamp_ms=now + k) for i in users for k in range(3)]
    acks = list(stub.IngestEventBatches(iter([pb.EventBatch(sequence=1, events=events)]), timeout=30))
    assert acks[0].accepted == len(events), acks


def temp_files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def killed_mid_write(path: pathlib.Path, data: bytes) -> int:
    """In the child: half of the file written to the temp file, then SIGKILL (before fsync and rename)."""
    fd, _tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.write(fd, data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def disk_full(path: pathlib.Path, data: bytes) -> int:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("writer,reason", [(killed_mid_write, "killed by SIGKILL"),
                                           (disk_full, "exit code 1: error OSError: [Errno 28] No space left")])
def test_a_failed_child_keeps_the_previous_checkpoint_and_the_server_going(
        tmp_path: pathlib.Path, writer: Any, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "onramp.db"
    checkpoint = tmp_path / "onramp.db.checkpoint"
    with running_server(config(), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        ingest(stub, range(10), "a")
        good = checkpoint_now(h)
        assert good.forked and good.mark.events_seq == 30 and good.child_private_bytes >= 0
        before = checkpoint.read_bytes()
        h.server.checkpointer.write_file = writer  # inherited by the next children
        ingest(stub, range(10, 15), "b")
        with pytest.raises(RuntimeError, match="checkpoint failed") as err:
            checkpoint_now(h)
        assert reason in str(err.value) and "the previous checkpoint file is kept" in str(err.value)
        assert checkpoint.read_bytes() == before
        assert temp_files(tmp_path) == []  # the killed child's half-written temp file is gone
        assert h.server.checkpointer.written == 2 and h.server.checkpointer.last == good  # at start + good

        # a background checkpoint (after an erasure) fails the same way and is logged
        with caplog.at_level(logging.ERROR, logger="server"):
            stub.EraseUser(pb.EraseUserRequest(user_id="u3"), timeout=30)
            deadline = time.monotonic() + 60
            while "checkpoint after erasure failed" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
        assert reason in caplog.text
        assert checkpoint.read_bytes() == before and temp_files(tmp_path) == []

        # and the server keeps serving
        ingest(stub, range(15, 17), "c")
        answer = stub.GetNextStep(pb.NextStepRequest(user_id="u16", timestamp_ms=int(time.time() * 1000)), timeout=30)
        assert answer.decision_id
        h.server.checkpointer.at_stop = False  # stop like a crash: the good checkpoint stays the last one
    with caplog.at_level(logging.WARNING, logger="server"), running_server(config(), db_path=db) as h:
        # the good checkpoint predates the erasure (its models learned from u3): rebuilt from the log instead
        assert h.runtime.resume is None and "a person was erased since the checkpoint" in caplog.text
        assert h.runtime.pipeline.profiles.get("u16") is not None
        assert h.runtime.pipeline.profiles.get("u3") is None  # erased after the checkpoint: not back


def test_stop_waits_for_a_running_child(tmp_path: pathlib.Path) -> None:
    """A checkpoint whose caller went away (cancelled) still finishes: stop() waits for its child, which
    is neither killed nor left writing after the server stopped."""
    db = tmp_path / "onramp.db"
    with running_server(config(), db_path=db) as h, grpc.insecure_channel(h.address) as ch:
        checkpoint_now(h)  # after the one at start
        ingest(pb_grpc.OnrampStub(ch), range(5), "a")

        def slow(path: pathlib.Path, data: bytes) -> int:
            time.sleep(1.5)
            return write_checkpoint(path, data)
        h.server.checkpointer.write_file = slow
        running = asyncio.run_coroutine_threadsafe(h.server.checkpointer.checkpoint(), h.loop)
        deadline = time.monotonic() + 30
        while h.call(lambda: h.server.checkpointer._child is None or h.server.checkpointer._child.done()):
            assert time.monotonic() < deadline, "no child started"
            time.sleep(0.01)
        running.cancel()
        h.server.checkpointer.at_stop = False
        h.stop()
        # right after stop() the child has written the file (a slow child left running would write later)
        payload = read_checkpoint(tmp_path / "onramp.db.checkpoint")
        assert payload is not None and LogMark(**payload["mark"]).events_seq == 15
        assert temp_files(tmp_path) == []
        assert h.server.checkpointer.written == 3


@pytest.mark.parametrize("how", ["key_off", "no_os_fork", "grpc_fork_env_unset", "grpc_fork_env_on"])
def test_without_fork_the_state_is_pickled_in_process(tmp_path: pathlib.Path, how: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    if how == "no_os_fork":
        monkeypatch.delattr(os, "fork")
    elif how == "grpc_fork_env_unset":
        monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT", raising=False)
    elif how == "grpc_fork_env_on":
        monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "1")
    cfg = config(checkpoint_fork=how != "key_off")
    db = tmp_path / "onramp.db"
    with caplog.at_level(logging.WARNING, logger="server.ops.state"), running_server(cfg, db_path=db) as h, \
            grpc.insecure_channel(h.address) as ch:
        ingest(pb_grpc.OnrampStub(ch), range(4), "a")
        info = checkpoint_now(h)
        assert not info.forked and not h.server.checkpointer.fork and info.mark.events_seq == 12
        h.server.checkpointer.at_stop = False
    expected = {"key_off": None, "no_os_fork": "this platform has no os.fork",
                "grpc_fork_env_unset": "GRPC_ENABLE_FORK_SUPPORT is unset, so gRPC's own fork handlers run",
                "grpc_fork_env_on": "GRPC_ENABLE_FORK_SUPPORT is '1', so gRPC's own fork handlers run"}[how]
    if expected is None:
        assert "checkpoint_fork" not in caplog.text
    else:
        assert f"server.checkpoint_fork: {expected}" in caplog.text and "pickled in the server process" in caplog.text
    monkeypatch.undo()
    with running_server(config(), db_path=db) as h:
        assert h.runtime.resume is not None and h.runtime.resume.mark == info.mark


def test_orphaned_temp_files_are_removed_at_start(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "onramp.db"
    orphan = tmp_path / ".onramp.db.checkpoint.abc123.tmp"
    other = tmp_path / ".other.tmp"
    orphan.write_bytes(b"ONRAMP-CHECKPOINT 2 half")
    other.write_bytes(b"not ours")
    with running_server(config(), db_path=db):
        assert not orphan.exists() and other.exists()


def test_a_forked_checkpoint_keeps_a_startup_freeze_and_undoes_only_its_own(tmp_path: pathlib.Path) -> None:
    import gc

    with running_server(config(), db_path=tmp_path / "onramp.db") as h:
        gc.unfreeze()
        assert checkpoint_now(h).forked
        assert gc.get_freeze_count() == 0  # its own freeze is undone once the child is reaped
        gc.freeze()  # as `serve` does after start
        try:
            frozen = gc.get_freeze_count()
            assert checkpoint_now(h).forked
            # the startup heap stays out of the collector's reach (less the frozen objects freed meanwhile)
            assert gc.get_freeze_count() > frozen // 2 > 0
        finally:
            gc.unfreeze()
