"""The ``onramp`` command: --help explains every flag; ``serve`` runs, logs where it listens, and stops
gracefully on SIGTERM with exit code 0 and every acknowledged event committed."""
from __future__ import annotations

import logging
import os
import pathlib
import re
import signal
import sqlite3
import subprocess
import sys
import time

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.ops import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_help_explains_each_flag(capsys) -> None:
    try:
        cli.main(["serve", "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for flag, words in (("--host", "127.0.0.1"), ("--port", "50051"), ("--db", "./onramp.db"),
                        ("--config", "demo catalog")):
        assert flag in out and words in out


def test_bad_config_is_reported_with_its_key(tmp_path: pathlib.Path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[ingest]\nmax_properties = -1\n")
    assert cli.main(["serve", "--config", str(config), "--db", str(tmp_path / "x.db")]) == 2
    assert "ingest.max_properties: must be a positive integer (got -1)" in capsys.readouterr().err


def test_serve_and_stop_on_sigterm(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "served.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", "0", "--db", str(db)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        lines = []
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"onramp serving on 127\.0\.0\.1:(\d+) \(db (.+?), config", line)
            if match:
                port = int(match.group(1))
                assert match.group(2) == str(db)
        assert port, "".join(lines)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OnrampStub(channel)
            stub.SetConsent(pb.ConsentRequest(user_id="u1", purpose="tracking", granted=True))
            summary = stub.IngestEvents(iter([pb.Event(event_id=f"c{i}", user_id="u1", name="session_start")
                                              for i in range(100)]))
            assert summary.accepted == 100
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert "stopping" in rest and "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 100


def _serving_lines(proc: subprocess.Popen) -> list[str]:
    """stderr lines of a starting ``onramp serve`` up to its 'onramp serving on' line (all lines if it exits)."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "onramp serving on" in line:
            break
    return lines


def test_a_config_with_one_catalog_key_overrides_just_that_key_of_the_demo(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "onramp.toml"
    config.write_text("[guardrails]\nmax_per_day_total = 2\n")
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", "0", "--db", str(tmp_path / "o.db"),
                             "--config", str(config)], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = _serving_lines(proc)
        assert "onramp serving on" in lines[-1], "".join(lines)
        assert any(f"the demo catalog with these keys from {config}: guardrails.max_per_day_total" in line
                   for line in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_demo_key_at_fault_is_reported_as_the_demo_s(tmp_path: pathlib.Path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[guardrails]\nmax_exploration = 0.01\n")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert cli.main(["serve", "--port", "0", "--config", str(config), "--db", str(tmp_path / "x.db")]) == 2
    finally:  # serve logged to this test's captured stderr, which closes with the test
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    assert ("bandit.epsilon: must be <= guardrails.max_exploration = 0.01 (got 0.03) (this is the demo catalog's "
            "bandit.epsilon: set bandit.epsilon in the config to replace it)") in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_serve_logs_readable_lines_on_a_terminal_and_json_lines_into_a_pipe(tmp_path: pathlib.Path) -> None:
    import json
    import pty

    command = [sys.executable, "-m", "server", "serve", "--port", "0"]
    master, slave = pty.openpty()
    proc = subprocess.Popen([*command, "--db", str(tmp_path / "tty.db")], cwd=ROOT, stderr=slave,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(slave)
    try:
        seen = b""
        while b"onramp serving on" not in seen:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the server exited and closed the terminal
                chunk = b""
            assert chunk, seen.decode()
            seen += chunk
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    serving = next(line for line in seen.decode().splitlines() if "onramp serving on" in line)
    assert re.search(r" INFO onramp\.cli: onramp serving on 127\.0\.0\.1:\d+ \(db ", serving), serving
    assert not serving.lstrip().startswith("{")

    proc = subprocess.Popen([*command, "--db", str(tmp_path / "pipe.db")], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = _serving_lines(proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(lines[-1])["msg"].startswith("onramp serving on")


def test_a_busy_port_is_one_clear_line_and_leaves_no_files(tmp_path: pathlib.Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "server", "serve", "--port", str(port), "--db",
                                 str(tmp_path / "x.db")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == (f"onramp: cannot listen on 127.0.0.1:{port}: the port is in use by another process "
                             "(another onramp serve? choose a free port with --port)\n")
    assert list(tmp_path.iterdir()) == []
