"""The ``onramp`` command. ``onramp serve`` runs the gRPC service; more subcommands (replay, export,
report) register themselves through :func:`add_command`.

SIGINT/SIGTERM stop the server gracefully: health turns NOT_SERVING, no new calls are accepted, in-flight
calls finish, the writer commits everything queued, and the process exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from server.base.config import Config, ConfigError, load_config
from server.base.logging_setup import LoggingConfig, configure_logging

if TYPE_CHECKING:
    from server.ops.supervisor import SupervisorLink

log = logging.getLogger("onramp.cli")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_DB = "./onramp.db"
SHUTDOWN_GRACE_S = 10.0

Command = Callable[[argparse.Namespace], int]
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []  # type: ignore[type-arg]


def add_command(register: Callable[[argparse._SubParsersAction], None]) -> None:  # type: ignore[type-arg]
    """Let another module add a subcommand: ``register(subparsers)`` must call ``subparsers.add_parser(...)``
    and ``set_defaults(func=...)`` where ``func(args) -> exit code``."""
    _EXTRA_COMMANDS.append(register)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="onramp",
        description="Onramp: adaptive onboarding recommender (gRPC service for behavioral events and next-step "
                    "decisions).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    serve = sub.add_parser(
        "serve", help="run the gRPC service",
        description="Run the Onramp gRPC service until SIGINT/SIGTERM (then stop gracefully and exit 0). "
                    "Flags override the [server] section of the config file.")
    add_serve_arguments(serve)
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="gRPC worker processes sharing the port, started and restarted by one supervisor "
                            "process, with a learner process beside them; 0 = one per core (default: [server] "
                            "workers, else 0); 1 = one process that serves and learns (docs/operations.md, "
                            "\"Worker processes\")")
    serve.set_defaults(func=cmd_serve)
    hash_key = sub.add_parser(
        "hash-key", help="print the [auth] hash of an API key read from stdin (or of a new one: --generate)",
        description="Print the config hash of an API key read from stdin (first line), for [auth] keys. "
                    "With --generate, make a new random key and print it once with its hash.")
    hash_key.add_argument("--scheme", choices=("sha256", "pbkdf2", "scrypt"), default="sha256",
                          help="sha256 for generated random keys (default); pbkdf2/scrypt for human-chosen keys")
    hash_key.add_argument("--generate", action="store_true", help="make a new random key instead of reading one")
    hash_key.set_defaults(func=cmd_hash_key)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``onramp serve`` shares with its workers (``python -m server.ops.worker``)."""
    parser.add_argument("--host", default=None,
                        help=f"address to listen on; non-loopback addresses need [auth] keys "
                             f"(default: [server] host, else {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None,
                        help=f"TCP port to listen on, 0 = any free port (default: [server] port, else {DEFAULT_PORT})")
    parser.add_argument("--db", default=None, metavar="PATH",
                        help=f"SQLite database file, created if missing (default: [server] db_path, else {DEFAULT_DB})")
    parser.add_argument("--config", default=None, metavar="TOML",
                        help="config file (server, privacy, ingest, catalog, guardrails, auth, ... sections); "
                             "default: none = built-in defaults and the shipped demo catalog")
    parser.add_argument("--allow-insecure-no-auth", action="store_true",
                        help="listen on a non-loopback address without [auth] keys (anyone reaching the port "
                             "can read and erase user data; see docs/security.md)")


def resolve_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command-line flags applied."""
    config = load_config(args.config)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be an integer from 0 to 65535 (got {args.port})")
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers: must be an integer >= 0, 0 = one per core (got {workers})")
    return config.with_server(host=args.host, port=args.port, db_path=args.db, workers=workers)


# The garbage collector's thresholds while serving (Python's default: 700, 10, 10). A call allocates a few
# hundred tracked objects, nearly all freed by reference counting within the call, and grpc's cython layer
# leaves a few reference cycles per call: at the default, a young collection ran every few calls and found
# mostly live in-flight calls' objects, promoting them, and the older generations were traversed again every
# few seconds. A full collection walks every object that lived long (cached profiles and contexts, the learner's
# pending decisions with --workers 1) and stalled the event loop for 10-50 ms of CPU every 3-5 s. Measured at
# 1000 GetNextStep/s with one worker (gc.callbacks, thread CPU, a loaded 2-core machine): collection cost about
# 24 us a call at the default and about 2 us with the young thresholds 3000 and 20; a full collection after 100
# middle ones instead of 10 ran none in 10-15 s. Garbage in reference cycles that lived that long is freed later.
GC_THRESHOLDS = (3000, 20, 100)


def child_config(args: argparse.Namespace, link: "SupervisorLink | None") -> Config | int:
    """The config of a supervisor's child (a worker, the learner), or exit code 2 after saying why it is wrong
    (to the supervisor over ``link``, else on stderr)."""
    try:
        return resolve_config(args)
    except (ConfigError, ValueError) as exc:
        if link is None:
            print(f"onramp: config error: {exc}", file=sys.stderr)
        else:
            link.failed(f"config error: {exc}", 2)
        return 2


async def serve(config: Config, stop_signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
                allow_insecure_no_auth: bool = False, *, reuse_port: bool = False,
                ready: Callable[[int], None] | None = None, name: str = "onramp", run_learner: bool = True) -> int:
    """Run the server in this process until one of ``stop_signals`` arrives, then stop gracefully.

    ``reuse_port`` shares the port with the other workers of a supervisor (which checked it is free);
    ``ready(port)`` is called once the server serves."""
    from server.ops.app import build_server
    from server.ops.ports import check_port_free

    if not reuse_port:
        check_port_free(config.server.host, config.server.port)  # before the database and key file are created
    server = build_server(config, allow_insecure_no_auth=allow_insecure_no_auth, reuse_port=reuse_port,
                          run_learner=run_learner)
    try:
        await server.start()
    except BaseException:
        await server.stop(None)
        raise
    # The startup heap (catalog, models, modules) lives as long as the server: out of the garbage collector's
    # reach, full collections under load stall the event loop less.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    log.info("%s serving on %s:%d (db %s, config %s, catalog %s)", name, config.server.host, server.port,
             config.server.db_path, config.source, server.runtime.catalog.version)
    if ready is not None:
        ready(server.port)
    await stop.wait()
    log.info("stopping: finishing in-flight calls, flushing the writer")
    for sig in stop_signals:  # a second signal while draining must not interrupt the flush with a traceback
        loop.remove_signal_handler(sig)
        loop.add_signal_handler(sig, _already_stopping, sig)
    try:
        await server.stop(SHUTDOWN_GRACE_S)
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def _already_stopping(sig: int) -> None:
    """A stop signal received while the server is already stopping: say so, keep draining."""
    log.warning("%s received while stopping; still finishing in-flight calls and flushing",
                signal.Signals(sig).name)


def cmd_serve(args: argparse.Namespace) -> int:
    """``onramp serve``: with 1 worker this process is the server; with more, it is their supervisor
    (server/ops/supervisor.py), which never imports grpc."""
    from server.ops.supervisor import resolve_workers, run_serve

    try:
        config = resolve_config(args)
        workers = resolve_workers(config.server.workers)
    except (ConfigError, ValueError) as exc:
        print(f"onramp: config error: {exc}", file=sys.stderr)
        return 2
    if workers == 1:
        return serve_here(config, allow_insecure_no_auth=args.allow_insecure_no_auth)
    try:
        configure_logging(LoggingConfig.from_mapping(config.raw.get("logging")))
        return run_serve(config, args.config, allow_insecure_no_auth=args.allow_insecure_no_auth)
    except (ConfigError, ValueError) as exc:
        print(f"onramp: config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"onramp: {exc}", file=sys.stderr)
        return 1


def serve_here(config: Config, *, allow_insecure_no_auth: bool = False, reuse_port: bool = False,
               ready: Callable[[int], None] | None = None, failed: Callable[[str, int], None] | None = None,
               name: str = "onramp", run_learner: bool = True) -> int:
    """Run one server in this process (a worker of ``onramp serve``): configure logging, serve until
    SIGINT/SIGTERM. A start that fails is reported through ``failed(message, exit code)`` when given, else
    printed."""
    def fail(message: str, code: int) -> int:
        if failed is not None:
            failed(message, code)
        else:
            print(f"onramp: {message}", file=sys.stderr)
        return code

    try:
        from server.api.serving import OpsConfig
        logging_config = OpsConfig.from_mapping(config.raw).logging
    except (ConfigError, ValueError) as exc:
        return fail(f"config error: {exc}", 2)
    configure_logging(logging_config if isinstance(logging_config, LoggingConfig) else LoggingConfig())
    from server.api.auth import InsecureBindError
    from server.api.tls import TlsConfigError

    try:
        return asyncio.run(serve(config, allow_insecure_no_auth=allow_insecure_no_auth, reuse_port=reuse_port,
                                 ready=ready, name=name, run_learner=run_learner))
    except (ConfigError, TlsConfigError, InsecureBindError, OSError) as exc:
        return fail(str(exc), 1 if isinstance(exc, OSError) else 2)


def cmd_hash_key(args: argparse.Namespace) -> int:
    """``onramp hash-key``: see :func:`server.api.auth.hash_key_main`."""
    from server.api.auth import hash_key_main

    return hash_key_main(["--scheme", args.scheme, *(["--generate"] if args.generate else [])])


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``onramp``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


def _register_builtin_commands() -> None:
    """The offline tools (replay, export, report) that ship with the server."""
    from server.offline.commands import register

    add_command(register)


_register_builtin_commands()


if __name__ == "__main__":
    sys.exit(main())
