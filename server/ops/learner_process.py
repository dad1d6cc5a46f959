"""The learner process of ``onramp serve --workers N``: ``python -m server.ops.learner_process --port P ...`` (the
serve flags), started by the supervisor (server/ops/supervisor.py) beside the workers.

It opens the same database with its own writer, runs the :class:`~server.learn.learner.Learner` (the only place
models learn: rewards joined, the bandit and the River models updated, snapshots published), reports ready over
its link once its state is loaded, and on SIGTERM finishes its round, saves its state and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from server.ops.supervisor import SupervisorLink

log = logging.getLogger("onramp.learner")


async def run_learner(config: object, ready: Callable[[], None] | None = None) -> int:
    """Learn from the database of ``config`` until SIGTERM/SIGINT; returns the exit code."""
    from server.base.catalog import catalog_from_config
    from server.base.config import Config
    from server.learn.learner import Learner
    from server.store.pseudonym_key import open_pseudonymizer
    from server.store.sqlite import open_store
    from server.store.writer import Writer

    assert isinstance(config, Config)
    catalog = catalog_from_config(config.raw)
    store = open_store(config.server.db_path, synchronous=config.ingest.synchronous)
    writer = Writer(store, max_group_weight=config.ingest.writer_max_events, name="onramp-learner-writer")
    learner: Learner | None = None
    try:
        pseudonymizer = open_pseudonymizer(store, config.privacy)
        writer.start()
        learner = Learner(store, writer, catalog, pseudonymizer.pseudonymize)
        learner.open()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = loop.create_task(learner.run(), name="onramp-learner")
        log.info("learner running on %s (snapshot %d)", config.server.db_path, learner.version)
        if ready is not None:
            ready()
        await stop.wait()
        learner.stop()
        await task
        return 0
    finally:
        if learner is not None:
            learner.close()
        await asyncio.to_thread(writer.stop)
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the learner; returns the exit code (0 after a graceful stop, 2 for a config error, 1 otherwise)."""
    link = SupervisorLink.from_env()
    if link is not None:
        link.watch_parent()
    from server.base.config import ConfigError
    from server.base.logging_setup import LoggingConfig, configure_logging
    from server.ops import cli

    parser = argparse.ArgumentParser(prog="python -m server.ops.learner_process", description=__doc__)
    cli.add_serve_arguments(parser)
    args = parser.parse_args(argv)
    config = cli.child_config(args, link)
    if isinstance(config, int):
        return config
    try:
        configure_logging(LoggingConfig.from_mapping(config.raw.get("logging")))
        return asyncio.run(run_learner(config, (lambda: link.ready()) if link is not None else None))
    except (ConfigError, ValueError) as exc:
        if link is not None:
            link.failed(f"config error: {exc}", 2)
        print(f"onramp: config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which restarts the learner
        log.exception("learner failed")
        if link is not None:
            link.failed(f"learner failed: {exc}", 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
