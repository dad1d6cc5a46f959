"""The assembly of security and operations: config sections, server options, port binding."""
from __future__ import annotations


import pytest

from ops_support import run_async
from server.api.aio_servers import release_unstarted
from server.api.auth import AuthConfigError
from server.api.serving import Operations, OpsConfig


def test_ops_config_reads_its_sections_and_ignores_others() -> None:
    config = OpsConfig.from_mapping({
        "server": {"address": "127.0.0.1:50051"},
        "limits": {"calls_per_second": 5},
        "metrics": {"enabled": True, "port": 0},
        "logging": {"format": "text"},
    })
    assert config.limits.calls_per_second == 5
    assert config.metrics.enabled and config.metrics.port == 0
    assert config.logging.format == "text"
    assert not config.auth.enabled and not config.tls.enabled


def test_ops_config_errors_name_the_section() -> None:
    with pytest.raises(ValueError) as err:
        OpsConfig.from_mapping({"tls": "server.crt"})
    assert str(err.value).startswith("[tls]")
    with pytest.raises(AuthConfigError):
        OpsConfig.from_mapping({"auth": {"keys": [{"name": "a", "hash": "x", "roles": ["admin"]}]}})


def test_server_options_limit_size_and_forbid_port_sharing() -> None:
    options = dict(Operations(OpsConfig.from_mapping({"limits": {"max_message_bytes": 4096}})).server_options())
    assert options["grpc.max_receive_message_length"] == 4096
    assert options["grpc.max_send_message_length"] == 4096
    assert options["grpc.so_reuseport"] == 0


def test_busy_port_is_a_clear_error() -> None:
    async def scenario() -> str:
        first = Operations()
        server = first.new_server()
        port = first.add_port(server, "127.0.0.1:0")
        await server.start()
        try:
            second = Operations()
            refused = second.new_server()
            try:
                with pytest.raises(OSError) as err:
                    second.add_port(refused, f"127.0.0.1:{port}")
            finally:
                await release_unstarted(refused)  # never started: dropped as is, it corrupted the heap
            return str(err.value)
        finally:
            await server.stop(None)

    message = run_async(scenario())
    assert message.startswith("cannot listen on 127.0.0.1:") and "in use" in message
