"""The README's five-minute tour runs as written against a real server, and leaves the offline tools data to
work on (its user is not the one it erases; its step_completed event counts the step as completed)."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

from server.ops.app import running_server

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_HINT = "on synthetic data: onramp demo-data --db demo.db, then onramp"


def readme_tour() -> str:
    """The Python block of the README's "Five-minute tour" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Five-minute tour"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """``args`` run in ``cwd`` with this checkout's server and client first on the path (not another checkout
    that the venv may have been installed from)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _onramp(cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-c", "import sys; from server.ops.cli import main; sys.exit(main())", *args], cwd)


def test_the_tour_runs_and_the_offline_tools_find_its_user(tmp_path: pathlib.Path) -> None:
    tour = readme_tour()
    assert 'OnrampClient("127.0.0.1:50051")' in tour
    with running_server(db_path=tmp_path / "onramp.db") as handle:
        (tmp_path / "tour.py").write_text(tour.replace("127.0.0.1:50051", handle.address), encoding="utf-8")
        ran = _run([sys.executable, "tour.py"], tmp_path)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert re.fullmatch(r"welcome core 1\.0 [0-9a-f]{32}", lines[1]), ran.stdout
    assert lines[2].startswith("1 ['welcome'] ['at_risk', 'new_explorer'"), ran.stdout

    funnel = _onramp(tmp_path, "report", "funnel", "--db", "onramp.db", "--json")
    assert funnel.returncode == 0, funnel.stderr
    report = json.loads(funnel.stdout)
    welcome = next(s for s in report["steps"] if s["step_id"] == "welcome")
    assert (report["users"], welcome["shown"], welcome["completed"]) == (1, 1, 1)  # user-7 was the one erased
    text = _onramp(tmp_path, "report", "funnel", "--db", "onramp.db")
    assert "only 1 user: a drop-off is flagged once its step was shown to 20 users" in text.stdout
    assert "0 of 1 users reached it yet" in text.stdout and "nan" not in text.stdout

    replay = _onramp(tmp_path, "replay", "--db", "onramp.db", "--json", "--bootstrap", "20", "--no-progress")
    assert replay.returncode == 0, replay.stderr
    result = json.loads(replay.stdout)
    assert result["counts"]["used"] == 1  # the step_completed event rewarded the decision
    assert any(w.startswith("only 1 decision evaluated") and DEMO_HINT in w for w in result["warnings"])

    experiments = _onramp(tmp_path, "report", "experiments", "--db", "onramp.db")
    assert experiments.returncode == 2
    assert experiments.stderr.startswith("onramp report experiments: only arm ")
    assert "comparing arms needs users in two at least" in experiments.stderr and DEMO_HINT in experiments.stderr
