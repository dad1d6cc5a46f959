"""gRPC health checking (SERVING after start, NOT_SERVING during shutdown) and server reflection."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import TinyOnramp, auth_config, ops_with, run_async, tiny_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _check(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


def test_health_serving_after_start_and_not_serving_during_shutdown() -> None:
    ops = ops_with(auth=auth_config())  # health needs no key even with auth on

    async def scenario() -> dict:
        out: dict = {}
        server = ops.new_server()
        pb_grpc.add_OnrampServicer_to_server(TinyOnramp(), server)
        port = ops.add_port(server, "127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await ops.started()
                out["started"] = (await _check(stub, ""), await _check(stub, "onramp.v1.Onramp"))
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
                except grpc.aio.AioRpcError as err:
                    out["unknown"] = err.code()
                await ops.stopping()
                out["stopping"] = (await _check(stub, ""), await _check(stub, "onramp.v1.Onramp"))
        finally:
            await server.stop(None)
            ops.stopped()
        return out

    r = run_async(scenario())
    assert r["started"] == (SERVING, SERVING)
    assert r["unknown"] == grpc.StatusCode.NOT_FOUND
    assert r["stopping"] == (NOT_SERVING, NOT_SERVING)


def test_health_watch_sees_shutdown() -> None:
    ops = ops_with()

    async def scenario() -> list[int]:
        server = ops.new_server()
        port = ops.add_port(server, "127.0.0.1:0")
        await server.start()
        await ops.started()
        seen: list[int] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                watch = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service="onramp.v1.Onramp"))
                seen.append((await watch.read()).status)
                await ops.stopping()
                seen.append((await watch.read()).status)
                watch.cancel()
        finally:
            await server.stop(None)
            ops.stopped()
        return seen

    assert run_async(scenario()) == [SERVING, NOT_SERVING]


def test_reflection_lists_onramp_without_a_key() -> None:
    ops = ops_with(auth=auth_config())

    async def scenario() -> tuple[list[str], bytes]:
        server = ops.new_server()
        pb_grpc.add_OnrampServicer_to_server(TinyOnramp(), server)
        port = ops.add_port(server, "127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                            reflection_pb2.ServerReflectionRequest(file_containing_symbol="onramp.v1.Onramp")]
                responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
        finally:
            await server.stop(None)
        names = [s.name for s in responses[0].list_services_response.service]
        return names, responses[1].file_descriptor_response.file_descriptor_proto[0]

    names, descriptor = run_async(scenario())
    assert "onramp.v1.Onramp" in names
    assert "grpc.health.v1.Health" in names
    assert b"GetNextStep" in descriptor


def test_healthcheck_probe_command(capsys: pytest.CaptureFixture[str]) -> None:
    from server.ops import healthcheck

    ops = ops_with()

    async def scenario() -> list[int]:
        async with tiny_server(ops) as port:
            target = f"127.0.0.1:{port}"
            codes = [await asyncio.to_thread(healthcheck.main, [target]),
                     await asyncio.to_thread(healthcheck.main, [target, "--list"]),
                     await asyncio.to_thread(healthcheck.main, [target, "--service", "no.such.Service"])]
            await ops.stopping()
            codes.append(await asyncio.to_thread(healthcheck.main, [target, "--service", "onramp.v1.Onramp"]))
            return codes

    codes = run_async(scenario())
    out, err = capsys.readouterr()
    assert codes == [0, 0, 1, 1]
    assert out.splitlines()[0] == "SERVING" and "onramp.v1.Onramp" in out.splitlines()
    assert out.splitlines()[-1] == "NOT_SERVING"
    assert err.startswith("NOT_FOUND")
