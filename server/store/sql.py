"""SQL building blocks of the SQLite store: multi-row INSERTs with few distinct statements, and ``IN (...)``
lists in chunks of bound parameters."""
from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

_CHUNK = 5000  # bound parameters per IN (...) query
_INSERT_SIZES = (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)  # rows per INSERT statement (few distinct statements to cache)
_MAX_EXACT_ROWS = 1024  # a statement of exactly n rows (14 columns: 14,336 parameters, under SQLite's 32,766)
_MAX_EXACT_SIZES = 6  # distinct exact sizes kept per table (a prepared statement holds ~1.9 KB per row: <= ~11 MiB)
_EXACT_AFTER = 3  # an exact size gets its own statement once this many inserts had that many rows


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...], n_rows: int, verb: str = "INSERT") -> str:
    one = f"({', '.join('?' * len(columns))})"
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([one] * n_rows)


class _ExactSizes:
    """Which row counts recur for a table (a client sending batches of 200 makes groups of 200, 400, ...): those
    are inserted with one statement of exactly that many rows. Preparing such a statement costs about as much
    as inserting its rows (~15 us per row), so a count gets one only after it recurred, and few are kept."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], int] = {}
        self.exact: dict[str, set[int]] = {}

    def use(self, table: str, n: int) -> bool:
        sizes = self.exact.setdefault(table, set())
        if n in sizes:
            return True
        if n > _MAX_EXACT_ROWS or n in _INSERT_SIZES or len(sizes) >= _MAX_EXACT_SIZES:
            return False
        key = (table, n)
        count = self.seen.get(key, 0) + 1
        if count < _EXACT_AFTER:
            if len(self.seen) < 4096:
                self.seen[key] = count
            return False
        self.seen.pop(key, None)
        sizes.add(n)
        return True


_exact_sizes = _ExactSizes()  # used from the writer thread only


def insert_flat(conn: sqlite3.Connection, table: str, columns: tuple[str, ...], flat: Sequence[Any],
                verb: str = "INSERT") -> None:
    """Insert ``len(flat) // len(columns)`` rows (their values one after the other in ``flat``), in order, with
    one INSERT of exactly that many rows when that count recurs (:class:`_ExactSizes`), else few multi-row
    INSERTs of 512, 256, ... 1 rows. Each statement gives up and re-takes the GIL, which under load from the
    event loop thread costs far more than the insert itself (the writer thread then waits behind the loop);
    that is also why this is not executemany, which steps SQLite once per row. ``verb`` may be e.g.
    "INSERT OR REPLACE"."""
    width = len(columns)
    n, i = len(flat) // width, 0
    if n > 1 and _exact_sizes.use(table, n):
        conn.execute(_insert_sql(table, columns, n, verb), flat)
        return
    for rows in _INSERT_SIZES:
        while n - i >= rows:
            conn.execute(_insert_sql(table, columns, rows, verb), flat[i * width:(i + rows) * width])
            i += rows


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)
