"""``onramp report rules`` (server/offline/rule_report.py) against hand-computed values on a tiny log."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from server.base.catalog import load_catalog
from server.offline.common import generic_order
from server.offline.logdata import load_decisions
from server.offline.rule_report import BETTER, NOT_EVALUABLE, UNCLEAR, WORSE, rule_report
from server.ops.cli import main
from server.store.decision_log import insert_rows
from server.store.decision_logger import Decision
from server.store.sqlite import SqliteStore

RULE, FORCED = "skipped_screens_core_benefits", "returned_re_engagement"
BOOSTED = f"boosted:{RULE}:core_benefits"
# the bandit's own p: checklist 0.8, core_benefits 0.2; mixed with the demo's boost 0.5 toward core_benefits
MIXED = {"core_benefits": 0.6, "checklist": 0.4}


def write_log(path: Path, rows: list[tuple[str, str, dict[str, float], float | None]]) -> None:
    """(reason, step, logged probabilities, reward or None) per decision."""
    store = SqliteStore(path, synchronous="off")
    try:
        store.begin()
        insert_rows(store, [Decision(f"d{i:04d}", "u", 1_700_000_000_000 + i, "", step, probs[step], reason, "v", "",
                                     "", {"bias": 1.0}, list(probs), probs, 1_700_000_000_000 + 10**6).row()
                            for i, (reason, step, probs, _) in enumerate(rows)])
        for i, (_, _, _, reward) in enumerate(rows):
            if reward is not None:
                store.insert_outcome({"decision_id": f"d{i:04d}", "user_pseudo": "u", "reward": reward,
                                      "source": "reported", "outcome": "", "timestamp_ms": 1_700_000_000_000 + i})
        store.commit()
    finally:
        store.close()


def test_rule_and_bandit_values_are_the_hand_computed_ones(tmp_path: Path) -> None:
    db = tmp_path / "rules.db"
    write_log(db, [(BOOSTED, "core_benefits", MIXED, 1.0), (BOOSTED, "checklist", MIXED, 1.0),
                   (BOOSTED, "checklist", MIXED, 0.0), (BOOSTED, "core_benefits", MIXED, 0.0),
                   (BOOSTED, "checklist", MIXED, None),  # no outcome yet: counted, not evaluated
                   (f"rule:{FORCED}", "re_engagement", {"re_engagement": 1.0}, 1.0),
                   ("bandit", "checklist", MIXED, 1.0)])
    cat = load_catalog(None)
    rep = rule_report(load_decisions(db, None, generic_order(cat)), cat)
    rows = {r.rule: r for r in rep.rows}
    r = rows[RULE]
    assert (r.mode, r.decisions, r.rewarded, r.rule_step_shown) == ("propose", 5, 4, 2)
    assert r.success.value == 0.5 and r.logged.value == 0.5
    # rule: y [a = r] / p'(r) = [1/0.6, 0, 0, 0]; bandit: y p(a) / p'(a), p(core) = 0.2, p(checklist) = 0.8
    assert r.rule_value.value == pytest.approx((1 / 0.6) / 4)
    assert r.bandit_value.value == pytest.approx((0.2 / 0.6 + 0.8 / 0.4) / 4)
    assert r.difference.value == pytest.approx(((1 / 0.6 - 1 / 3) - 2.0) / 4)
    diffs = [1 / 0.6 - 1 / 3, -2.0, 0.0, 0.0]
    mean = sum(diffs) / 4
    sd = (sum((d - mean) ** 2 for d in diffs) / 3) ** 0.5
    assert r.difference.high == pytest.approx(mean + 1.959964 * sd / 2, rel=1e-5)
    assert r.verdict == UNCLEAR  # four decisions tell nothing
    f = rows[FORCED]
    assert (f.mode, f.decisions, f.success.value, f.verdict) == ("force", 1, 1.0, NOT_EVALUABLE)
    assert f.rule_value.value is None and set(rows) == {RULE, FORCED}


def test_verdicts_and_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "worse.db"
    # 60 decisions: the rule's step never succeeds, the bandit's checklist always does
    write_log(db, [(BOOSTED, step, MIXED, 0.0 if step == "core_benefits" else 1.0)
                   for step in ["core_benefits", "checklist", "core_benefits"] * 20])
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["report", "rules", "--db", str(db), "--json"])
    assert code == 1
    (row,) = json.loads(out.getvalue())["rows"]
    assert row["verdict"] == WORSE and row["difference"]["high"] < 0
    db2 = tmp_path / "better.db"
    write_log(db2, [(BOOSTED, step, MIXED, 1.0 if step == "core_benefits" else 0.0)
                    for step in ["core_benefits", "checklist", "core_benefits"] * 20])
    cat = load_catalog(None)
    (row2,) = rule_report(load_decisions(db2, None, generic_order(cat)), cat).rows
    assert row2.verdict == BETTER
    with redirect_stdout(io.StringIO()) as text:
        assert main(["report", "rules", "--db", str(db2)]) == 0
    assert RULE in text.getvalue() and "better" in text.getvalue()


def test_a_rule_the_catalog_does_not_know_gets_no_bandit_estimate(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    write_log(db, [("boosted:gone_rule:core_benefits", "core_benefits", MIXED, 1.0)])
    cat = load_catalog(None)
    rep = rule_report(load_decisions(db, None, generic_order(cat)), cat)
    (row,) = rep.rows
    assert row.rule_value.value == pytest.approx(1 / 0.6) and row.bandit_value.value is None
    assert any("gone_rule" in n and "boost" in n for n in rep.notes)
