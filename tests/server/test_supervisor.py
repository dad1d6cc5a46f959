"""The supervisor's own mechanics with small child processes of its generic roles (server/ops/supervisor.py):
readiness over the link, a start failure passed on with its message and exit code, restart with backoff of a
child that dies, a child that keeps dying young reported and the supervisor exiting non-zero, SIGTERM
forwarded; and the staging switch that refuses more than one worker. Each supervisor runs in its own process
(it installs signal handlers), every child is a real process."""
from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from server.base.config import ConfigError, parse_config
from server.ops import cli
from server.ops.supervisor import describe_exit, reserve_port, resolve_workers

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A child of the generic role: reports ready (unless told to fail), then waits for SIGTERM. With a marker file
# it fails at every start after the first (a crash loop that begins after a restart).
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from server.ops.supervisor import SupervisorLink
    link = SupervisorLink.from_env()
    link.watch_parent()
    mode, marker = sys.argv[1], sys.argv[2]
    if mode == "fail" or (mode == "loop" and os.path.exists(marker)):
        link.failed("cannot start: told to fail", 3)
        sys.exit(3)
    open(marker, "a").close()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    link.ready(port=0)
    while True:
        time.sleep(1)
""")

SUPERVISOR = textwrap.dedent("""
    import logging, sys
    from server.ops.supervisor import ProcessSpec, StartFailed, Supervisor
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    child, marker, *modes = sys.argv[1:]
    specs = [ProcessSpec("child", (sys.executable, "-c", child, mode, f"{marker}{i}"), index=i)
             for i, mode in enumerate(modes)]
    supervisor = Supervisor(specs, restart_delays_s=(0.0, 0.1, 0.2), stable_s=5.0, drain_timeout_s=20)
    try:
        supervisor.start()
    except StartFailed as exc:
        print(f"start failed: {exc.role}: {exc.message} ({exc.code})", file=sys.stderr, flush=True)
        sys.exit(exc.code)
    print("serving pids", *supervisor.pids().values(), file=sys.stderr, flush=True)
    sys.exit(supervisor.run())
""")


class Supervised:
    """A supervisor process running the generic children ``modes``; its stderr is read line by line."""

    def __init__(self, tmp_path: pathlib.Path, *modes: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, CHILD, str(tmp_path / "marker"), *modes],
                                     cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        rest = self.proc.stderr.read()
        self.lines.append(rest)
        return code, "".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent is not running
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_children_report_ready_and_sigterm_stops_them_all(tmp_path: pathlib.Path) -> None:
    sup = Supervised(tmp_path, "ok", "ok")
    try:
        pids = [int(p) for p in sup.wait_for(r"serving pids (\d+) (\d+)").groups()]
        assert all(_alive(pid) for pid in pids)
        sup.proc.send_signal(signal.SIGTERM)
        code, log = sup.finish()
        assert code == 0, log
        assert "stopping (SIGTERM received): draining 2 processes" in log
        for i, pid in enumerate(pids):
            assert f"child {i} (pid {pid}) stopped: exit status 0" in log
            assert not _alive(pid)
    finally:
        sup.close()


def test_a_child_that_cannot_start_fails_the_start_with_its_words_and_code(tmp_path: pathlib.Path) -> None:
    sup = Supervised(tmp_path, "ok", "fail")
    try:
        code, log = sup.finish()
    finally:
        sup.close()
    assert code == 3, log
    assert "start failed: child 1: cannot start: told to fail (3)" in log
    # the other one was drained: SIGTERM ends it with status 0 once its handler is set, and a loaded machine may
    # deliver it before (the child is still starting: nothing of it to lose)
    assert re.search(r"child 0 \(pid \d+\) stopped: (exit status 0|killed by SIGTERM)", log), log


def test_a_killed_child_is_restarted_and_a_crash_loop_is_given_up_on(tmp_path: pathlib.Path) -> None:
    sup = Supervised(tmp_path, "ok", "loop")
    try:
        first, second = (int(p) for p in sup.wait_for(r"serving pids (\d+) (\d+)").groups())
        os.kill(first, signal.SIGKILL)  # child 0 comes back
        sup.wait_for(rf"child 0 \(pid {first}\) died \(killed by SIGKILL\) after [\d.]+ s; restarting it")
        restarted = int(sup.wait_for(r"child 0 \(pid (\d+)\) ready").group(1))
        assert restarted != first and _alive(restarted)
        # child 1 fails at every start from now on: the kill and 2 failed restarts are restarted (3 delays),
        # the 4th death in a row within 5 s of a start is given up on
        os.kill(second, signal.SIGKILL)
        code, log = sup.finish()
    finally:
        sup.close()
    assert code == 1, log
    assert f"child 1 (pid {second}) died (killed by SIGKILL)" in log
    assert len(re.findall(r"child 1 \(pid \d+\) died \(exit status 3\) after [\d.]+ s before it was ready", log)) == 2
    assert re.search(r"child 1 keeps dying: 4 times in a row within 5 s of its start \(last: pid \d+, exit status 3: "
                     r"cannot start: told to fail\); giving up", log), log
    assert f"child 0 (pid {restarted}) stopped: exit status 0" in log
    assert not _alive(restarted)


def test_killing_the_supervisor_ends_its_children(tmp_path: pathlib.Path) -> None:
    sup = Supervised(tmp_path, "ok", "ok")
    try:
        pids = [int(p) for p in sup.wait_for(r"serving pids (\d+) (\d+)").groups()]
        sup.proc.kill()
        sup.proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        sup.close()


def test_exit_descriptions() -> None:
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_the_workers_key_is_validated() -> None:
    assert parse_config({"server": {"workers": 4}}).server.workers == 4
    assert parse_config({}).server.workers == 0  # the default: one per core (resolve_workers)
    for bad in (-1, "2", 2.5, True, 5000):
        with pytest.raises(ConfigError, match=r"^server\.workers: must be an integer from 0 to 1024 \(0 = one per "):
            parse_config({"server": {"workers": bad}})


def test_zero_workers_means_one_per_core_this_process_may_run_on() -> None:
    assert resolve_workers(3) == 3 and resolve_workers(1) == 1
    assert resolve_workers(0) == len(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # as under `taskset -c 0 onramp serve`
        assert resolve_workers(0) == 1
    finally:
        os.sched_setaffinity(0, before)


def test_port_zero_is_reserved_for_sharing_and_a_taken_port_is_refused() -> None:
    import socket

    port, held = reserve_port("127.0.0.1", 0)
    try:
        assert port > 0
        again, more = reserve_port("127.0.0.1", port)  # another SO_REUSEPORT socket of this user may join
        for sock in more:
            sock.close()
        assert again == port
        with socket.socket() as plain:  # a socket without SO_REUSEPORT may not
            with pytest.raises(OSError):
                plain.bind(("127.0.0.1", port))
    finally:
        for sock in held:
            sock.close()


def test_several_workers_report_start_errors_like_one(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through the supervisor, a worker's config error, the refusal of a non-loopback
    address without keys and a busy port read as they do from one process: one message, the same exit code."""
    import socket

    config = tmp_path / "onramp.toml"
    config.write_text(f'[tls]\ncert_file = "{tmp_path}/none.crt"\nkey_file = "{tmp_path}/none.key"\n')
    serve = ["serve", "--workers", "2", "--port", "0", "--db", str(tmp_path / "o.db")]
    assert cli.main([*serve, "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"[tls] cert_file: file not found: {tmp_path}/none.crt") == 1, err
    assert cli.main([*serve, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "onramp: refusing to listen on 0.0.0.0:0 without authentication" in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "busy" / "o.db"
        db.parent.mkdir()
        assert cli.main(["serve", "--workers", "2", "--port", str(port), "--db", str(db)]) == 1
    assert capsys.readouterr().err == (f"onramp: cannot listen on 127.0.0.1:{port}: the port is in use by another "
                                       "process (another onramp serve? choose a free port with --port)\n")
    assert list(db.parent.iterdir()) == []
