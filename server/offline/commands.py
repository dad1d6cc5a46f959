"""Registers the offline subcommands on the ``onramp`` command: ``replay``, ``export`` and
``report funnel|experiments`` (see :func:`server.ops.cli.add_command`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``replay``, ``export`` and ``report`` to the ``onramp`` subparsers."""
    from server.offline.export import add_export_parser
    from server.offline.replay import add_replay_parser
    from server.offline.reports import add_report_parser

    add_replay_parser(subparsers)
    add_export_parser(subparsers)
    add_report_parser(subparsers)
