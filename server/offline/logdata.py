"""The decision log as numpy arrays: one SQL query (decisions LEFT JOIN outcomes, erased users left out)
or one exported Parquet file, with the JSON columns (context, eligible, probabilities) decoded in bulk by
pyarrow's JSON reader instead of one ``json.loads`` per row.

Actions are indexed in the catalog's generic order (:func:`server.offline.common.generic_order`), followed by
any step id the log mentions that the catalog does not know (sorted), so index 0 is the first core step.
"""
from __future__ import annotations

import io
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from server.offline.common import OfflineError, has_table, open_readonly

RAW_COLUMNS = ("decision_id", "user_pseudo", "timestamp_ms", "surface", "step_id", "propensity", "reason",
               "policy_version", "experiment", "arm", "context", "eligible", "probabilities", "reward_deadline_ms",
               "reward", "outcome_source", "outcome", "outcome_ms")

_SELECT = """
SELECT d.decision_id, d.user_pseudo, d.timestamp_ms, d.surface, d.step_id, d.propensity, d.reason,
       d.policy_version, d.experiment, d.arm, d.context, d.eligible, d.probabilities, d.reward_deadline_ms,
       o.reward, o.source, o.outcome, o.timestamp_ms
FROM decisions d LEFT JOIN outcomes o ON o.decision_id = d.decision_id
WHERE d.user_pseudo NOT IN (SELECT user_pseudo FROM tombstones)
ORDER BY d.timestamp_ms, d.decision_id
"""

_TYPES = {"timestamp_ms": pa.int64(), "propensity": pa.float64(), "reward_deadline_ms": pa.int64(),
          "reward": pa.float64(), "outcome_ms": pa.int64()}


@dataclass
class DecisionArrays:
    """The decision log, one entry per logged decision in time order.

    ``action`` is the logged step's index in ``action_ids`` (-1 when no step was shown), ``logging_dist``
    the logged probability of every action (0 off the eligible set), ``eligible`` the eligible set as a
    mask, ``context`` the logged context features in ``feature_names`` order (absent = 0), ``reward`` NaN
    when the decision has no outcome yet.
    """

    action_ids: tuple[str, ...]
    feature_names: tuple[str, ...]
    decision_id: np.ndarray
    user_pseudo: np.ndarray
    timestamp_ms: np.ndarray
    reason: np.ndarray
    policy_version: np.ndarray
    experiment: np.ndarray
    arm: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    context: np.ndarray
    eligible: np.ndarray
    logging_dist: np.ndarray
    reward: np.ndarray
    outcome_source: np.ndarray
    raw: pa.Table

    @property
    def n(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_actions(self) -> int:
        return len(self.action_ids)

    @property
    def has_step(self) -> np.ndarray:
        return self.action >= 0

    @property
    def has_outcome(self) -> np.ndarray:
        return ~np.isnan(self.reward)


def read_raw_sqlite(conn: sqlite3.Connection) -> pa.Table:
    """Decisions joined with their outcomes (tombstoned users left out), in time order, as an Arrow table
    of :data:`RAW_COLUMNS` (JSON columns still text)."""
    for table in ("decisions", "outcomes", "tombstones"):
        if not has_table(conn, table):
            raise OfflineError(f"--db: the database has no {table} table (is it an Onramp server database?)")
    rows = conn.execute(_SELECT).fetchall()
    cols = list(zip(*rows)) if rows else [() for _ in RAW_COLUMNS]
    return pa.table({name: pa.array(col, type=_TYPES.get(name, pa.string())) for name, col in zip(RAW_COLUMNS, cols)})


def read_raw_parquet(path: str | Path) -> pa.Table:
    """An exported decisions Parquet file (``onramp export --format parquet``) as the same Arrow table."""
    p = Path(path)
    if not p.is_file():
        raise OfflineError(f"--parquet: no file at {p}")
    table = pq.read_table(p)
    missing = [c for c in ("decision_id", "timestamp_ms", "step_id", "propensity", "reason", "context", "eligible",
                           "probabilities", "reward") if c not in table.column_names]
    if missing:
        raise OfflineError(f"--parquet: {p} lacks decision-log columns {missing} (export it with onramp export)")
    cols = {}
    for name in RAW_COLUMNS:
        if name in table.column_names:
            cols[name] = table.column(name).cast(_TYPES.get(name, pa.string()))
        else:
            cols[name] = pa.nulls(table.num_rows, type=_TYPES.get(name, pa.string()))
    out = pa.table(cols)
    idx = pc.sort_indices(out, sort_keys=[("timestamp_ms", "ascending"), ("decision_id", "ascending")])
    return out.take(idx)


def _json_lines(raw: pa.Table) -> pa.Table:
    """Decode context, eligible and probabilities of every row with one pyarrow JSON read."""
    def text(name: str, empty: str) -> pa.ChunkedArray:
        col = raw.column(name)
        col = pc.if_else(pc.or_kleene(pc.is_null(col), pc.equal(col, "")), pa.scalar(empty), col)
        return col

    line = pc.binary_join_element_wise('{"c":', text("context", "{}"), ',"e":', text("eligible", "[]"), ',"p":',
                                       text("probabilities", "{}"), "}", "")
    body = "\n".join(line.to_pylist()).encode("utf-8") if raw.num_rows else b""
    if not body:
        return pa.table({"c": pa.array([], pa.struct([])), "e": pa.array([], pa.list_(pa.string())),
                         "p": pa.array([], pa.struct([]))})
    try:
        parsed = pj.read_json(io.BytesIO(body), read_options=pj.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as exc:
        raise OfflineError(f"decision log: a context, eligible or probabilities value is not valid JSON ({exc})") from None
    return parsed


def _struct_fields(col: pa.ChunkedArray) -> list[str]:
    t = col.type
    return [t.field(i).name for i in range(t.num_fields)] if pa.types.is_struct(t) else []


def _field_numpy(col: pa.ChunkedArray, name: str, what: str) -> np.ndarray:
    child = pc.struct_field(col, name)
    try:
        child = pc.cast(child, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise OfflineError(f"decision log: {what} {name!r} must hold numbers (got {child.type})") from None
    return child.fill_null(0.0).to_numpy()


def decode(raw: pa.Table, catalog_actions: tuple[str, ...]) -> DecisionArrays:
    """Turn a raw decision-log table into :class:`DecisionArrays` (actions: ``catalog_actions`` first)."""
    n = raw.num_rows
    parsed = _json_lines(raw)
    ctx_col, el_col, p_col = parsed.column("c"), parsed.column("e"), parsed.column("p")
    flat_el = pc.list_flatten(el_col) if n else pa.array([], pa.string())
    if not pa.types.is_list(el_col.type) and n:
        raise OfflineError("decision log: eligible must be a JSON array of step ids")
    mentioned = set(pc.unique(flat_el).to_pylist()) | set(_struct_fields(p_col))
    mentioned |= set(v for v in pc.unique(raw.column("step_id")).to_pylist() if v)
    mentioned.discard(None)
    extra = tuple(sorted(mentioned - set(catalog_actions)))
    actions = tuple(catalog_actions) + extra
    k = len(actions)
    value_set = pa.array(actions, pa.string())

    step = raw.column("step_id")
    action = pc.index_in(step, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp)

    eligible = np.zeros((n, k), dtype=bool)
    if n and len(flat_el):
        lengths = pc.list_value_length(el_col).fill_null(0).to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(n), lengths)
        cols = pc.index_in(flat_el, value_set=value_set).to_numpy(zero_copy_only=False)
        eligible[rows, cols.astype(np.intp)] = True
    dist = np.zeros((n, k))
    for name in _struct_fields(p_col):
        j = actions.index(name)
        dist[:, j] = _field_numpy(p_col, name, "probability of step")
        eligible[:, j] |= pc.is_valid(pc.struct_field(p_col, name)).to_numpy(zero_copy_only=False)
    propensity = raw.column("propensity").fill_null(1.0).to_numpy()
    stepped = np.flatnonzero(action >= 0)
    # a decision logged without its probabilities: the logged propensity is all that is known
    no_dist = stepped[dist[stepped].sum(axis=1) == 0]
    dist[no_dist, action[no_dist]] = propensity[no_dist]
    eligible[stepped, action[stepped]] = True

    names = _struct_fields(ctx_col)
    context = np.zeros((n, len(names)))
    for j, name in enumerate(names):
        context[:, j] = _field_numpy(ctx_col, name, "context feature")
    if not np.isfinite(context).all():
        raise OfflineError("decision log: context features must be finite numbers")

    def strings(name: str) -> np.ndarray:
        return np.asarray(raw.column(name).fill_null("").to_numpy(zero_copy_only=False), dtype=object)

    reward = raw.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
    return DecisionArrays(
        action_ids=actions, feature_names=tuple(names), decision_id=strings("decision_id"),
        user_pseudo=strings("user_pseudo"), timestamp_ms=raw.column("timestamp_ms").fill_null(0).to_numpy(),
        reason=strings("reason"), policy_version=strings("policy_version"), experiment=strings("experiment"),
        arm=strings("arm"), action=action, propensity=propensity, context=context, eligible=eligible,
        logging_dist=dist, reward=reward, outcome_source=strings("outcome_source"), raw=raw)


def load_decisions(db: str | Path | None = None, parquet: str | Path | None = None,
                   catalog_actions: tuple[str, ...] = ()) -> DecisionArrays:
    """The decision log of a server database (``db``) or of an exported Parquet file (``parquet``)."""
    if (db is None) == (parquet is None):
        raise OfflineError("give exactly one of --db (SQLite database) or --parquet (exported decisions)")
    if db is not None:
        conn = open_readonly(db)
        try:
            raw = read_raw_sqlite(conn)
        finally:
            conn.close()
    else:
        raw = read_raw_parquet(parquet)  # type: ignore[arg-type]
    return decode(raw, catalog_actions)
