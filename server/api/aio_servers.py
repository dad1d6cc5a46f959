"""Releasing a grpc.aio server that was built but never started.

grpc.aio destroys a server's core (``grpc_server_destroy``) only in ``stop()`` after ``start()``; ``stop()``
of a never-started server returns at once and the core server stays behind, still registered with grpc.aio's
process-wide completion queue (grpc's own "potential memory leak" TODO in ``AioServer.__dealloc__``). When
the Python side of such a server was freed later by the garbage collector (it sits in a reference cycle with
the exception that stopped the start), the interpreter's heap was corrupted and the next collection, often
on another server's loop thread, segfaulted (the test suite's intermittent crash). Starting and at once
stopping the server runs grpc's normal teardown instead. A server whose port could not be bound has no
port, so this listens on nothing.
"""
from __future__ import annotations

import logging

import grpc

log = logging.getLogger("onramp.app")


async def release_unstarted(server: grpc.aio.Server) -> None:
    """Free the core of ``server``, built (handlers and ports added or not) but never started. If it cannot
    start (its start already failed half-way), stop it as it is."""
    try:
        await server.start()
    except Exception as exc:  # noqa: BLE001 - a start that fails again leaves nothing more to release
        log.debug("releasing an unstarted grpc.aio server: start failed: %s", exc)
    await server.stop(None)
