"""Server assembly: open the store, start the writer and the learner, build the grpc.aio server with the
operations layer (auth, limits, health, reflection, metrics), and stop it all in the right order.

:func:`build_server` is the one place the parts meet; the decision engine plugs in through
``decision_factory`` (default: :class:`~server.decide.engine.DecisionEngine`, which is also the default profile
enricher) and ``enricher_factory``.
:func:`running_server` runs a whole server on a background thread for tests and scripts.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.api.aio_servers import release_unstarted
from server.api.service import OnrampService
from server.api.serving import Operations, OpsConfig
from server.base.catalog import Catalog, catalog_from_config, catalog_overrides
from server.base.config import Config, ConfigError, parse_config
from server.base.metrics import Metrics
from server.decide.engine import DecisionEngine
from server.decide.engine_api import DecisionService, ProfileEnricher
from server.ingest.consent import ConsentBook
from server.ingest.identity import IdentityGraph
from server.ingest.pipeline import Pipeline
from server.store.privacy import Pseudonymizer
from server.store.pseudonym_key import open_pseudonymizer
from server.store.sqlite import SqliteStore, open_store
from server.store.writer import Writer

if TYPE_CHECKING:  # imported where they run: a worker of `onramp serve` never imports the learner (nor River), and
    # only a server that serves the dashboard imports the offline reports behind it
    from server.learn.learner import Learner
    from server.ops.dashboard_data import LiveModel

log = logging.getLogger("onramp.app")
LIVE_TIMEOUT_S = 2.0  # how long the dashboard waits for the event loop to read the live model figures


@dataclass(slots=True)
class Runtime:
    """The stateful parts of one server, handed to the decision engine's factory."""

    config: Config
    store: SqliteStore
    writer: Writer
    pipeline: Pipeline
    pseudonymizer: Pseudonymizer
    catalog: Catalog
    metrics: Metrics

    @property
    def identity(self) -> IdentityGraph:
        return self.pipeline.identity

    @property
    def consent(self) -> ConsentBook:
        return self.pipeline.consent


DecisionFactory = Callable[[Runtime], DecisionService]
EnricherFactory = Callable[[Runtime], ProfileEnricher | None]


def ops_config_for(config: Config) -> OpsConfig:
    """The ops sections of ``config.raw``; ``[server] max_message_bytes`` overrides ``[limits]``'s."""
    try:
        ops = OpsConfig.from_mapping(config.raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    mmb = config.server.max_message_bytes
    if mmb:
        ops = dataclasses.replace(ops, limits=dataclasses.replace(ops.limits, max_message_bytes=mmb))
    return ops


def open_runtime(config: Config, metrics: Metrics | None = None) -> Runtime:
    """Open the store, find the pseudonym key (server/store/pseudonym_key.py: refused when it does not match the
    database) and start the writer thread. Identity links, consent, profiles, shown history and models are read
    from the store as they are needed: nothing is loaded or replayed."""
    try:
        catalog = catalog_from_config(config.raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    overrides = catalog_overrides(config.raw)
    log.info("catalog %s: the demo catalog%s", catalog.version,
             f" with these keys from {config.source}: {', '.join(overrides)}" if overrides else ", as shipped")
    store = open_store(config.server.db_path, synchronous=config.ingest.synchronous,
                       dedupe_window_hours=config.ingest.dedupe_window_hours)
    try:
        pseudonymizer = open_pseudonymizer(store, config.privacy)
        _remove_old_checkpoint(config.server.db_path)
        metrics = metrics if metrics is not None else Metrics()
        writer = Writer(store, max_group_weight=config.ingest.writer_max_events,
                        on_transaction=metrics.record_transaction)
        pipeline = Pipeline(store, writer, pseudonymizer, config.ingest)
        pipeline.rebuild()
    except BaseException:
        store.close()
        raise
    store.preload_id_filters()  # the dedupe window's key filters, read before the first ingest batch needs them
    writer.start()
    metrics.track_queue("writer", writer.qsize)
    log.info("database %s", store.path)
    return Runtime(config, store, writer, pipeline, pseudonymizer, catalog, metrics)


class OnrampServer:
    """A built server: the grpc.aio server, its operations layer and the runtime it serves."""

    def __init__(self, runtime: Runtime, server: grpc.aio.Server, ops: Operations, service: OnrampService,
                 learner: Learner | None = None) -> None:
        self.runtime = runtime
        self.learner = learner  # the models' learner (None with a custom decision service)
        self._learning: asyncio.Task[None] | None = None
        self.grpc_server: grpc.aio.Server | None = server
        self.ops = ops
        self.service = service
        self.port = 0
        self._grpc_started = False  # a never-started grpc.aio server needs release_unstarted
        self._stopped = False

    @property
    def address(self) -> str:
        host = self.runtime.config.server.host
        return f"{host}:{self.port}"

    async def start(self, address: str | None = None) -> int:
        """Bind (``address`` or the config's host:port), start serving, mark healthy; returns the port."""
        self.runtime.pipeline.attach_loop(asyncio.get_running_loop())
        assert self.grpc_server is not None, "a stopped server cannot start again"
        self.port = self.ops.add_port(self.grpc_server, address or self.runtime.config.server.address)
        await self.grpc_server.start()
        self._grpc_started = True
        start = getattr(self.service.decisions, "start", None)  # e.g. the engine's snapshot poll
        if start is not None:
            await start()
        if self.learner is not None:
            self._learning = asyncio.get_running_loop().create_task(self.learner.run(), name="onramp-learner")
        await self.ops.started()
        return self.port

    async def stop(self, grace: float | None = 5.0) -> None:
        """Graceful stop: NOT_SERVING, stop accepting and let in-flight calls finish (up to ``grace`` s), stop
        the learner (it saves its state), flush and stop the writer, close the database."""
        if self._stopped:
            return
        self._stopped = True
        await self.ops.stopping()
        if self.grpc_server is not None:
            if self._grpc_started:
                await self.grpc_server.stop(grace)
            else:  # the start failed (e.g. busy port): grpc.aio frees its core only after a start
                await release_unstarted(self.grpc_server)
        stop = getattr(self.service.decisions, "stop", None)
        if stop is not None:
            await stop()
        if self.learner is not None:
            self.learner.stop()
            if self._learning is not None:
                await self._learning
            self.learner.close()
        self.runtime.pipeline.close_reader()
        await asyncio.to_thread(self.runtime.writer.stop)
        self.ops.stopped()
        await asyncio.sleep(0)  # let the last post-commit callbacks run
        self.runtime.pipeline.attach_loop(None)
        self.runtime.store.close()

    async def wait_for_termination(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.wait_for_termination()


def build_server(config: Config | None = None, *, decision_factory: DecisionFactory | None = None,
                 enricher_factory: EnricherFactory | None = None, ops: Operations | None = None,
                 allow_insecure_no_auth: bool = False, reuse_port: bool = False,
                 run_learner: bool = True) -> OnrampServer:
    """Assemble a server (call from a coroutine: grpc.aio needs the running loop). Nothing listens until
    :meth:`OnrampServer.start`; ``reuse_port`` shares the port with the other workers of a supervisor;
    ``run_learner`` runs the learner in this process (off in the workers of a supervisor, which runs it as a
    process of its own: server/ops/learner_process.py)."""
    config = config or Config()
    ops_config = ops_config_for(config)
    if ops is None:
        ops = Operations(ops_config, allow_insecure_no_auth=allow_insecure_no_auth, reuse_port=reuse_port)
    runtime = open_runtime(config, ops.metrics)
    learner: Learner | None = None
    try:
        if decision_factory is not None:
            decisions = decision_factory(runtime)
        else:
            if run_learner:
                from server.learn.learner import Learner
                learner = Learner(runtime.store, runtime.writer, runtime.catalog, runtime.pipeline.pseudonym,
                                  metrics=runtime.metrics)
            decisions = DecisionEngine(runtime.pipeline, runtime.catalog, metrics=runtime.metrics)
        enricher = enricher_factory(runtime) if enricher_factory is not None else \
            (decisions if isinstance(decisions, ProfileEnricher) else None)
        service = OnrampService(runtime.pipeline, decisions, config.ingest, enricher, runtime.metrics)
        server = ops.new_server()
        pb_grpc.add_OnrampServicer_to_server(service, server)
        if ops.config.dashboard:
            _install_dashboard(ops, runtime, decisions, learner)
    except BaseException:
        if learner is not None:
            learner.close()
        runtime.writer.stop()
        runtime.store.close()
        raise
    return OnrampServer(runtime, server, ops, service, learner)


def _install_dashboard(ops: Operations, runtime: Runtime, decisions: DecisionService,
                       learner: Learner | None) -> None:
    """Serve the operator's dashboard on the metrics port (server/ops/dashboard_http.py): the reports over a
    read-only connection to this server's database, and the live model figures read on this event loop."""
    from server.ops.dashboard_data import DashboardSource, TtlCache, analytics, live_model
    from server.ops.dashboard_http import PREFIX as DASHBOARD_PREFIX, DashboardApp

    loop = asyncio.get_running_loop()
    source = DashboardSource(runtime.config.server.db_path, runtime.catalog, runtime.config.privacy)

    async def read_live() -> LiveModel:
        return live_model(runtime.catalog, decisions, runtime.writer.qsize, learner)

    def live() -> LiveModel:
        future = asyncio.run_coroutine_threadsafe(read_live(), loop)
        try:
            return future.result(LIVE_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise

    ops.add_http_app(DASHBOARD_PREFIX, DashboardApp(
        TtlCache(lambda: analytics(source)), live, ops.keyring, ops.auth_failures,
        failure_delay_s=ops.config.limits.auth_failure_delay_ms / 1000))


def _remove_old_checkpoint(db_path: str) -> None:
    """Remove the checkpoint earlier versions kept beside the database (``<db>.checkpoint``): nothing reads
    it any more, and it may hold profiles of people erased since."""
    if db_path == ":memory:":
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(db_path + ".checkpoint")
        log.info("removed %s.checkpoint, the state file of an earlier version (state is in the database now)", db_path)


# -- a server on a background thread (tests, scripts) ---------------------------------------------------------
@dataclass
class ServerHandle:
    """A running server on its own thread and event loop: ``address`` is ``127.0.0.1:<port>``."""

    server: OnrampServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    address: str
    port: int
    db_path: str

    @property
    def runtime(self) -> Runtime:
        return self.server.runtime

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn()`` on the server's event loop thread (to read profiles etc. safely) and return its value."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop the server gracefully and end its thread (idempotent)."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
        self.loop.close()


def _config_for_test(config: Config | Mapping[str, Any] | None, db_path: str | Path | None,
                     sections: Mapping[str, Any], tmpdir: str) -> Config:
    """The config of a test server: 127.0.0.1, any free port, a temporary database unless one is named."""
    raw: dict[str, Any] = {}
    if isinstance(config, Config):
        raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.raw.items()}
        for name in ("server", "privacy", "ingest"):  # the validated values win (a Config may be built in code)
            values = {k: v for k, v in dataclasses.asdict(getattr(config, name)).items() if v is not None}
            raw[name] = {**raw.get(name, {}), **values}
        if "db_path" not in config.raw.get("server", {}) and config.server.db_path == "./onramp.db":
            raw["server"].pop("db_path")
    elif config is not None:
        raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in config.items()}
    for name, section in sections.items():
        raw[name] = dict(section)
    server = dict(raw.get("server", {}))
    if db_path is not None:
        server["db_path"] = str(db_path)
    server.setdefault("db_path", str(Path(tmpdir) / "onramp.db"))
    server["host"], server["port"] = "127.0.0.1", 0
    raw["server"] = server
    return parse_config(raw, source="<test>")


@contextlib.contextmanager
def running_server(config: Config | Mapping[str, Any] | None = None, *, db_path: str | Path | None = None,
                   decision_factory: DecisionFactory | None = None, enricher_factory: EnricherFactory | None = None,
                   **sections: Any) -> Iterator[ServerHandle]:
    """Run a server on a free 127.0.0.1 port in a background thread; stop it on exit.

    ``config`` is a :class:`Config` or a TOML-like dict; ``sections`` add/replace sections
    (``running_server(ingest={"max_properties": 8})``). Without a ``db_path`` the database goes to a
    temporary directory removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="onramp-") as tmpdir:
        cfg = _config_for_test(config, db_path, sections, tmpdir)
        handle = start_background_server(cfg, decision_factory=decision_factory, enricher_factory=enricher_factory)
        try:
            yield handle
        finally:
            handle.stop()


def start_background_server(config: Config, *, decision_factory: DecisionFactory | None = None,
                            enricher_factory: EnricherFactory | None = None) -> ServerHandle:
    """Start a server for ``config`` on a new thread with its own event loop; the caller must ``stop()`` it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="onramp-server-loop", daemon=True)
    thread.start()

    async def start() -> OnrampServer:
        server = build_server(config, decision_factory=decision_factory, enricher_factory=enricher_factory)
        try:
            await server.start()
        except BaseException:
            await server.stop(None)
            raise
        return server

    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        raise
    return ServerHandle(server, loop, thread, f"127.0.0.1:{server.port}", server.port, config.server.db_path)
