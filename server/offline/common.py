"""Shared plumbing of the offline tools: opening the server's database read-only, its pseudonymizer and
tombstones, and the config/catalog a command runs against (so every command resolves them the same way).
"""
from __future__ import annotations

import json
import math
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.base.catalog import Catalog, CatalogError, catalog_from_config, load_catalog
from server.base.config import ConfigError, PrivacyConfig, load_config
from server.store.privacy import META_FINGERPRINT, Pseudonymizer
from server.store.pseudonym_key import ENV_VAR, check_fingerprint, find_key

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
R = TypeVar("R")


class OfflineError(ValueError):
    """A problem with the offline tools' input (missing file, missing table, bad option, no data); the
    message names what is wrong and what is expected."""


def demo_hint(command: str) -> str:
    """What to run to try ``command`` (e.g. ``onramp report funnel``) when the database has too little in it.

    >>> demo_hint("onramp replay")
    'to try onramp replay on synthetic data: onramp demo-data --db demo.db, then onramp replay --db demo.db'
    """
    return f"to try {command} on synthetic data: onramp demo-data --db demo.db, then {command} --db demo.db"


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the server's SQLite database (OfflineError if it does not exist)."""
    p = Path(path)
    if not p.is_file():
        raise OfflineError(f"--db: no database file at {p}")
    conn = sqlite3.connect(f"file:{p.absolute()}?mode=ro", uri=True, check_same_thread=False)
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


def database_file(conn: sqlite3.Connection) -> str:
    """The file of the connection's main database."""
    return next(row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main")


def pseudonymizer_for(conn: sqlite3.Connection, privacy: PrivacyConfig | None = None) -> Pseudonymizer:
    """The database's pseudonymizer, its key found as the server finds it (server/store/pseudonym_key.py: the
    environment, ``privacy``'s key, the key file beside the database), or still in ``meta`` when no server
    of this version has opened the database yet. OfflineError when there is none (a new key would not match
    the database's pseudonyms); PseudonymKeyError when the key does not match the database's fingerprint."""
    privacy = privacy if privacy is not None else PrivacyConfig()
    db = database_file(conn)

    def meta_get(key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]
    meta = meta_get if has_table(conn, "meta") else (lambda _key: None)
    source = find_key(privacy, db, meta_get=meta)
    if source is None:
        raise OfflineError(f"no pseudonym key for {db}: no key file {privacy.key_file(db)}, no {ENV_VAR} and no "
                           "[privacy] pseudonym_key; put the server's key file beside the database, or pass the "
                           "server's config (--config)")
    return check_fingerprint(source, meta(META_FINGERPRINT), db, privacy.key_file(db))


@dataclass(frozen=True, slots=True)
class Setup:
    """What a command runs against: the catalog and the ``[privacy]`` section (where the pseudonym key is)."""

    catalog: Catalog
    privacy: PrivacyConfig


def load_setup(config_path: str | Path | None) -> Setup:
    """The catalog and ``[privacy]`` section of a config file (None: the shipped demo catalog, defaults)."""
    if config_path is None:
        return Setup(load_catalog(None), PrivacyConfig())
    config = load_config(config_path)
    return Setup(catalog_from_config(config.raw), config.privacy)


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


def print_report(command: str, build: Callable[[], R], render: Callable[[R, Any], None], as_json: bool) -> R | None:
    """Build a report (``build``) and print it on stdout: ``render(report, console)``, or its ``to_dict()`` as
    JSON with ``as_json``. On bad input (a config, catalog, file or argument error) print ``<command>: <error>``
    on stderr instead and return None."""
    from server.offline.console import new_console

    try:
        rep = build()
    except (OfflineError, ConfigError, CatalogError, OSError, ValueError) as exc:
        new_console(stderr=True).print(f"{command}: {exc}", markup=False, highlight=False)
        return None
    if as_json:
        sys.stdout.write(json.dumps(rep.to_dict(), indent=2) + "\n")  # type: ignore[attr-defined]
    else:
        render(rep, new_console())
    return rep
