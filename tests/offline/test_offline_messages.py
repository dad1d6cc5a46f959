"""On a database without data (a server started and stopped, nothing sent) the offline tools say what is
missing and what to run (tests/e2e/test_readme_tour_e2e.py checks the one-user database of the tour)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from server.ops.app import running_server

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_HINT = "on synthetic data: onramp demo-data --db demo.db, then onramp"


def _onramp(cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``onramp *args`` in ``cwd``, this checkout's server first on the path."""
    return subprocess.run([sys.executable, "-c", "import sys; from server.ops.cli import main; sys.exit(main())",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_on_an_empty_database_the_offline_tools_say_what_is_missing(tmp_path: pathlib.Path) -> None:
    with running_server(db_path=tmp_path / "onramp.db"):
        pass
    for command, message in (
            (["replay"], "onramp replay: nothing to evaluate: the log holds no decisions yet"),
            (["report", "funnel"], "onramp report funnel: no users to report on: onramp.db holds no user's events"),
            (["report", "experiments"], "onramp report experiments: no decisions to compare: the database holds no "
                                        "events and no decisions yet")):
        done = _onramp(tmp_path, *command, "--db", "onramp.db")
        assert done.returncode == 2, done.stdout
        assert done.stderr.startswith(message), done.stderr
        assert f"to try onramp {' '.join(command)} {DEMO_HINT} {' '.join(command)} --db demo.db\n" in done.stderr
