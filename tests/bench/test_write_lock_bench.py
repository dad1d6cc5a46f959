"""Smoke test of ``python -m bench.write_lock --quick``: both modes run, every scheduled transaction of both
writer processes commits, and the figures are printed. No timing is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_write_lock_bench_runs_both_modes(tmp_path: Path) -> None:
    out_json = tmp_path / "write_lock.json"
    proc = subprocess.run([sys.executable, "-m", "bench.write_lock", "--quick", "--json", str(out_json)], cwd=ROOT,
                          capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out_json.read_text())
    for mode in ("lock", "busy"):
        (run,) = res[mode]
        assert run["transactions"] == 2 * 100  # two processes, 100 transactions/s each for 1 s: none lost
        assert 0 <= run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert f"{mode}: begin() wait p50 " in proc.stdout
    assert "p99 busy/lock: " in proc.stdout
