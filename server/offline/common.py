"""Shared plumbing of the offline tools: opening the server's database read-only, its pseudonymizer and
tombstones, and the config/catalog a command runs against (so every command resolves them the same way).
"""
from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.catalog import Catalog, catalog_from_config, load_catalog
from server.config import load_config
from server.privacy import META_KEY, Pseudonymizer

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


class OfflineError(ValueError):
    """A problem with the offline tools' input (missing file, missing table, bad option); the message
    names what is wrong and what is expected."""


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the server's SQLite database (OfflineError if it does not exist)."""
    p = Path(path)
    if not p.is_file():
        raise OfflineError(f"--db: no database file at {p}")
    conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


def has_table(conn: sqlite3.Connection, table: str) -> bool:
    """Whether the database has ``table``."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone() is not None


def tombstones(conn: sqlite3.Connection) -> set[str]:
    """Pseudonyms of erased users (never exported, never reported)."""
    if not has_table(conn, "tombstones"):
        return set()
    return {row[0] for row in conn.execute("SELECT user_pseudo FROM tombstones")}


def pseudonymizer_for(conn: sqlite3.Connection, configured_key: str | None = None) -> Pseudonymizer:
    """The database's pseudonymizer (:mod:`server.privacy`): the configured ``[privacy] pseudonym_key``,
    else the key the server generated and kept in ``meta``. OfflineError when there is neither (a
    database the server never started on has no key, and a new one would not match its pseudonyms)."""
    if configured_key:
        return Pseudonymizer(configured_key.encode("utf-8"))
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone() if has_table(conn, "meta") else None
    if row is None:
        raise OfflineError("the database has no pseudonym key in its meta table; pass the server's config "
                           "(--config) with [privacy] pseudonym_key")
    return Pseudonymizer(bytes.fromhex(row[0]))


@dataclass(frozen=True, slots=True)
class Setup:
    """What a command runs against: the catalog and the configured pseudonym key (if any)."""

    catalog: Catalog
    pseudonym_key: str | None


def load_setup(config_path: str | Path | None) -> Setup:
    """The catalog and privacy key of a config file (None: the shipped demo catalog, no key)."""
    if config_path is None:
        return Setup(load_catalog(None), None)
    config = load_config(config_path)
    return Setup(catalog_from_config(config.raw), config.privacy.pseudonym_key)


def generic_order(catalog: Catalog) -> tuple[str, ...]:
    """The generic flow's order: core steps in their static order, then personalized steps in catalog
    order (docs/catalog.md, experiment kind ``generic``). Action indices of the offline tools follow it."""
    return tuple(catalog.core_order) + tuple(s.id for s in catalog.personalized_steps)


def json_clean(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, so it serialises as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_clean(x) for k, x in value.items()}
    if isinstance(value, list):
        return [json_clean(x) for x in value]
    return value
