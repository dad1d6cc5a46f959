"""Security and operations assembled for one server: config sections, interceptor, options, ports, health.

The app builds one :class:`Operations` from the ``[auth] [tls] [limits] [metrics] [logging]`` sections and
calls it at four points: ``new_server()`` (interceptor + options), ``add_port()`` (TLS or plain, after the
loopback/no-auth check), ``started()`` (health SERVING, metrics endpoint up) and ``stopping()`` /
``stopped()`` (health NOT_SERVING, metrics endpoint down).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.api.auth import AuthConfig, KeyRing, check_bind_allowed, is_loopback_host
from server.api.interceptors import OnrampInterceptor
from server.api.limits import AuthFailureLimiter, LimitsConfig, RateLimiter, server_options
from server.api.tls import TlsConfig, server_credentials
from server.base.logging_setup import LoggingConfig
from server.base.metrics import Metrics, MetricsConfig, MetricsServer, WsgiApp

ONRAMP_SERVICE = "onramp.v1.Onramp"
DASHBOARD_PATH = "/dashboard"
OPS_SECTIONS = ("auth", "tls", "limits", "metrics", "logging")

log = logging.getLogger("onramp.ops")


@dataclass(frozen=True, slots=True)
class OpsConfig:
    """The security and operations sections of the config file, each validated by its own module."""

    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any] | None) -> "OpsConfig":
        """Read the ops sections of a parsed TOML document (other sections are ignored).

        Raises ValueError subclasses whose message starts with the key at fault, e.g. ``[auth] keys[0].hash``.
        """
        document = document or {}
        sections: dict[str, Mapping[str, Any]] = {}
        for name in OPS_SECTIONS:
            value = document.get(name, {})
            if not isinstance(value, Mapping):
                raise ValueError(f"[{name}]: expected a table")
            sections[name] = value
        config = cls(
            auth=AuthConfig.from_mapping(sections["auth"]),
            tls=TlsConfig.from_mapping(sections["tls"]),
            limits=LimitsConfig.from_mapping(sections["limits"]),
            metrics=MetricsConfig.from_mapping(sections["metrics"]),
            logging=LoggingConfig.from_mapping(sections["logging"]),
        )
        if config.metrics.dashboard and not config.metrics.enabled:
            raise ValueError("[metrics] dashboard: true needs [metrics] enabled = true (the dashboard is served on "
                             "the metrics port)")
        if config.metrics.dashboard and not config.auth.enabled and not is_loopback_host(config.metrics.host):
            raise ValueError(
                f"[metrics] dashboard: true needs [auth] keys when [metrics] host is not loopback "
                f"(host {config.metrics.host!r}): without keys anyone reaching the port could read the analytics. "
                "Configure an admin key in [auth] keys, bind [metrics] host to 127.0.0.1, or set dashboard = false.")
        return config

    @property
    def dashboard(self) -> bool:
        """Whether the metrics port serves the operator's dashboard (at ``/dashboard``): ``[metrics] dashboard``
        when set, else on when API keys are configured (it then asks for an admin key) or the port is on
        loopback. Never without keys on another address (refused above when asked for)."""
        if not self.metrics.enabled:
            return False
        if self.metrics.dashboard is not None:
            return self.metrics.dashboard
        return self.auth.enabled or is_loopback_host(self.metrics.host)


class Operations:
    """Holds the key ring, rate limiters, metrics, health servicer and metrics endpoint of one server."""

    def __init__(self, config: OpsConfig | None = None, metrics: Metrics | None = None,
                 allow_insecure_no_auth: bool = False, reuse_port: bool = False) -> None:
        self.config = config if config is not None else OpsConfig()
        self.allow_insecure_no_auth = allow_insecure_no_auth
        self.reuse_port = reuse_port
        self.metrics = metrics if metrics is not None else Metrics()
        self.keyring = KeyRing(self.config.auth)
        self.limiter = RateLimiter(self.config.limits)
        self.auth_failures = AuthFailureLimiter(self.config.limits)
        self.interceptor = OnrampInterceptor(self.keyring, self.limiter, self.metrics,
                                             auth_failures=self.auth_failures)
        self.health = health.aio.HealthServicer()
        self.metrics_server: MetricsServer | None = None
        self.http_apps: dict[str, WsgiApp] = {}  # served beside /metrics, by path prefix
        self.service_names: tuple[str, ...] = (ONRAMP_SERVICE,)

    def add_http_app(self, prefix: str, app: WsgiApp) -> None:
        """Serve ``app`` at ``prefix`` (and below) on the metrics port; call before :meth:`started`."""
        self.http_apps[prefix] = app

    def server_options(self) -> list[tuple[str, Any]]:
        """grpc server options: message-size limits, and SO_REUSEPORT only for the workers of one supervisor
        (server/ops/supervisor.py, which checked the port is free): otherwise a second server on a busy port
        fails instead of silently sharing it."""
        return [*server_options(self.config.limits), ("grpc.so_reuseport", 1 if self.reuse_port else 0)]

    def new_server(self, extra_options: Iterable[tuple[str, Any]] = ()) -> grpc.aio.Server:
        """A grpc.aio server with the options, whose method handlers the interceptor guards (wrapped as they are
        registered: :meth:`OnrampInterceptor.guard`), plus health and reflection."""
        server = self.interceptor.guard(grpc.aio.server(options=[*self.server_options(), *extra_options]))
        self.install(server)
        return server

    def install(self, server: grpc.aio.Server, service_names: Iterable[str] = (ONRAMP_SERVICE,)) -> None:
        """Add the health servicer and server reflection (for ``service_names``, health and reflection)."""
        self.service_names = tuple(service_names)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    def check_bind(self, address: str) -> None:
        """Refuse non-loopback addresses without auth (unless allowed); warn loudly whenever auth is off."""
        if check_bind_allowed(address, self.keyring.enabled, self.allow_insecure_no_auth):
            log.warning(
                "AUTHENTICATION IS OFF: every caller reaching %s can ingest, decide, export and erase user "
                "data. Configure [auth] keys (docs/security.md) before exposing this server.", address)

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind ``address`` with TLS when ``[tls]`` is configured; returns the bound port."""
        self.check_bind(address)
        tls = self.config.tls
        credentials = server_credentials(tls) if tls.enabled else None
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address}: address in use or not available")
        log.info("listening on %s (port %d) %s", address, port,
                 ("with mutual TLS" if tls.mutual else "with TLS") if tls.enabled else "without TLS")
        return port

    async def started(self) -> None:
        """Mark the server SERVING and start the metrics endpoint (and the apps added beside it) when
        ``[metrics] enabled``."""
        if self.config.metrics.enabled and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, self.config.metrics, self.http_apps)
            port = self.metrics_server.start()
            host = self.config.metrics.host
            host = f"[{host}]" if ":" in host else host
            log.info("metrics on http://%s:%d/metrics", host, port)
            for prefix in self.http_apps:
                log.info("%s on http://%s:%d%s", prefix.strip("/"), host, port, prefix)
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stopping(self) -> None:
        """Mark every service NOT_SERVING (call before the server's graceful stop)."""
        await self.health.enter_graceful_shutdown()

    def stopped(self) -> None:
        """Stop the metrics endpoint and the key-hashing thread (call after the server stopped)."""
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        self.keyring.close()
