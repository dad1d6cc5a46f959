"""Prometheus metrics of one server instance and the HTTP endpoint that serves them.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so several servers (e.g. in tests) can live in one
process. Other modules record through the instance the app hands them, e.g.
``metrics.events_total.labels(result="accepted").inc(n)``. A ``Metrics()`` is cheap and needs no HTTP port,
so code paths never need a "no metrics" case. The endpoint can serve other WSGI apps under their own path
prefixes beside ``/metrics`` (the operator's dashboard, ``server/ops/dashboard_http.py``).

Under the supervisor of ``onramp serve`` (server/ops/supervisor.py) every worker runs prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a directory per run set before prometheus_client is imported):
each process writes its values to files there, and the one endpoint (worker 0's) adds up every worker's.
Gauges are then the sum over the live processes, and the queue depths are sampled once a second.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector

DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9464

# Latency buckets (seconds) from 0.5 ms to 10 s: GetNextStep is expected in the low milliseconds,
# ingestion streams can last longer.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_SAMPLE_S = 1.0  # how often a queue depth is written for the other processes to read (multiprocess mode)


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, or None when this process's metrics are its own."""
    return os.environ.get(MULTIPROCESS_ENV) or None


# A WSGI application (PEP 3333): ``app(environ, start_response) -> body chunks``.
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class MetricsConfigError(ValueError):
    """A bad ``[metrics]`` setting; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The ``[metrics]`` section: the Prometheus endpoint is off unless ``enabled`` (then 127.0.0.1:9464).

    ``dashboard`` turns the operator's dashboard on that port on or off; None (not set) leaves the choice to
    ``server/api/serving.py``, which knows whether API keys are configured (on with keys or on loopback)."""

    enabled: bool = False
    host: str = DEFAULT_METRICS_HOST
    port: int = DEFAULT_METRICS_PORT
    dashboard: bool | None = None

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "MetricsConfig":
        """Validate a ``[metrics]`` table; errors name the key, e.g. ``[metrics] port``."""
        section = dict(section or {})
        unknown = set(section) - {"enabled", "host", "port", "dashboard"}
        if unknown:
            raise MetricsConfigError(f"[metrics] {sorted(unknown)[0]}: unknown key "
                                     "(expected enabled, host, port, dashboard)")
        enabled = section.get("enabled", False)
        if not isinstance(enabled, bool):
            raise MetricsConfigError(f"[metrics] enabled: expected true or false (got {enabled!r})")
        host = section.get("host", DEFAULT_METRICS_HOST)
        if not isinstance(host, str) or not host:
            raise MetricsConfigError(f"[metrics] host: expected an address such as '127.0.0.1' (got {host!r})")
        port = section.get("port", DEFAULT_METRICS_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise MetricsConfigError(f"[metrics] port: expected an integer 0-65535, 0 = any free port (got {port!r})")
        dashboard = section.get("dashboard")
        if dashboard is not None and not isinstance(dashboard, bool):
            raise MetricsConfigError(f"[metrics] dashboard: expected true or false (got {dashboard!r})")
        return cls(enabled, host, port, dashboard)


class MethodMetrics:
    """The ``rpc_in_flight`` and ``rpc_duration`` series of one RPC method, with their label children looked
    up once (``labels()`` costs a lock and a tuple build per call on the serving hot path)."""

    __slots__ = ("in_flight", "_duration", "_method", "_by_code")

    def __init__(self, metrics: "Metrics", method: str) -> None:
        self.in_flight = metrics.rpc_in_flight.labels(method=method)
        self._duration = metrics.rpc_duration
        self._method = method
        self._by_code: dict[str, Any] = {}

    def observe(self, code: str, seconds: float) -> None:
        """Record one finished call of this method with final status ``code``."""
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._duration.labels(method=self._method, code=code)
        child.observe(seconds)


class Metrics:
    """All Onramp metrics, registered in a registry private to this instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rpc_duration = Histogram(
            "onramp_rpc_duration_seconds", "Time to handle one RPC, by method and final status code.",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=r)
        self.rpc_in_flight = Gauge(
            "onramp_rpc_in_flight", "RPCs being handled now, by method.", ["method"], registry=r,
            multiprocess_mode="livesum")
        self.auth_failures_total = Counter(
            "onramp_auth_failures_total", "Calls refused by authentication or authorization, by code.",
            ["code"], registry=r)
        self.rate_limited_total = Counter(
            "onramp_rate_limited_total", "Calls refused by a rate limit, by kind (calls, events, auth_failures).",
            ["kind"], registry=r)
        self.events_total = Counter(
            "onramp_events_total",
            "Events received, by result (accepted, duplicate, dropped, rejected).", ["result"], registry=r)
        self.events_dropped_total = Counter(
            "onramp_events_dropped_total",
            "Events not stored because of consent or erasure, by reason (no_consent, opted_out, erased).",
            ["reason"], registry=r)
        self.decisions_total = Counter(
            "onramp_decisions_total", "GetNextStep decisions, by reason and chosen step ('' = none).",
            ["reason", "step"], registry=r)
        self.rewards = Summary(
            "onramp_reward", "Rewards joined to decisions (count and sum), by source (reported, event, default).",
            ["source"], registry=r)
        self.guardrail_blocks_total = Counter(
            "onramp_guardrail_blocks_total", "Steps withheld by a guardrail, by guardrail name.",
            ["guardrail"], registry=r)
        self.rule_demoted = Gauge(
            "onramp_rule_demoted", "1 when a proposing rule was demoted (significantly worse than the bandit: it "
            "no longer boosts its step), else 0, by rule.", ["rule"], registry=r)
        self.rule_demotions_total = Counter(
            "onramp_rule_demotions_total", "Proposing rules demoted by this process, by rule.", ["rule"], registry=r)
        self.write_lock_wait_seconds = Counter(
            "onramp_write_lock_wait_seconds", "Time this server's writer waited to begin a transaction: the write "
            "lock another process's writer held (all workers' writers take turns on it).", registry=r)
        self.write_lock_held_seconds = Counter(
            "onramp_write_lock_held_seconds", "Time this server's writer held the write lock, from beginning a "
            "transaction to its commit or rollback: its rate is the share of the time the lock was busy.",
            registry=r)
        self.write_transactions = Counter(
            "onramp_write_transactions", "Write transactions of this server's writer (several jobs share one).",
            registry=r)
        self.queue_depth = Gauge(
            "onramp_queue_depth", "Items waiting in an internal queue, by queue name.", ["queue"], registry=r,
            multiprocess_mode="livesum")
        self._methods: dict[str, MethodMetrics] = {}
        self._decisions: dict[tuple[str, str], Any] = {}
        self._sampled: list[tuple[Any, Callable[[], float]]] = []  # queue gauges written by the sampler thread

    def for_method(self, method: str) -> MethodMetrics:
        """The RPC series of ``method`` (a name without the leading slash), created on first use."""
        found = self._methods.get(method)
        if found is None:
            found = self._methods[method] = MethodMetrics(self, method)
        return found

    def track_queue(self, name: str, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as ``onramp_queue_depth{queue=name}`` at every scrape (in multiprocess mode, as
        sampled every :data:`QUEUE_SAMPLE_S` by a thread: the endpoint reads only the shared files)."""
        if multiprocess_dir() is None:
            self.queue_depth.labels(queue=name).set_function(depth)
            return
        self._sampled.append((self.queue_depth.labels(queue=name), depth))
        if len(self._sampled) == 1:
            threading.Thread(target=self._sample_queues, name="onramp-metrics-queues", daemon=True).start()

    def _sample_queues(self) -> None:
        while True:
            for gauge, depth in list(self._sampled):
                try:
                    gauge.set(depth())
                except Exception:  # noqa: BLE001 - a failing probe must not end the sampling of the others
                    pass
            time.sleep(QUEUE_SAMPLE_S)

    def record_events(self, accepted: int = 0, duplicates: int = 0, rejected: int = 0,
                      dropped: Mapping[str, int] | None = None) -> None:
        """Count the outcome of an ingest call or batch in one step."""
        for result, n in (("accepted", accepted), ("duplicate", duplicates), ("rejected", rejected)):
            if n:
                self.events_total.labels(result=result).inc(n)
        for reason, n in (dropped or {}).items():
            if n:
                self.events_total.labels(result="dropped").inc(n)
                self.events_dropped_total.labels(reason=reason).inc(n)

    def record_transaction(self, waited_s: float, held_s: float) -> None:
        """Count one write transaction: how long its writer waited for the write lock and then held it."""
        self.write_lock_wait_seconds.inc(waited_s)
        self.write_lock_held_seconds.inc(held_s)
        self.write_transactions.inc()

    def record_decision(self, reason: str, step: str) -> None:
        """Count one GetNextStep answer (``step`` empty when nothing was shown)."""
        child = self._decisions.get((reason, step))
        if child is None:
            child = self._decisions[(reason, step)] = self.decisions_total.labels(reason=reason, step=step)
        child.inc()

    def record_reward(self, source: str, reward: float) -> None:
        """Record one reward joined to a decision."""
        self.rewards.labels(source=source).observe(reward)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry (what /metrics serves)."""
        return generate_latest(self.registry)


def _all_processes() -> CollectorRegistry:
    """A registry that reads every process's values from the multiprocess directory."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


class _QuietHandler(WSGIRequestHandler):
    """Writes no access line per request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class MetricsServer:
    """The HTTP endpoint serving one :class:`Metrics` registry at ``/metrics`` (any path no app claims), and
    each of ``apps`` at its path prefix (``"/dashboard"`` serves ``/dashboard`` and ``/dashboard/...``)."""

    def __init__(self, metrics: Metrics, config: MetricsConfig, apps: Mapping[str, WsgiApp] | None = None) -> None:
        self.metrics = metrics
        self.config = config
        self.apps = dict(apps or {})
        self._metrics_app = make_wsgi_app(metrics.registry if multiprocess_dir() is None else _all_processes())
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("metrics server is not started")
        return int(self._server.server_port)

    def _route(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        for prefix, app in self.apps.items():
            if path == prefix or path.startswith(prefix + "/"):
                return app(environ, start_response)
        return self._metrics_app(environ, start_response)

    def start(self) -> int:
        """Start serving in a daemon thread; returns the bound port. Raises OSError naming the address."""
        host, port = self.config.host, self.config.port
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

            class Server(ThreadingWSGIServer):
                address_family = family

            self._server = make_server(host, port, self._route, Server, handler_class=_QuietHandler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="onramp-metrics-http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
