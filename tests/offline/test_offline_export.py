"""Exports read back equal to the log: Parquet (pyarrow), VW DSJSON (line by line), the OBP dict (.npz and
pickle); only pseudonyms leave the database and erased users never appear."""
from __future__ import annotations

import json
import pathlib
import sqlite3
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from server.base.catalog import load_catalog
from server.offline.common import generic_order
from server.offline.export import export_dsjson, export_parquet, load_obp, obp_feedback, save_obp
from server.offline.logdata import load_decisions
from server.offline.synth import synth_pseudonymizer
from server.ops.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]

CAT = load_catalog(None)
ACTIONS = generic_order(CAT)


def _db_rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_parquet_decisions_and_events_equal_the_log_without_erased_users(population, tmp_path):
    path, truth = population
    counts = export_parquet(path, tmp_path)
    dec = pq.read_table(tmp_path / "decisions.parquet").to_pylist()
    ev = pq.read_table(tmp_path / "events.parquet").to_pylist()
    want = _db_rows(path, "SELECT d.decision_id, d.user_pseudo, d.step_id, d.propensity, d.probabilities, o.reward "
                          "FROM decisions d LEFT JOIN outcomes o USING (decision_id) ORDER BY d.timestamp_ms, d.decision_id")
    want = [w for w in want if w[1] not in truth.erased_pseudos]
    assert truth.erased_pseudos and len(dec) == len(want) == counts["decisions.parquet"]
    assert [(d["decision_id"], d["user_pseudo"], d["step_id"], d["propensity"], d["probabilities"], d["reward"])
            for d in dec] == want
    n_events = _db_rows(path, "SELECT COUNT(*) FROM events")[0][0]
    pseudo = synth_pseudonymizer()
    erased_events = sum(n for s, n in _db_rows(path, "SELECT subject, COUNT(*) FROM events GROUP BY subject")
                        if s in truth.erased_subjects)
    assert len(ev) == counts["events.parquet"] == n_events - erased_events
    assert {e["user_pseudo"] for e in ev} == {pseudo(s) for s in truth.subjects if s not in truth.erased_subjects}
    assert not {e["user_pseudo"] for e in ev} & truth.erased_pseudos
    raw_ids = set(truth.subjects)
    for e in ev:  # no raw id anywhere in the exported events
        assert not raw_ids & {e["user_pseudo"], e["user_id_pseudo"], e["anonymous_pseudo"], e["device_pseudo"]}
        assert not e["anonymous_pseudo"].startswith("anon")
    anon = [e for e in ev if e["anonymous_pseudo"]]
    assert anon and all(len(e["anonymous_pseudo"]) == 32 for e in anon)


def test_dsjson_lines_match_the_decision_log(noisy_log, tmp_path):
    path, truth = noisy_log
    log = load_decisions(path, catalog_actions=ACTIONS)
    out = tmp_path / "log.dsjson"
    n = export_dsjson(log, CAT, out)
    lines = out.read_text().splitlines()
    assert n == len(lines) == int((truth.has_step & truth.has_outcome).sum())
    by_id = {d: i for i, d in enumerate(log.decision_id.tolist())}
    for line in lines:
        obj = json.loads(line)
        i = by_id[obj["EventId"]]
        multi = obj["c"]["_multi"]
        assert obj["_label_cost"] == -log.reward[i]
        assert obj["_label_probability"] == pytest.approx(log.propensity[i])
        assert multi[obj["_labelIndex"]]["step"] == log.action_ids[log.action[i]]
        assert obj["_label_Action"] == obj["_labelIndex"] + 1 == obj["a"][0]
        assert sorted(obj["a"]) == list(range(1, len(multi) + 1)) and len(obj["p"]) == len(obj["a"])
        assert obj["p"][0] == pytest.approx(obj["_label_probability"])
        assert sum(obj["p"]) == pytest.approx(1.0)
        for a, p in zip(obj["a"], obj["p"]):
            assert p == pytest.approx(log.logging_dist[i, ACTIONS.index(multi[a - 1]["step"])])
        assert [obj["c"][f] for f in log.feature_names] == pytest.approx(log.context[i].tolist())
        assert obj["Timestamp"].endswith("Z")


@pytest.mark.parametrize("suffix", [".npz", ".pkl"])
def test_obp_dict_round_trips(noisy_log, tmp_path, suffix):
    path, truth = noisy_log
    log = load_decisions(path, catalog_actions=ACTIONS)
    fb = obp_feedback(log, CAT)
    save_obp(fb, tmp_path / f"obp{suffix}")
    back = load_obp(tmp_path / f"obp{suffix}")
    keep = log.has_step & log.has_outcome
    n = int(keep.sum())
    assert back["n_rounds"] == n and back["n_actions"] == len(ACTIONS)
    np.testing.assert_array_equal(back["action"], log.action[keep])
    np.testing.assert_array_equal(back["reward"], log.reward[keep])
    np.testing.assert_array_equal(back["pscore"], log.propensity[keep])
    np.testing.assert_array_equal(back["context"], log.context[keep])
    assert back["position"].shape == (n,) and back["action_context"].shape[0] == len(ACTIONS)
    assert back["pi_b"].shape == (n, len(ACTIONS), 1)
    np.testing.assert_allclose(back["pi_b"][np.arange(n), back["action"], 0], back["pscore"])
    rows = truth.rows_of(back["decision_id"])
    np.testing.assert_allclose(back["pi_b"][:, :, 0], truth.logging_dist[rows])


def test_export_cli_formats_and_erasure(population, tmp_path, capsys):
    path, truth = population
    assert main(["export", "--db", str(path), "--format", "dsjson", "--out", str(tmp_path / "x.dsjson")]) == 0
    ids = {json.loads(line)["EventId"] for line in (tmp_path / "x.dsjson").read_text().splitlines()}
    erased_ids = {d for d, u in _db_rows(path, "SELECT decision_id, user_pseudo FROM decisions") if u in truth.erased_pseudos}
    assert erased_ids and not ids & erased_ids
    assert main(["export", "--db", str(path), "--format", "obp", "--out", str(tmp_path / "x.npz")]) == 0
    assert not set(load_obp(tmp_path / "x.npz")["decision_id"].tolist()) & erased_ids
    assert main(["export", "--db", str(path), "--format", "obp", "--out", str(tmp_path / "x.txt")]) == 2
    assert "--out" in capsys.readouterr().err


def _onramp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_export_never_overwrites_without_force_and_says_so(population, tmp_path):
    path, _ = population
    out = tmp_path / "decisions.dsjson"
    out.write_text("keep me\n")
    done = _onramp("export", "--db", str(path), "--format", "dsjson", "--out", str(out))
    assert done.returncode == 2
    assert done.stderr == f"onramp export: --out {out}: the file already exists; pass --force to overwrite it\n"
    assert out.read_text() == "keep me\n"
    assert _onramp("export", "--db", str(path), "--format", "dsjson", "--out", str(out), "--force").returncode == 0
    assert out.read_text() != "keep me\n"

    done = _onramp("export", "--db", str(path), "--format", "parquet", "--out", str(out))
    assert done.returncode == 2
    assert done.stderr == (f"onramp export: --out {out}: is a file; --format parquet writes a directory "
                           "(decisions.parquet and events.parquet), so name a directory (it is created if missing)\n")
    directory = tmp_path / "export"
    assert _onramp("export", "--db", str(path), "--format", "parquet", "--out", str(directory)).returncode == 0
    done = _onramp("export", "--db", str(path), "--format", "parquet", "--out", str(directory))
    assert done.returncode == 2
    assert done.stderr == (f"onramp export: --out {directory}: {directory / 'decisions.parquet'} and "
                           f"{directory / 'events.parquet'} already exist; pass --force to overwrite them\n")
    assert _onramp("export", "--db", str(path), "--format", "obp", "--out", str(directory)).stderr == (
        f"onramp export: --out {directory}: is a directory; --format obp writes one file, so name a file\n")
