"""``onramp export``: the decision log (with outcomes) and the event log in formats other tools load -
Parquet (Snowflake, BigQuery, pandas), Vowpal Wabbit DSJSON (one JSON object per decision) and the Open
Bandit Pipeline's bandit-feedback dict (``.npz`` or pickle).

Only pseudonymised ids leave the database: decisions already carry ``user_pseudo``; event subjects, user
ids, anonymous ids and device ids are replaced by their keyed pseudonyms (:mod:`server.store.privacy`), and
every row of an erased (tombstoned) user is left out.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from server.base.catalog import Catalog, CatalogError
from server.base.config import ConfigError, PrivacyConfig
from server.base.records import ANON_PREFIX
from server.offline.console import new_console
from server.offline.common import OfflineError, generic_order, load_setup, open_readonly, pseudonymizer_for, tombstones
from server.offline.logdata import DecisionArrays, decode, read_raw_sqlite
from server.store.privacy import Pseudonymizer

FORMATS = ("parquet", "dsjson", "obp")
DEVICE_PREFIX = "device:"
EVENT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("event_id", pa.string()), ("user_pseudo", pa.string()), ("user_id_pseudo", pa.string()),
    ("anonymous_pseudo", pa.string()), ("device_pseudo", pa.string()), ("name", pa.string()),
    ("timestamp_ms", pa.int64()), ("received_ms", pa.int64()), ("event_time", pa.timestamp("ms", tz="UTC")),
    ("channel", pa.string()), ("device_type", pa.string()), ("feature", pa.string()), ("step_id", pa.string()),
    ("decision_id", pa.string()), ("properties", pa.string()),
])
_EVENT_SELECT = ("SELECT seq, event_id, subject, user_id, anonymous_id, device_id, name, timestamp_ms, received_ms, "
                 "channel, device_type, feature, step_id, decision_id, properties FROM events WHERE seq > ? "
                 "ORDER BY seq LIMIT ?")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------------------------------------ Parquet
def decisions_table(conn: sqlite3.Connection) -> pa.Table:
    """Decisions joined with outcomes (erased users left out) as an Arrow table, plus a UTC timestamp
    column; the JSON columns (context, eligible, probabilities) stay JSON text (loadable as JSON/VARIANT)."""
    raw = read_raw_sqlite(conn)
    ts = raw.column("timestamp_ms").cast(pa.timestamp("ms", tz="UTC"))
    return raw.append_column("decided_at", ts)


def iter_event_batches(conn: sqlite3.Connection, pseudo: Pseudonymizer, erased: set[str],
                       chunk: int = 100_000) -> Iterator[pa.RecordBatch]:
    """The event log as record batches of :data:`EVENT_SCHEMA`: ids pseudonymised, erased users left out."""
    last = 0
    while True:
        rows = conn.execute(_EVENT_SELECT, (last, chunk)).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        cols: dict[str, list[Any]] = {f.name: [] for f in EVENT_SCHEMA}
        for seq, eid, subject, uid, aid, did, name, ts, rec, channel, dtype, feature, step, dec, props in rows:
            sp = pseudo(subject)
            up = pseudo(uid) if uid else ""
            ap = pseudo(ANON_PREFIX + aid) if aid else ""
            if sp in erased or (up and up in erased) or (ap and ap in erased):
                continue
            for k, v in (("seq", seq), ("event_id", eid), ("user_pseudo", sp), ("user_id_pseudo", up),
                         ("anonymous_pseudo", ap), ("device_pseudo", pseudo(DEVICE_PREFIX + did) if did else ""),
                         ("name", name), ("timestamp_ms", ts), ("received_ms", rec), ("event_time", ts),
                         ("channel", channel or ""), ("device_type", dtype or ""), ("feature", feature or ""),
                         ("step_id", step or ""), ("decision_id", dec or ""), ("properties", props or "{}")):
                cols[k].append(v)
        yield pa.record_batch([pa.array(cols[f.name], type=f.type) for f in EVENT_SCHEMA], schema=EVENT_SCHEMA)


def export_parquet(db: str | Path, out_dir: str | Path, privacy: PrivacyConfig | None = None) -> dict[str, int]:
    """Write ``decisions.parquet`` and ``events.parquet`` into ``out_dir``; returns rows written per file. The
    pseudonym key is found by ``privacy`` (:func:`server.offline.common.pseudonymizer_for`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conn = open_readonly(db)
    try:
        pseudo = pseudonymizer_for(conn, privacy)
        table = decisions_table(conn)
        pq.write_table(table, out / "decisions.parquet", compression="zstd")
        erased = tombstones(conn)
        n_events = 0
        with pq.ParquetWriter(out / "events.parquet", EVENT_SCHEMA, compression="zstd") as writer:
            for batch in iter_event_batches(conn, pseudo, erased):
                writer.write_batch(batch)
                n_events += batch.num_rows
    finally:
        conn.close()
    return {"decisions.parquet": table.num_rows, "events.parquet": n_events}


# ------------------------------------------------------------------------------------------ learning formats
def _exportable(log: DecisionArrays, default_reward: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows that showed a step and have a reward (or get ``default_reward``), and their rewards."""
    reward = log.reward.copy()
    keep = log.has_step & (log.has_outcome | (default_reward is not None))
    if default_reward is not None:
        reward[np.isnan(reward)] = default_reward
    rows = np.flatnonzero(keep)
    return rows, reward[rows]


def dsjson_lines(log: DecisionArrays, catalog: Catalog, default_reward: float | None = None) -> Iterator[str]:
    """One VW DSJSON object per decision that showed a step and has a reward.

    ``c`` holds the shared context features and ``_multi`` one entry per eligible step (in generic order);
    ``a`` lists 1-based indices into ``_multi``, the chosen step first (as Decision Service logs do), ``p``
    their probabilities in the same order; ``_label_Action``/``_labelIndex`` are the chosen step's 1-based/
    0-based index in ``_multi``; ``_label_cost`` is ``-reward`` (VW minimises cost)."""
    rows, rewards = _exportable(log, default_reward)
    known = {s.id: s for s in catalog.steps}
    names = log.feature_names
    ctx_rows = log.context[rows].tolist()
    for n, (i, r) in enumerate(zip(rows.tolist(), rewards.tolist())):
        steps = np.flatnonzero(log.eligible[i]).tolist()
        chosen = int(log.action[i])
        pos = steps.index(chosen)
        multi = []
        for s in steps:
            sid = log.action_ids[s]
            entry: dict[str, Any] = {"step": sid}
            if sid in known:
                entry["channel"] = known[sid].channel
                entry["kind"] = known[sid].kind
            multi.append(entry)
        order = [pos] + [j for j in range(len(steps)) if j != pos]
        probs = log.logging_dist[i]
        c: dict[str, Any] = dict(zip(names, ctx_rows[n]))
        c["_multi"] = multi
        yield json.dumps({
            "_label_cost": -float(r),
            "_label_probability": float(log.propensity[i]),
            "_label_Action": pos + 1,
            "_labelIndex": pos,
            "Timestamp": _iso(int(log.timestamp_ms[i])),
            "Version": "1",
            "EventId": str(log.decision_id[i]),
            "a": [j + 1 for j in order],
            "c": c,
            "p": [float(probs[steps[j]]) for j in order],
            "VWState": {"m": str(log.policy_version[i])},
        }, separators=(",", ":"))


def export_dsjson(log: DecisionArrays, catalog: Catalog, path: str | Path, default_reward: float | None = None) -> int:
    """Write :func:`dsjson_lines` to ``path``; returns the number of lines."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in dsjson_lines(log, catalog, default_reward):
            f.write(line + "\n")
            n += 1
    return n


def action_context(log: DecisionArrays, catalog: Catalog) -> np.ndarray:
    """Features of every action (OBP ``action_context``): a one-hot of the step, of its channel and of its
    kind (core/personalized)."""
    from server.base.catalog import CHANNELS, STEP_KINDS

    known = {s.id: s for s in catalog.steps}
    k = log.n_actions
    out = np.zeros((k, k + len(CHANNELS) + len(STEP_KINDS)))
    out[:, :k] = np.eye(k)
    for j, sid in enumerate(log.action_ids):
        s = known.get(sid)
        if s is not None:
            out[j, k + CHANNELS.index(s.channel)] = 1.0
            out[j, k + len(CHANNELS) + STEP_KINDS.index(s.kind)] = 1.0
    return out


def obp_feedback(log: DecisionArrays, catalog: Catalog, default_reward: float | None = None) -> dict[str, Any]:
    """The Open Bandit Pipeline bandit-feedback dict (``n_rounds``, ``n_actions``, ``action``, ``reward``,
    ``pscore``, ``context``, ``action_context``, ``position``) plus ``pi_b`` (the logging distribution,
    ``(n, K, 1)``), ``action_ids``, ``feature_names``, ``decision_id``, ``timestamp_ms`` and ``reason``."""
    rows, rewards = _exportable(log, default_reward)
    return {
        "n_rounds": int(rows.size),
        "n_actions": int(log.n_actions),
        "action": log.action[rows].astype(np.int64),
        "reward": rewards.astype(np.float64),
        "pscore": log.propensity[rows].astype(np.float64),
        "context": log.context[rows],
        "action_context": action_context(log, catalog),
        "position": np.zeros(rows.size, dtype=np.int64),
        "pi_b": log.logging_dist[rows][:, :, None],
        "action_ids": np.array(log.action_ids, dtype=str),
        "feature_names": np.array(log.feature_names, dtype=str),
        "decision_id": np.array(log.decision_id[rows].tolist(), dtype=str),
        "timestamp_ms": log.timestamp_ms[rows].astype(np.int64),
        "reason": np.array(log.reason[rows].tolist(), dtype=str),
    }


def save_obp(feedback: dict[str, Any], path: str | Path) -> None:
    """Save the OBP dict: ``.npz`` (numpy, no pickle needed to read) or ``.pkl``/``.pickle``."""
    p = Path(path)
    if p.suffix == ".npz":
        np.savez_compressed(p, **{k: np.asarray(v) for k, v in feedback.items()})
    elif p.suffix in (".pkl", ".pickle"):
        with open(p, "wb") as f:
            pickle.dump(feedback, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        raise OfflineError(f"--out: an OBP file must end in .npz, .pkl or .pickle (got {p.name!r})")


def load_obp(path: str | Path) -> dict[str, Any]:
    """Read back a file written by :func:`save_obp` (scalars as Python ints)."""
    p = Path(path)
    if p.suffix == ".npz":
        with np.load(p) as z:
            d = {k: z[k] for k in z.files}
        d["n_rounds"], d["n_actions"] = int(d["n_rounds"]), int(d["n_actions"])
        return d
    with open(p, "rb") as f:
        return pickle.load(f)


# ------------------------------------------------------------------------------------------ CLI
def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register ``onramp export``."""
    p = subparsers.add_parser(
        "export", help="export decisions, outcomes and events (Parquet, VW DSJSON, OBP dict)",
        description="Export the decision log (+ outcomes) and the event log with pseudonymised ids only; erased "
                    "users never appear. parquet: a directory with decisions.parquet and events.parquet; dsjson: "
                    "one JSON per decision; obp: an Open Bandit Pipeline dict (.npz or .pkl).")
    p.add_argument("--db", required=True, metavar="PATH", help="the server's SQLite database")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="PATH", help="output directory (parquet) or file (dsjson, obp)")
    p.add_argument("--config", metavar="TOML",
                   help="the server's config (catalog, [privacy]: where the pseudonym key is)")
    p.add_argument("--default-reward", type=float, default=None, metavar="R",
                   help="dsjson/obp: reward of decisions without an outcome (default: leave them out)")
    p.add_argument("--force", action="store_true", help="overwrite output files that already exist")
    p.set_defaults(func=cmd_export)
    return p


PARQUET_FILES = ("decisions.parquet", "events.parquet")


def check_output(fmt: str, out: str | Path, force: bool) -> None:
    """OfflineError naming the path when the export would overwrite a file without ``--force``, or when a
    parquet export (a directory) is pointed at a file."""
    p = Path(out)
    if fmt == "parquet":
        if p.exists() and not p.is_dir():
            raise OfflineError(f"--out {p}: is a file; --format parquet writes a directory "
                               f"({' and '.join(PARQUET_FILES)}), so name a directory (it is created if missing)")
        existing = [str(p / name) for name in PARQUET_FILES if (p / name).exists()]
        if existing and not force:
            raise OfflineError(f"--out {p}: {' and '.join(existing)} already exist; pass --force to overwrite them")
    elif p.is_dir():
        raise OfflineError(f"--out {p}: is a directory; --format {fmt} writes one file, so name a file")
    elif p.exists() and not force:
        raise OfflineError(f"--out {p}: the file already exists; pass --force to overwrite it")


def cmd_export(args: argparse.Namespace) -> int:
    """``onramp export``: 0 on success, 2 on bad input."""
    out = new_console()
    try:
        check_output(args.format, args.out, args.force)
        setup = load_setup(args.config)
        if args.format == "parquet":
            counts = export_parquet(args.db, args.out, setup.privacy)
            for name, n in counts.items():
                out.print(f"{Path(args.out) / name}: {n} rows")
            return 0
        conn = open_readonly(args.db)
        try:
            log = decode(read_raw_sqlite(conn), generic_order(setup.catalog))
        finally:
            conn.close()
        if args.format == "dsjson":
            n = export_dsjson(log, setup.catalog, args.out, args.default_reward)
            out.print(f"{args.out}: {n} DSJSON lines ({log.n - n} decisions without a step or outcome left out)")
        else:
            fb = obp_feedback(log, setup.catalog, args.default_reward)
            save_obp(fb, args.out)
            out.print(f"{args.out}: OBP bandit feedback, {fb['n_rounds']} rounds, {fb['n_actions']} actions, "
                      f"{fb['context'].shape[1]} context features")
    except (OfflineError, ConfigError, CatalogError, OSError) as exc:
        new_console(stderr=True).print(f"onramp export: {exc}", markup=False, highlight=False)
        return 2
    return 0
