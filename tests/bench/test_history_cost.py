"""bench.history_cost: the writer's CPU per logged decision for two history sizes (figures present, sizes as
stated; no timed assertion)."""
from __future__ import annotations

import re

import pytest

from bench import history_cost


@pytest.mark.timeout(120)
def test_reports_the_writer_cpu_for_each_history_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert history_cost.main(["--keeps", "16,256", "--decisions", "30", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    sizes = {int(k): int(b.replace(",", "")) for k, b in re.findall(r"keep (\d+) per step: history ([\d,]+) bytes", out)}
    assert set(sizes) == {16, 256} and sizes[256] > 10 * sizes[16]
    assert len(re.findall(r"writer CPU per decision \d+ us \[\d+\.\.\d+\] \(n=1\)", out)) == 2
