"""A grpc.aio server that was built but never started is torn down by grpc only after a start
(server/api/aio_servers.py); dropping it as it is corrupted the heap and crashed the test process later."""
from __future__ import annotations

import asyncio

import pytest

from ops_support import run_async
from server.api.aio_servers import release_unstarted
from server.api.serving import Operations
from server.base.config import Config
from server.ops.app import build_server


async def terminated(server, timeout: float = 5.0) -> bool:  # noqa: ANN001 - a grpc.aio.Server
    """Whether ``server`` has shut down (its termination wait ends within ``timeout`` seconds); the wait is
    shielded, since cancelling grpc.aio's own wait cancels the server's shutdown future."""
    try:
        await asyncio.wait_for(asyncio.shield(server.wait_for_termination()), timeout)
        return True
    except asyncio.TimeoutError:
        return False


@pytest.mark.parametrize("with_port", [False, True])
def test_release_unstarted_shuts_a_never_started_server_down(with_port: bool) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        ops = Operations()
        server = ops.new_server()
        if with_port:
            ops.add_port(server, "127.0.0.1:0")
        await server.stop(None)  # grpc.aio's own stop of a never-started server: returns, tears nothing down
        before = await terminated(server, 0.3)
        await release_unstarted(server)
        after = await terminated(server)
        await release_unstarted(server)  # a stopped server: its start fails, nothing more happens
        return before, after, await terminated(server)

    assert run_async(scenario()) == (False, True, True)


def test_a_server_whose_start_fails_is_released_by_stop(tmp_path) -> None:  # noqa: ANN001
    async def scenario() -> tuple[str, bool]:
        first = Operations()
        busy = first.new_server()
        port = first.add_port(busy, "127.0.0.1:0")
        await busy.start()
        try:
            server = build_server(Config().with_server(host="127.0.0.1", port=port, db_path=str(tmp_path / "o.db")))
            with pytest.raises(OSError) as err:
                await server.start()
            grpc_server = server.grpc_server
            await server.stop(None)
            return str(err.value), await terminated(grpc_server)
        finally:
            await busy.stop(None)

    message, released = run_async(scenario())
    assert "in use" in message and released
