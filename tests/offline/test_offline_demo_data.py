"""``onramp demo-data`` writes a synthetic population that every offline tool reads, and never replaces an
existing database without --force."""
from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _onramp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_data_feeds_every_offline_tool(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "demo.db"
    made = _onramp("demo-data", "--db", str(db), "--users", "400")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(f"{db}: 400 synthetic users (")
    assert f"Next: onramp report funnel --db {db};" in made.stdout
    # the database, its key and the (empty) lock file its writers take turns with: no WAL or shared memory left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.db", "demo.db.key", "demo.db.write-lock"]

    funnel = _onramp("report", "funnel", "--db", str(db), "--json")
    assert funnel.returncode == 0, funnel.stderr
    report = json.loads(funnel.stdout)
    assert report["users"] > 300 and report["time_to_value"]["reached"] > 0
    experiments = _onramp("report", "experiments", "--db", str(db), "--json")
    assert experiments.returncode in (0, 1), experiments.stderr
    assert json.loads(experiments.stdout)["experiment"] == "tailored_vs_generic"
    replay = _onramp("replay", "--db", str(db), "--json", "--bootstrap", "20", "--no-progress")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["counts"]["used"] > 0


def test_demo_data_replaces_a_database_only_with_force(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "onramp.db"
    assert _onramp("demo-data", "--db", str(db), "--users", "50").returncode == 0
    before = _digest(db), _digest(tmp_path / "onramp.db.key")
    again = _onramp("demo-data", "--db", str(db), "--users", "60", "--seed", "1")
    assert again.returncode == 2
    assert again.stderr == (f"onramp demo-data: --db {db}: a database already exists there; pass --force to replace "
                            "it with demo data (its key file and checkpoint go too), or name a new file\n")
    assert (_digest(db), _digest(tmp_path / "onramp.db.key")) == before
    forced = _onramp("demo-data", "--db", str(db), "--users", "60", "--seed", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.startswith(f"{db}: 60 synthetic users")

    empty = tmp_path / "empty.db"
    empty.touch()
    assert _onramp("demo-data", "--db", str(empty), "--users", "10").returncode == 0
    lone_key = tmp_path / "new.db.key"
    lone_key.write_text("00\n")
    refused = _onramp("demo-data", "--db", str(tmp_path / "new.db"))
    assert refused.returncode == 2 and f"{lone_key} of an earlier database is there" in refused.stderr
