"""``onramp demo-data``: write a synthetic product population to a new database, so that the offline tools
(``onramp replay``, ``onramp export``, ``onramp report funnel|experiments``) can be tried before a server
has collected anything.

The population is :func:`server.offline.synth.generate_population` on the demo catalog: users who sign up
over four weeks from 2024-01-01, walk the core flow, get personalized steps by the arm of the demo
experiment (tailored, generic or holdout), come back or not, answer surveys; a few are erased. It is written
with the server's own schema and pseudonyms, its key in ``<db>.key`` as a server would keep it.
"""
from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from server.offline.common import OfflineError
from server.offline.console import new_console
from server.offline.synth import PopulationSpec, generate_population

DEFAULT_USERS = 3000
# Files a server keeps beside its database; --force removes them with it (a stale key or checkpoint of the
# replaced database must not meet the new one).
COMPANIONS = ("-wal", "-shm", ".key", ".checkpoint")


def companions(db: Path) -> list[Path]:
    """The files beside ``db`` that belong to it: its WAL and shared memory, key file and checkpoint."""
    return [db.with_name(db.name + suffix) for suffix in COMPANIONS]


def prepare(db: Path, force: bool) -> None:
    """Make room for a new database at ``db``: OfflineError naming the file and ``--force`` when a database
    (a non-empty file) or a key file is there; with ``force``, remove them."""
    if db.is_dir():
        raise OfflineError(f"--db {db}: is a directory; name a database file (e.g. {db / 'demo.db'})")
    taken = [p for p in (db, *companions(db)) if p.exists() and (p != db or p.stat().st_size > 0)]
    if taken and not force:
        what = "a database already exists there" if db in taken else f"{taken[0]} of an earlier database is there"
        raise OfflineError(f"--db {db}: {what}; pass --force to replace it with demo data (its key file and "
                           "checkpoint go too), or name a new file")
    for p in (db, *companions(db)):
        p.unlink(missing_ok=True)


def counts(db: Path) -> dict[str, int]:
    """Rows per table of the new database (events, decisions, outcomes, tombstones)."""
    conn = sqlite3.connect(db)  # read-write, so that closing it, the last connection, folds the WAL back in
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed table names
                for t in ("events", "decisions", "outcomes", "tombstones")}
    finally:
        conn.close()


def add_demo_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """Register ``onramp demo-data``."""
    p = subparsers.add_parser(
        "demo-data", help="write a synthetic population (events, decisions, outcomes) to a new database",
        description="Write a synthetic product population on the demo catalog (signups over four weeks from "
                    "2024-01-01, the core flow, personalized steps per experiment arm, retention, surveys, a few "
                    "erased users) to a new database, to try onramp replay, export and report on.")
    p.add_argument("--db", required=True, metavar="PATH", help="the database to create (its key goes to PATH.key)")
    p.add_argument("--users", type=int, default=DEFAULT_USERS, metavar="N",
                   help=f"users in the population (default {DEFAULT_USERS})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed, the same data")
    p.add_argument("--force", action="store_true",
                   help="replace a database already at PATH (with its key file and checkpoint)")
    p.set_defaults(func=cmd_demo_data)
    return p


def cmd_demo_data(args: argparse.Namespace) -> int:
    """``onramp demo-data``: 0 when written, 2 on bad input (the message names the option)."""
    db = Path(args.db)
    try:
        if args.users < 1:
            raise OfflineError(f"--users: must be at least 1 (got {args.users})")
        prepare(db, args.force)
        truth = generate_population(db, PopulationSpec(n_users=args.users, seed=args.seed))
    except (OfflineError, OSError, ValueError) as exc:
        new_console(stderr=True).print(f"onramp demo-data: {exc}", markup=False, highlight=False)
        return 2
    n = counts(db)
    out = new_console()
    out.print(f"{db}: {len(truth.subjects)} synthetic users ({len(truth.erased_subjects)} of them erased), "
              f"{n['events']} events, {n['decisions']} decisions, {n['outcomes']} outcomes; key file {db}.key",
              markup=False, highlight=False)
    out.print(f"Next: onramp report funnel --db {db}; onramp report experiments --db {db}; "
              f"onramp replay --db {db}; onramp export --db {db} --format parquet --out export/",
              markup=False, highlight=False)
    return 0
