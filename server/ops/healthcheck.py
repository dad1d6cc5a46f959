"""A small health and reflection probe: ``python -m server.ops.healthcheck 127.0.0.1:50051``.

Exits 0 when the service is SERVING, 1 otherwise, so it serves as a container or systemd health probe where
grpcurl / grpc_health_probe are not installed. ``--list`` prints the services that reflection reports.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def _channel(target: str, ca_file: str, cert_file: str, key_file: str) -> grpc.Channel:
    if not ca_file:
        return grpc.insecure_channel(target)
    from server.api.tls import channel_credentials

    return grpc.secure_channel(target, channel_credentials(ca_file, cert_file, key_file))


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """The serving status name of ``service`` ("" = the whole server), e.g. "SERVING" or "NOT_SERVING"."""
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def list_services(channel: grpc.Channel, timeout: float = 5.0) -> list[str]:
    """Service names the server reports through reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=timeout)
    return [s.name for r in responses for s in r.list_services_response.service]


def main(argv: Sequence[str] | None = None) -> int:
    """Probe a server; prints the status (or the service list) and returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m server.ops.healthcheck", description=__doc__)
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051", help="host:port (default %(default)s)")
    parser.add_argument("--service", default="", help="service to check, e.g. onramp.v1.Onramp (default: server)")
    parser.add_argument("--list", action="store_true", help="list services via reflection instead")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default %(default)s)")
    parser.add_argument("--ca-file", default="", help="CA certificate: connect with TLS")
    parser.add_argument("--cert-file", default="", help="client certificate for mutual TLS")
    parser.add_argument("--key-file", default="", help="client key for mutual TLS")
    args = parser.parse_args(argv)
    with _channel(args.target, args.ca_file, args.cert_file, args.key_file) as channel:
        try:
            if args.list:
                for name in list_services(channel, args.timeout):
                    print(name)
                return 0
            status = check(channel, args.service, args.timeout)
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
