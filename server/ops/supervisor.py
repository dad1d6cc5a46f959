"""The supervisor of ``onramp serve``: one parent process that starts the serving processes, restarts the ones
that die, and drains them all on SIGTERM/SIGINT.

The supervisor never imports grpc and never forks after grpc is imported: each child is a fresh interpreter
started with :mod:`subprocess` (fork + exec). The workers all listen on one port with ``grpc.so_reuseport``;
the kernel spreads connections (not calls) over them. A child is one :class:`ProcessSpec` (a role name and an
argv), so another role (the learner) is one more spec in :func:`serve_specs`.

Each child gets one end of a socket pair (its number in ``ONRAMP_SUPERVISOR_FD``), the *link*. Over it the
child reports that it is ready (or why it could not start) as JSON lines; the child reads it only to see it
close, which means the supervisor is gone. A child exits at once then, as it does on Linux through
``PR_SET_PDEATHSIG``: what it acknowledged is already committed, and a new supervisor can start without two
generations of workers sharing the port. :class:`SupervisorLink` is the child's side.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.base.config import Config

log = logging.getLogger("onramp.supervisor")
serve_log = logging.getLogger("onramp.cli")  # the command's own lines ("onramp serving on ...")

ENV_LINK_FD = "ONRAMP_SUPERVISOR_FD"  # the child's end of its link to the supervisor
ENV_PARENT_PID = "ONRAMP_SUPERVISOR_PID"
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's multiprocess mode (server/base/metrics.py)
WORKER_ROLE = "worker"
LEARNER_ROLE = "learner"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding this checkout's `server`

STABLE_S = 10.0  # a child that ran this long before it died is restarted at once, its failure count reset
RESTART_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 4.0)  # wait before the n-th restart in a row of a child dying young
DRAIN_TIMEOUT_S = 60.0  # after SIGTERM, how long a child may take to finish its calls and commit
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StartFailed(RuntimeError):
    """A child exited before it was ready at the first start: ``code`` is the exit code to pass on and
    ``message`` the child's own words (empty when it sent none)."""

    def __init__(self, role: str, message: str, code: int) -> None:
        super().__init__(message or f"{role} could not start (exit status {code})")
        self.role = role
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One child process: its ``role`` with the ``index`` among that role's processes (``worker 0``), the
    argv to run, and extra environment variables. The child reports ready over its link
    (:class:`SupervisorLink`); the supervisor waits for every child before it says it serves."""

    role: str
    argv: tuple[str, ...]
    index: int = 0
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.role} {self.index}"


def resolve_workers(n: int) -> int:
    """``[server] workers`` / ``--workers``: 0 means one per core this process may run on."""
    if n > 0:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def serve_specs(serve_args: Sequence[str], workers: int) -> list[ProcessSpec]:
    """The children of ``onramp serve``: ``workers`` gRPC workers (``python -m server.ops.worker``), each with
    the serve flags ``serve_args`` (``--port`` the real, shared port). Worker 0 also serves the metrics port.
    The learner (``python -m server.ops.learner_process``) is one more child: the only process that learns."""
    specs = [ProcessSpec(WORKER_ROLE, (sys.executable, "-m", "server.ops.worker", "--index", str(i), *serve_args),
                         index=i) for i in range(workers)]
    specs.append(ProcessSpec(LEARNER_ROLE, (sys.executable, "-m", "server.ops.learner_process", *serve_args)))
    return specs


# -- ports ---------------------------------------------------------------------------------------------------
def reserve_port(host: str, port: int, attempts: int = 20) -> tuple[int, list[socket.socket]]:
    """Bind (not listen) ``host:port`` with SO_REUSEPORT on every address ``host`` resolves to and return the
    port with the sockets. Port 0 picks one free on all of them. Holding the sockets keeps the port this
    supervisor's while its workers come and go; they bind it with ``grpc.so_reuseport`` too, and a bound socket
    that does not listen takes no connections."""
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    last: OSError | None = None
    for _ in range(attempts):
        chosen = port
        held: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in infos:
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = sock.getsockname()[1]
            return chosen, held
        except OSError as exc:
            for sock in held:
                sock.close()
            last = exc
            if port != 0 or exc.errno != errno.EADDRINUSE:
                break
    raise OSError(last.errno if last else errno.EADDRINUSE,
                  f"cannot listen on {host}:{port}: {last.strerror if last else 'no free port'}")


def free_port(host: str) -> int:
    """A port free on ``host`` now (bound and released: for the metrics port, which one process binds)."""
    family = socket.getaddrinfo(host.strip("[]"), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


# -- the child's side ------------------------------------------------------------------------------------------
class SupervisorLink:
    """A child's end of its link to the supervisor: :meth:`ready` and :meth:`failed` report, :meth:`watch_parent`
    ends this process when the supervisor is gone. Import-light (no grpc), so a child sets it up first."""

    def __init__(self, sock: socket.socket, parent_pid: int) -> None:
        self._sock = sock
        self._parent_pid = parent_pid
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "SupervisorLink | None":
        """The link handed down by a supervisor, or None when this process runs on its own."""
        fd = environ.get(ENV_LINK_FD)
        if not fd:
            return None
        sock = socket.socket(fileno=int(fd))
        os.set_inheritable(sock.fileno(), False)  # not into a child this process forks or spawns
        return cls(sock, int(environ.get(ENV_PARENT_PID, "0")))

    def watch_parent(self) -> None:
        """Exit at once (SIGKILL) when the supervisor dies: PR_SET_PDEATHSIG on Linux, and everywhere a thread
        that waits for the link to close."""
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if self._parent_pid and os.getppid() != self._parent_pid:  # it died before the prctl
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=self._wait_for_close, name="onramp-supervisor-link", daemon=True).start()

    def _wait_for_close(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                os.kill(os.getpid(), signal.SIGKILL)
                return

    def _send(self, message: Mapping[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(json.dumps(message).encode() + b"\n")

    def ready(self, **info: Any) -> None:
        """Tell the supervisor this process serves (``info``: e.g. the bound ``port``)."""
        self._send({"event": "ready", "pid": os.getpid(), **info})

    def failed(self, message: str, code: int) -> None:
        """Tell the supervisor why this process cannot start (it prints ``message``); then exit with ``code``."""
        self._send({"event": "failed", "pid": os.getpid(), "message": message, "code": code})


# -- the supervisor's side -------------------------------------------------------------------------------------
@dataclass
class _Child:
    """A spec and its current process."""

    spec: ProcessSpec
    proc: subprocess.Popen[bytes] | None = None
    link: socket.socket | None = None
    buffer: bytes = b""
    started_at: float = 0.0
    ready: bool = False
    ever_ready: bool = False  # a child that never was ready failed to start: no restart, the start fails
    quick_failures: int = 0  # deaths in a row, each within STABLE_S of its start
    stopped_cleanly: bool = True  # when drained: exit status 0
    restart_at: float | None = None
    message: str = ""  # what the child said when it could not start
    code: int = 0  # the exit code it asked for then (else its exit status)
    port: int | None = None


def describe_exit(returncode: int) -> str:
    """``exit status 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    """Starts the children of ``specs``, restarts the ones that die (with backoff; giving up on one that keeps
    dying young), and drains them all on SIGTERM/SIGINT. Use from the main thread:
    :meth:`start` (returns once every child is ready), then :meth:`run` (returns the exit code)."""

    def __init__(self, specs: Sequence[ProcessSpec], *, env: Mapping[str, str] | None = None,
                 restart_delays_s: Sequence[float] = RESTART_DELAYS_S, stable_s: float = STABLE_S,
                 drain_timeout_s: float = DRAIN_TIMEOUT_S, metrics_dir: str | None = None) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.env = dict(os.environ if env is None else env)
        self.restart_delays_s = tuple(restart_delays_s)
        self.stable_s = stable_s
        self.drain_timeout_s = drain_timeout_s
        self._own_metrics_dir = metrics_dir is None
        self.metrics_dir = metrics_dir or tempfile.mkdtemp(prefix="onramp-metrics-")
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._signals: list[int] = []  # stop signals received and not yet handled
        self._draining = False
        self._drain_deadline = 0.0
        self._failed: _Child | None = None
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup_fd = -1
        self._closed = False

    # signals ------------------------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_stop_signal)
        self._old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select()

    def _restore_signals(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        signal.set_wakeup_fd(self._old_wakeup_fd)

    def _on_stop_signal(self, sig: int, _frame: Any) -> None:
        self._signals.append(sig)  # handled in _tick (no logging inside a signal handler)

    # children ----------------------------------------------------------------------------------------------
    def _spawn(self, child: _Child) -> None:
        ours, theirs = socket.socketpair()
        env = {**self.env, **child.spec.env, ENV_LINK_FD: str(theirs.fileno()), ENV_PARENT_PID: str(os.getpid()),
               ENV_METRICS_DIR: self.metrics_dir,
               "PYTHONPATH": os.pathsep.join(p for p in (PACKAGE_ROOT, self.env.get("PYTHONPATH", "")) if p)}
        try:
            # its own process group: a Ctrl-C on the terminal reaches the supervisor only, which forwards it once
            proc = subprocess.Popen(child.spec.argv, env=env, stdin=subprocess.DEVNULL,
                                    pass_fds=(theirs.fileno(),), process_group=0)
        finally:
            theirs.close()
        ours.setblocking(False)
        self._selector.register(ours, selectors.EVENT_READ, child)
        child.proc, child.link, child.buffer = proc, ours, b""
        child.started_at, child.ready, child.restart_at, child.message, child.code, child.port = \
            time.monotonic(), False, None, "", 0, None

    def _read_link(self, child: _Child) -> None:
        assert child.link is not None
        try:
            data = child.link.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_link(child)
            return
        child.buffer += data
        self._parse_link(child)

    def _parse_link(self, child: _Child) -> None:
        while b"\n" in child.buffer:
            line, child.buffer = child.buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "ready":
                child.ready = child.ever_ready = True
                child.port = message.get("port")
                log.info("%s (pid %d) ready%s", child.spec.name, child.proc.pid if child.proc else 0,
                         f" on port {child.port}" if child.port else "")
            elif message.get("event") == "failed":
                child.message = str(message.get("message", ""))
                child.code = int(message.get("code", 1))

    def _close_link(self, child: _Child) -> None:
        if child.link is not None:
            self._selector.unregister(child.link)
            child.link.close()
            child.link = None

    def _reap(self, child: _Child, now: float) -> None:
        """A child whose process ended: log it, and schedule its restart or give up."""
        assert child.proc is not None
        code = child.proc.returncode
        pid = child.proc.pid
        if child.link is not None:  # read what it said last (e.g. why it failed), then close
            with contextlib.suppress(OSError):
                child.link.setblocking(True)
                child.link.settimeout(0.5)
                while True:
                    data = child.link.recv(65536)
                    if not data:
                        break
                    child.buffer += data
            self._parse_link(child)
            self._close_link(child)
        child.proc = None
        self._mark_dead(pid)
        was_ready, child.ready = child.ready, False
        if self._draining:
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "%s (pid %d) stopped: %s", child.spec.name, pid, describe_exit(code))
            child.stopped_cleanly = code == 0
            return
        if not child.ever_ready:
            if not child.message:
                log.error("%s (pid %d) exited before it was ready: %s", child.spec.name, pid, describe_exit(code))
            child.code = child.code or (code if code > 0 else 1)
            self._failed = child
            return
        uptime = now - child.started_at
        child.quick_failures = child.quick_failures + 1 if uptime < self.stable_s else 1
        if child.quick_failures > len(self.restart_delays_s):
            log.error("%s keeps dying: %d times in a row within %.0f s of its start (last: pid %d, %s%s); "
                      "giving up and stopping the others", child.spec.name, child.quick_failures, self.stable_s,
                      pid, describe_exit(code), f": {child.message}" if child.message else "")
            self._failed = child
            return
        delay = self.restart_delays_s[child.quick_failures - 1]
        log.warning("%s (pid %d) died (%s) after %.1f s%s; restarting it%s", child.spec.name, pid,
                    describe_exit(code), uptime, " before it was ready" if not was_ready else "",
                    f" in {delay:g} s" if delay else "")
        child.restart_at = now + delay

    def _mark_dead(self, pid: int) -> None:
        """Drop the live gauges of a dead child from the shared metrics (its counters stay: totals go on)."""
        try:
            from prometheus_client import multiprocess
            multiprocess.mark_process_dead(pid, self.metrics_dir)
        except (ImportError, OSError):
            pass

    def _tick(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a link message, a signal or a child's death, and handle what came."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    os.read(self._wakeup_r, 4096)
            else:
                self._read_link(key.data)
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._reap(child, now)
        while self._signals:
            name = signal.Signals(self._signals.pop(0)).name
            if self._draining:
                log.warning("%s received while stopping; still waiting for the processes to finish their calls "
                            "and commit", name)
            else:
                self.drain(f"{name} received")
        if self._draining or self._failed is not None:
            return
        for child in self.children:
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
                log.info("%s restarted (pid %d)", child.spec.name, child.proc.pid if child.proc else 0)

    def drain(self, why: str) -> None:
        """Forward SIGTERM to every child: each stops taking calls, finishes the ones in flight and commits."""
        if self._draining:
            return
        self._draining = True
        self._drain_deadline = time.monotonic() + self.drain_timeout_s
        live = [c for c in self.children if c.proc is not None]
        log.info("stopping (%s): draining %d process%s", why, len(live), "" if len(live) == 1 else "es")
        for child in live:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        for child in self.children:
            child.restart_at = None

    def _wait_drained(self) -> bool:
        """Wait until every child ended; kill the ones still running at the deadline. True when all stopped
        cleanly (exit status 0)."""
        clean = True
        while any(c.proc is not None for c in self.children):
            if time.monotonic() > self._drain_deadline:
                for child in self.children:
                    if child.proc is not None:
                        log.error("%s (pid %d) did not stop within %.0f s; killing it", child.spec.name,
                                  child.proc.pid, self.drain_timeout_s)
                        child.proc.kill()
                        child.proc.wait()
                        self._reap(child, time.monotonic())
                clean = False
                break
            self._tick(0.5)
        return clean and all(c.stopped_cleanly for c in self.children)

    # the whole life ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Install the signal handlers, start every child and return once each has reported ready. When one
        exits first, or a stop signal comes meanwhile, stop the others and raise :class:`StartFailed` (code 0
        for the signal)."""
        self._install_signals()
        self._start_waiting(self.children)

    def add(self, specs: Sequence[ProcessSpec]) -> None:
        """Start more children once the first ones serve (e.g. the workers after the one that chose the port),
        and return once they are ready too; fails like :meth:`start`."""
        children = [_Child(spec) for spec in specs]
        self.children.extend(children)
        self._start_waiting(children)

    def respec(self, name: str, spec: ProcessSpec) -> None:
        """Run ``spec`` instead from the next restart of child ``name`` on (e.g. with the port it chose)."""
        for child in self.children:
            if child.spec.name == name:
                child.spec = spec

    def _start_waiting(self, children: Sequence[_Child]) -> None:
        try:
            for child in children:
                self._spawn(child)
            while not all(c.ready for c in children) and self._failed is None and not self._draining:
                self._tick(0.5)
        except BaseException:
            self.drain("the start failed")
            self._wait_drained()
            self.close()
            raise
        failed = self._failed
        if failed is None and not self._draining:
            return
        self.drain(f"{failed.spec.name} could not start" if failed else "stop signal during the start")
        self._wait_drained()
        self.close()
        if failed is None:
            raise StartFailed("", "", 0)
        raise StartFailed(failed.spec.name, failed.message, failed.code)

    def ports(self) -> list[int]:
        """The ports the ready children reported."""
        return [c.port for c in self.children if c.port]

    def run(self) -> int:
        """Watch the children until a stop signal (drain, then 0 when every child stopped cleanly) or a child
        that keeps dying (drain the others, then 1)."""
        try:
            while not self._draining and self._failed is None:
                self._tick(1.0)
            if self._failed is not None:
                self.drain(f"{self._failed.spec.name} keeps dying")
            clean = self._wait_drained()
            return 0 if clean and self._failed is None else 1
        finally:
            self.close()

    def close(self) -> None:
        """Restore the signal handlers, close the links, remove the metrics directory (when this made it)."""
        if self._closed:
            return
        self._closed = True
        if self._old_handlers:
            self._restore_signals()
        for child in self.children:
            self._close_link(child)
        with contextlib.suppress(OSError):
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        self._selector.close()
        if self._own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        """The live children by name (``worker 0``): for tests and the operator's logs."""
        return {c.spec.name: c.proc.pid for c in self.children if c.proc is not None}



# -- onramp serve ----------------------------------------------------------------------------------------------
def run_serve(config: Config, config_path: str | None, *, allow_insecure_no_auth: bool = False) -> int:
    """``onramp serve``: check what can be checked without grpc, start worker 0 on the configured port (it
    finds any free one for port 0 and reports it), hold that port, start the other workers on it, say where
    it serves, and supervise until SIGTERM/SIGINT. Returns the exit code. Call from the main thread."""
    from server.base.catalog import catalog_from_config
    from server.base.metrics import MetricsConfig
    from server.ops.ports import check_port_free

    workers = resolve_workers(config.server.workers)
    catalog = catalog_from_config(config.raw)  # its errors, before any process starts or file is created
    metrics = MetricsConfig.from_mapping(config.raw.get("metrics"))
    host = config.server.host
    check_port_free(host, config.server.port)
    args = ["--host", host, "--db", config.server.db_path, *(["--config", config_path] if config_path else []),
            *(["--allow-insecure-no-auth"] if allow_insecure_no_auth else [])]
    if metrics.enabled and metrics.port == 0:  # worker 0 binds it again after a restart: one fixed port
        args_0 = [*args, "--metrics-port", str(free_port(metrics.host))]
    else:
        args_0 = args
    first = serve_specs([*args_0, "--port", str(config.server.port)], 1)[0]
    supervisor = Supervisor([first])
    reserved: list[socket.socket] = []
    try:
        supervisor.start()
        port = supervisor.ports()[0]
        supervisor.respec(first.name, serve_specs([*args_0, "--port", str(port)], 1)[0])
        port, reserved = reserve_port(host, port)
        others = serve_specs([*args, "--port", str(port)], workers)[1:]
        if others:
            supervisor.add(others)
    except StartFailed as exc:
        if exc.message:
            print(f"onramp: {exc.message}", file=sys.stderr)
        return exc.code
    except BaseException:
        supervisor.drain("the start failed")
        supervisor.run()
        raise
    try:
        pids = supervisor.pids()
        serve_log.info("onramp serving on %s:%d (db %s, config %s, catalog %s, %d worker%s, pids %s; learner pid %s)",
                       host, port, config.server.db_path, config.source, catalog.version, workers,
                       "" if workers == 1 else "s",
                       " ".join(str(pid) for name, pid in pids.items() if name.startswith(WORKER_ROLE)),
                       pids.get(f"{LEARNER_ROLE} 0", "-"))
        return supervisor.run()
    finally:
        for sock in reserved:
            sock.close()
