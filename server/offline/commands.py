"""Registers the offline subcommands on the ``onramp`` command: ``replay``, ``export``,
``report funnel|experiments|rules`` and ``demo-data`` (see :func:`server.ops.cli.add_command`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``replay``, ``export``, ``report`` and ``demo-data`` to the ``onramp`` subparsers."""
    from server.offline.demo_data import add_demo_data_parser
    from server.offline.export import add_export_parser
    from server.offline.replay import add_replay_parser
    from server.offline.reports import add_report_parser

    add_replay_parser(subparsers)
    add_export_parser(subparsers)
    add_report_parser(subparsers)
    add_demo_data_parser(subparsers)
