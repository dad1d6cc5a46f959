"""The consoles and tables of the offline tools' output (rich), made so that no cell is ever cut short.

On a terminal, output fits the terminal's width and a cell too long for its column wraps, a word longer than
the column folds onto the next line, instead of ending in "…". Piped or redirected output has no width
limit: every table row stays on one line, whole, for files, ``grep`` and ``less -S``.
"""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

UNLIMITED_WIDTH = 10_000  # columns of a console that is not a terminal: wider than any report line


def new_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width on a terminal, else :data:`UNLIMITED_WIDTH`."""
    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=UNLIMITED_WIDTH)


class ReportTable(Table):
    """A rich table whose columns fold long cells instead of truncating them (``overflow="fold"``).

    >>> t = ReportTable()
    >>> t.add_column("step")
    >>> t.columns[0].overflow
    'fold'
    """

    def add_column(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)
