"""A benchmark-only decision log in a separate process, to measure what moving the decision row off the
server's GIL would give (docs/benchmarks.md, "What meeting the speed targets would take", way out 1).

:class:`OffloadLogger` replaces :class:`server.store.decision_log.DecisionLogger` in :mod:`bench.floor_server`
(``--variant offload``): the event loop encodes each decision row as Onramp does (:meth:`Decision.flat`),
sends the rows waiting together down a pipe to a log process (``python -m bench.offload_log --db PATH``), and
answers once that process has committed them (WAL, ``synchronous=full``) to its own SQLite file and written
back an acknowledgement, which the loop reads with ``add_reader``: the same promise as Onramp's (an answered
decision is on disk), one batch in flight at a time as in Onramp's group commit, and no writer thread of the
server's own taking part. Not a server feature: erasure, export, restart and the reward join do not see
these rows.
"""
from __future__ import annotations

import argparse
import asyncio
import marshal
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

from server.store.decision_log import Decision, DecisionLogger
from server.store.sqlite import DECISION_COLUMNS, SqliteStore, insert_flat

_LEN = struct.Struct("<I")


def child_path(main_db: str) -> str:
    """Where the log process keeps the rows: beside the server's database."""
    return f"{main_db}.offload-decisions.db"


class OffloadLogger:
    """Drop-in for :class:`DecisionLogger` (same :meth:`log`) writing through a log process."""

    def __init__(self, db_path: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.offload_log", "--db", db_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out: BinaryIO = self.proc.stdin
        self._ack_fd = self.proc.stdout.fileno()
        self._batch: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._in_flight: list[tuple[tuple[Any, ...], asyncio.Future[None]]] | None = None
        self._scheduled = False
        self._reader_on = False
        self.batches = 0

    def log(self, decision: Decision) -> asyncio.Future[None]:
        """Queue ``decision``; the future resolves once the log process has committed its row."""
        loop = asyncio.get_running_loop()
        if not self._reader_on:
            loop.add_reader(self._ack_fd, self._on_ack)
            self._reader_on = True
        fut: asyncio.Future[None] = loop.create_future()
        self._batch.append((decision.flat(), fut))
        if not self._scheduled and self._in_flight is None:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_flight is not None or not self._batch:
            return
        batch, self._batch = self._batch, []
        body = marshal.dumps([v for row, _ in batch for v in row])
        self._out.write(_LEN.pack(len(body)) + body)
        self._out.flush()
        self._in_flight = batch
        self.batches += 1

    def _on_ack(self) -> None:
        data = os.read(self._ack_fd, 4096)
        if not data:  # the log process is gone: every waiting caller fails
            asyncio.get_running_loop().remove_reader(self._ack_fd)
            for _, fut in (self._in_flight or []) + self._batch:
                if not fut.done():
                    fut.set_exception(RuntimeError("the decision log process exited"))
            self._in_flight, self._batch = None, []
            return
        batch, self._in_flight = self._in_flight or [], None  # one ack byte per batch, one batch in flight
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
        if self._batch:
            self._flush()


def install() -> None:
    """Make every :class:`DecisionLogger` created from now on log through an :class:`OffloadLogger` (its
    process started with the engine, beside the server's database)."""
    original_init = DecisionLogger.__init__

    def init(self: DecisionLogger, writer: Any) -> None:
        original_init(self, writer)
        self._offload = OffloadLogger(child_path(writer.store.path))  # type: ignore[attr-defined]

    DecisionLogger.__init__ = init  # type: ignore[method-assign]
    DecisionLogger.log = lambda self, decision: self._offload.log(decision)  # type: ignore[method-assign]


def serve_log(db: Path, inp: BinaryIO, out: BinaryIO) -> int:
    """The log process: read batches of encoded rows from ``inp``, commit each in one transaction, ack one
    byte per batch on ``out``; returns the batches committed at end of input."""
    store = SqliteStore(db)
    width = len(DECISION_COLUMNS)
    n = 0
    try:
        while True:
            head = inp.read(_LEN.size)
            if len(head) < _LEN.size:
                return n
            flat = marshal.loads(inp.read(_LEN.unpack(head)[0]))
            if len(flat) % width:
                raise ValueError(f"batch of {len(flat)} values is not rows of {width}")
            store.begin()
            insert_flat(store.conn, "decisions", DECISION_COLUMNS, flat)
            store.commit()
            out.write(b"\x01")
            out.flush()
            n += 1
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the log process."""
    ap = argparse.ArgumentParser(prog="python -m bench.offload_log", description=__doc__)
    ap.add_argument("--db", required=True, type=Path)
    a = ap.parse_args(argv)
    serve_log(a.db, sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
