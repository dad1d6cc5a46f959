"""One gRPC worker of ``onramp serve``: ``python -m server.ops.worker --index I --port P ...`` (the serve flags),
started by the supervisor (server/ops/supervisor.py) in a fresh interpreter.

It links to the supervisor before grpc is imported (it exits at once when the supervisor dies), listens with
``grpc.so_reuseport`` beside the other workers, reports ready (or why it cannot start) over the link, and
stops gracefully on SIGTERM. Worker 0 serves the metrics port, /metrics covering every worker (prometheus
multiprocess mode) and the operator's dashboard; the others serve no HTTP port. Workers learn nothing: the
learner process (server/ops/learner_process.py) does, and they load the snapshots it publishes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from server.ops.supervisor import SupervisorLink


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; returns the exit code (0 after a graceful stop, 2 for a config error, 1 otherwise)."""
    link = SupervisorLink.from_env()
    if link is not None:
        link.watch_parent()
    from server.ops import cli

    parser = argparse.ArgumentParser(prog="python -m server.ops.worker", description=__doc__)
    cli.add_serve_arguments(parser)
    parser.add_argument("--index", type=int, default=0, help="this worker's number; 0 serves the metrics port")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="the metrics port (worker 0), chosen by the supervisor when [metrics] port is 0")
    args = parser.parse_args(argv)
    config = cli.child_config(args, link)
    if isinstance(config, int):
        return config
    metrics = dict(config.raw.get("metrics") or {})
    if args.index != 0:  # one process binds the metrics port
        metrics.update(enabled=False, dashboard=False)
    elif args.metrics_port is not None:
        metrics["port"] = args.metrics_port
    config = dataclasses.replace(config, raw={**config.raw, "metrics": metrics})
    return cli.serve_here(config, allow_insecure_no_auth=args.allow_insecure_no_auth, reuse_port=True,
                          ready=(lambda port: link.ready(port=port)) if link is not None else None,
                          failed=link.failed if link is not None else None,
                          name=f"worker {args.index} (pid {os.getpid()})", run_learner=False)


if __name__ == "__main__":
    sys.exit(main())
