"""`onramp serve` (one process, real gRPC) serves with the garbage collector's thresholds of
server/ops/cli.py (full collections rarer than Python's default) and its startup heap frozen."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

from server.ops.cli import GC_THRESHOLDS

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)

# Serve in this interpreter; a thread waits until the server froze its startup heap (it serves then), answers
# one GetNextStep, prints what the collector is set to and stops the server with SIGTERM.
SERVE = textwrap.dedent("""
    import gc, os, signal, sys, threading, time
    import grpc
    from onramp.v1 import onramp_pb2 as pb, onramp_pb2_grpc as pb_grpc
    from server.ops import cli

    def probe():
        while gc.get_freeze_count() == 0:
            time.sleep(0.02)
        port = int(sys.argv[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            reply = pb_grpc.OnrampStub(ch).GetNextStep(pb.NextStepRequest(user_id="u1"), timeout=30)
        print("thresholds", *gc.get_threshold(), "frozen", gc.get_freeze_count() > 0, "answered",
              bool(reply.decision_id), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=probe, daemon=True).start()
    sys.exit(cli.main(["serve", "--workers", "1", "--port", sys.argv[1], "--db", sys.argv[2]]))
""")


def test_serving_process_collects_garbage_with_the_serving_thresholds(tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run([sys.executable, "-c", SERVE, str(port), str(tmp_path / "o.db")], cwd=ROOT,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"thresholds {' '.join(map(str, GC_THRESHOLDS))} frozen True answered True" in out.stdout
    assert GC_THRESHOLDS[2] > 10  # rarer full collections than Python's default (700, 10, 10)
