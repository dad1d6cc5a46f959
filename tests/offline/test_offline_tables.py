"""The offline reports never cut a cell short: piped, every table row is whole on one line; on an 80-column
terminal, long cells wrap or fold instead of ending in an ellipsis."""
from __future__ import annotations

import fcntl
import os
import pathlib
import pty
import struct
import subprocess
import sys
import termios

import pytest

from server.base.catalog import load_catalog

ROOT = pathlib.Path(__file__).resolve().parents[2]
ELLIPSIS = "\u2026"
REPORTS = (["report", "funnel"], ["report", "experiments"], ["replay", "--bootstrap", "20", "--no-progress"])


def _onramp(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from server.ops.cli import main; sys.exit(main())", *args]


def _on_terminal(command: list[str], columns: int) -> str:
    """What ``command`` writes to a terminal ``columns`` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(command, cwd=ROOT, stdout=slave, stderr=slave, env={**env, "TERM": "dumb"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command exited and the terminal closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(120) in (0, 1), out.decode()
    return out.decode()


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: " ".join(r[:2]))
def test_piped_tables_keep_every_cell_whole(population, report: list[str]) -> None:
    path, _ = population
    result = subprocess.run(_onramp(*report, "--db", str(path)), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode in (0, 1), result.stderr
    assert ELLIPSIS not in result.stdout
    if report[1] == "funnel":
        rows = [line for line in result.stdout.splitlines() if line.startswith("│ ")]
        for step in load_catalog(None).step_ids:
            assert any(row.split("│")[1].strip() == step for row in rows), step


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: " ".join(r[:2]))
def test_an_80_column_terminal_wraps_instead_of_truncating(population, report: list[str]) -> None:
    path, _ = population
    out = _on_terminal(_onramp(*report, "--db", str(path)), 80)
    assert ELLIPSIS not in out
    lines = out.replace("\r\n", "\n").splitlines()
    assert lines and max(len(line) for line in lines) <= 80
