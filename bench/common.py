"""Shared helpers of the benchmarks: free ports, server subprocesses (Onramp and bare), the serving scenarios
(bench catalog and warm-up of users), decisions-by-reason counts, and median/spread summaries over repeats.

Serving scenarios (``--scenario``): ``personalized`` (default) runs every GetNextStep through the whole
personalised path -- guardrails, segments, rules checked, the contextual bandit's scoring, the decision
logged -- with users past the personalisation threshold and the demo catalog's caps/gaps/cooldowns lifted
(:func:`bench_catalog`); ``capped`` is the earlier benchmark: demo catalog, users with one session, so under
load every ask is a logged ``capped`` decision (the minimum gap blocks it) that never reaches the bandit."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import statistics
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """What the benchmarks read of one process's ``/proc/PID/stat``: its parent and its CPU seconds so far,
    its own (user + system, all threads) and its reaped children's (cutime + cstime)."""

    pid: int
    ppid: int
    cpu_s: float
    children_cpu_s: float


def parse_stat(text: str) -> ProcStat:
    """A ``/proc/PID/stat`` line as a :class:`ProcStat` (the command name in parentheses may hold spaces)."""
    head, _, rest = text.rpartition(")")
    fields = rest.split()  # fields[0] is the state (field 3 of proc(5))
    return ProcStat(int(head.split(" (", 1)[0]), int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS,
                    (int(fields[13]) + int(fields[14])) / _TICKS)


def descendants(root: int, parent_of: Mapping[int, int]) -> list[int]:
    """``root`` and every process below it, given each process's parent (``parent_of[pid] = ppid``)."""
    below: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        below.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(sorted(below.get(pid, ()), reverse=True))
    return out


def tree_cpu_s(stats: Iterable[ProcStat]) -> float:
    """CPU seconds of a process tree: each live process's own plus its reaped children's, so a worker that
    died (and was reaped by the supervisor) during a measurement still counts."""
    return sum(s.cpu_s + s.children_cpu_s for s in stats)


def _read_stat(pid: int | str) -> ProcStat | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone meanwhile, or not a process directory


def process_tree(root: int) -> list[ProcStat]:
    """The live processes of ``root``'s tree (root first), read from ``/proc``: for ``onramp serve --workers
    N`` the supervisor, its workers and the learner process; for one worker the server process alone."""
    stats = {s.pid: s for s in (_read_stat(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()) if s}
    return [stats[pid] for pid in descendants(root, {p: s.ppid for p, s in stats.items()}) if pid in stats]


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now of process ``pid`` (VmRSS from /proc; "self": this process). Raises OSError when
    the process is gone, RuntimeError when it has no resident set (a zombie)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_rss_bytes(root: int) -> int:
    """Resident set size now (VmRSS from /proc) of ``root``'s process tree, summed over its processes (pages
    the workers share count once per process)."""
    total = 0
    for s in process_tree(root):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_bytes(s.pid)
    if total == 0:
        raise RuntimeError(f"no VmRSS for {root}")
    return total


def cmdline(pid: int) -> list[str]:
    """The argv of process ``pid`` (empty when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def role_of(argv: Sequence[str]) -> str:
    """``worker 1``, ``learner`` or ``server`` (the root: the supervisor, or the one server process) from a
    process's argv."""
    if "server.ops.worker" in argv:
        i = list(argv).index("--index") if "--index" in argv else -1
        return f"worker {argv[i + 1]}" if 0 <= i < len(argv) - 1 else "worker"
    if "server.ops.learner_process" in argv:
        return "learner"
    return "server"


def parse_cpu_list(text: str) -> set[int]:
    """A CPU list as taskset and /sys write it (``0``, ``0,2``, ``0-3,6``) as a set of CPU numbers."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"CPU list: expected numbers and ranges like 0-3,6 (got {text!r})") from None
        if first < 0 or last < first:
            raise ValueError(f"CPU list: bad range {part.strip()!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return cpus


@dataclass(frozen=True)
class CpuSplit:
    """``--cpus SERVER:LOADGEN``: the CPUs the servers' process trees run on and those of the load generator
    (and this benchmark process). Empty sets: not pinned."""

    server: frozenset[int] = field(default_factory=frozenset)
    loadgen: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str | None) -> "CpuSplit":
        """``"1:0"`` -> server on CPU 1, load generator on CPU 0; None or "" -> not pinned."""
        if not text:
            return cls()
        server, sep, loadgen = text.partition(":")
        if not sep or not server or not loadgen:
            raise ValueError(f"--cpus: expected SERVER_CPUS:LOADGEN_CPUS, e.g. 1:0 or 2-3:0-1 (got {text!r})")
        return cls(frozenset(parse_cpu_list(server)), frozenset(parse_cpu_list(loadgen)))

    def __str__(self) -> str:
        if not self.server:
            return "not pinned"
        return f"servers on CPU {cpu_list(self.server)}, load generator on CPU {cpu_list(self.loadgen)}"


def cpu_list(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``0-2,5``."""
    out: list[str] = []
    for c in sorted(cpus):
        if out and c == int(out[-1].rpartition("-")[2]) + 1:
            out[-1] = f"{out[-1].partition('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def pinned(argv: Sequence[str], cpus: Iterable[int]) -> list[str]:
    """``argv`` run on ``cpus`` only (``taskset -c``; affinity passes to every process it forks or spawns, so a
    supervisor's workers and learner stay there too); ``argv`` itself when ``cpus`` is empty."""
    cpus = set(cpus)
    return ["taskset", "-c", cpu_list(cpus), *argv] if cpus else list(argv)


@dataclass
class ServerProc:
    """A server running as a child process on ``address``: with ``workers`` > 1 the supervisor of the workers
    and the learner process."""

    proc: subprocess.Popen[bytes]
    address: str
    started_s: float
    workers: int = 1

    @property
    def pid(self) -> int:
        """Process id of the server (the supervisor with several workers)."""
        return self.proc.pid

    def tree(self) -> list[ProcStat]:
        """The live processes of the server: itself and everything it started."""
        return process_tree(self.proc.pid)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the whole server so far: every process of its tree, and the ones it
        reaped (a worker restarted meanwhile)."""
        return tree_cpu_s(self.tree())

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds so far of each process of the tree by role (``server``, ``worker 0``, ``learner``)."""
        return {role_of(cmdline(s.pid)): s.cpu_s for s in self.tree()}

    def rss_bytes(self) -> int:
        """Resident set size of the server now: :func:`tree_rss_bytes`."""
        return tree_rss_bytes(self.proc.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a supervisor drains its workers), wait (bounded), SIGKILL if it did not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_ready(address: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until ``address`` accepts TCP connections and one gRPC channel to it connects (or the process
    died / timeout). Polls with plain sockets first: a new gRPC channel every half second for minutes (a long
    restart) left the sync client hung in a later call."""
    deadline = time.monotonic() + timeout
    host, _, port = address.rpartition(":")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"server on {address} not ready in {timeout}s")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    with grpc.insecure_channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=max(1.0, deadline - time.monotonic()))


def start_onramp(db: Path, ready_timeout: float = 60.0, config: Path | None = None,
                 module: Sequence[str] = ("server",), workers: int = 1, cpus: Iterable[int] = (),
                 all_workers: bool = True) -> ServerProc:
    """Start ``python -m server serve --workers N`` (or ``python -m <module...> serve``, e.g.
    ``("bench.floor_server", "--variant", "nolog")``) on a free port with database ``db`` (and config file
    ``config``, e.g. :func:`write_scenario_config`'s; None = built-in defaults, demo catalog), pinned to
    ``cpus`` when given; wait (at most ``ready_timeout`` seconds) until it accepts connections. ``workers`` 1
    is one server process; more (0 = one per core, the default of ``onramp serve``) a supervisor with its
    workers and the learner process. Returns once every worker listens (``all_workers``; else once the
    first one answers: :func:`wait_workers` waits for the others)."""
    port = free_port()
    t = time.perf_counter()
    extra = ["--config", str(config)] if config is not None else []
    argv = [PY, "-m", *module, "serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(db),
            "--allow-insecure-no-auth", "--workers", str(workers), *extra]
    proc = subprocess.Popen(pinned(argv, cpus), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        wait_ready(address, proc, ready_timeout)
        srv = ServerProc(proc, address, time.perf_counter() - t, workers or len(set(cpus) or os.sched_getaffinity(0)))
        if all_workers:
            wait_workers(srv, ready_timeout)
            srv.started_s = time.perf_counter() - t
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return srv


def wait_workers(srv: ServerProc, timeout: float = 60.0) -> None:
    """Block until every worker of ``srv`` listens on its port: worker 0 serves first, the others join it."""
    port = int(srv.address.rpartition(":")[2])
    deadline = time.monotonic() + timeout
    while listeners(port) < srv.workers:
        if srv.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{listeners(port)} of {srv.workers} workers listen on {srv.address}")
        time.sleep(0.05)


def listening_in(table: str, port: int) -> int:
    """Sockets listening on ``port`` in a ``/proc/net/tcp`` table (state 0A; a bound socket that does not
    listen, as the supervisor's reserved one, is not counted)."""
    n = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
            n += 1
    return n


def listeners(port: int) -> int:
    """Sockets listening on ``port`` on this machine (IPv4 and IPv6): one per worker of ``onramp serve``."""
    total = 0
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            total += listening_in(Path(f"/proc/net/{name}").read_text(), port)
    return total


@dataclass(frozen=True)
class OnrampUnderTest:
    """One Onramp server of a serving run: its report name, worker count, process and database."""

    name: str
    workers: int
    server: ServerProc
    db: Path


def onramp_name(index: int, workers: int) -> str:
    """The report name of the ``index``-th Onramp server of a run: ``onramp`` for the first (the one every
    ratio to bare is of), ``onramp_2w`` for one with 2 workers after it."""
    return "onramp" if index == 0 else f"onramp_{workers}w"


def parse_workers(text: str) -> tuple[int, ...]:
    """``--workers 1,2`` -> (1, 2): the worker counts of the Onramp servers measured side by side."""
    try:
        out = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--workers: expected counts like 1,2 (got {text!r})") from None
    if not out or any(w < 1 for w in out) or len(set(out)) != len(out):
        raise ValueError(f"--workers: expected distinct counts >= 1 (got {text!r})")
    return out


def start_onramps(scenario: str, directory: Path, workers: Sequence[int], cpus: CpuSplit) -> list[OnrampUnderTest]:
    """One Onramp server per entry of ``workers`` (each on its own database in ``directory``), pinned to
    ``cpus.server``; the servers already started are stopped when one fails to start."""
    out: list[OnrampUnderTest] = []
    try:
        for i, w in enumerate(workers):
            db = directory / f"serving-{w}w.db"
            out.append(OnrampUnderTest(onramp_name(i, w), w, start_scenario_onramp(scenario, db, workers=w,
                                                                                   cpus=cpus.server), db))
    except BaseException:
        for o in out:
            o.server.stop()
        raise
    return out


@contextlib.contextmanager
def pinned_here(cpus: Iterable[int]) -> Iterator[None]:
    """Run this process (and what it starts from now on without :func:`pinned`: the load generators) on
    ``cpus``; the previous affinity is restored on exit. Nothing changes when ``cpus`` is empty."""
    cpus = set(cpus)
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each role used between two :meth:`ServerProc.cpu_by_role` readings (a role missing
    before, e.g. a restarted worker, counts from 0)."""
    return {role: after[role] - before.get(role, 0.0) for role in after}


def measure_server_cpu(srv: ServerProc, load: Callable[[], dict], calls: Callable[[dict], int]) -> dict:
    """Run ``load()`` (a load generator's result dict) and add the server's CPU over it: whole-tree CPU per
    call (``server_cpu_us_per_call``, ``calls(result)`` calls) and each process's CPU seconds by role
    (``server_cpu_by_role_s``: ``worker 0``, ``worker 1``, ``learner``, ``server``)."""
    roles0, total0 = srv.cpu_by_role(), srv.cpu_s()
    res = load()
    total1, roles1 = srv.cpu_s(), srv.cpu_by_role()
    res["server_calls"] = max(1, calls(res))
    res["server_cpu_us_per_call"] = (total1 - total0) / res["server_calls"] * 1e6
    res["server_cpu_by_role_s"] = cpu_delta(roles0, roles1)
    return res


def role_cpu_per_call(runs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """CPU µs per call of each kind of process over ``runs`` (results of :func:`measure_server_cpu`): the
    ``workers`` together, the ``learner`` process, the ``server`` (the supervisor, or the one process)."""
    calls = 0
    cpu: dict[str, float] = {}
    for r in runs:
        calls += r.get("server_calls", 0)
        for role, s in r.get("server_cpu_by_role_s", {}).items():
            kind = "workers" if role.startswith("worker") else role
            cpu[kind] = cpu.get(kind, 0.0) + s
    return {kind: s / calls * 1e6 for kind, s in cpu.items()} if calls else {}


def worker_shares(runs: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each worker's share of the workers' CPU over ``runs`` (results of :func:`measure_server_cpu`): whether
    the load reached every worker. Empty for one server process."""
    totals: dict[str, float] = {}
    for r in runs:
        for role, s in r.get("server_cpu_by_role_s", {}).items():
            if role.startswith("worker"):
                totals[role] = totals.get(role, 0.0) + s
    whole = sum(totals.values())
    return {role: s / whole for role, s in sorted(totals.items())} if whole > 0 else {}


def start_bare(cpus: Iterable[int] = ()) -> ServerProc:
    """Start :mod:`bench.bare_server` on a free port (pinned to ``cpus`` when given); wait until it accepts."""
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen(pinned([PY, "-m", "bench.bare_server", "--port", str(port)], cpus), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    wait_ready(address, proc)
    return ServerProc(proc, address, time.perf_counter() - t)


def run_client(module: str, args: list[str], timeout: float = 600.0) -> dict:
    """Run the client ``python -m module`` in its own process with ``args``; return its last JSON line
    (a failing client raises with its stderr in the message)."""
    out = subprocess.run([PY, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{module} exited with {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def metrics_config(directory: Path) -> tuple[Path, int]:
    """A config file (in ``directory``) that turns on Onramp's Prometheus endpoint on a free port; (its path,
    the port)."""
    port = free_port()
    path = directory / "bench-metrics.toml"
    path.write_text(f"[metrics]\nenabled = true\nport = {port}\n", encoding="utf-8")
    return path, port


def scrape(port: int, name: str) -> float:
    """The value of the unlabelled series ``name`` on the Prometheus endpoint at 127.0.0.1:``port`` (0 when
    absent)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def run_loadgen(args: list[str], timeout: float = 600.0) -> dict:
    """Run :mod:`bench.loadgen` in its own process with ``args``; return its JSON result."""
    return run_client("bench.loadgen", args, timeout)


SCENARIOS = ("personalized", "capped")
DEMO_CATALOG = ROOT / "server" / "catalog" / "demo.toml"
HOUR_MS = 3_600_000
UNCAPPED = 1_000_000  # a per-day cap no benchmark run reaches
# Feature patterns of warm users (cycled by user index): varied contexts for the segmenter and the bandit,
# each feature used fewer than 5 times (the demo's feature_explored rule threshold) so no rule fires.
_FEATURE_MIX = (("reports", "automations", "dashboards"), ("integrations", "reports"), ("templates",),
                ("dashboards", "api", "reports", "custom_fields"))


def bench_catalog(demo: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The demo catalog (parsed TOML) with the limits lifted that would block repeated asks of one user:
    guardrails ``min_gap_minutes = 0`` and per-day caps (total, per channel) of :data:`UNCAPPED`; every step
    ``cooldown_hours = 0`` and ``max_per_day`` :data:`UNCAPPED`; and the experiment reduced to its tailored
    arm (share 1), so every warm user is decided by rules or the bandit rather than 45% generic / 10%
    holdout. Everything else (steps, core order, rules, personalisation thresholds, segments, rewards,
    bandit) stays as shipped."""
    doc = tomllib.loads(DEMO_CATALOG.read_text(encoding="utf-8")) if demo is None else json.loads(json.dumps(demo))
    g = doc.setdefault("guardrails", {})
    g["min_gap_minutes"] = 0
    g["max_per_day_total"] = UNCAPPED
    g["max_per_day_per_channel"] = {ch: UNCAPPED for ch in ("in_app", "email", "push")}
    for step in doc.get("steps", []):
        step["cooldown_hours"] = 0
        step["max_per_day"] = UNCAPPED
    for exp in doc.get("experiments", []):
        tailored = [a for a in exp.get("arms", []) if a.get("kind") == "tailored"][:1]
        if tailored:
            exp["arms"] = [{**tailored[0], "share": 1.0}]
    return doc


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """TOML text of a parsed document of the catalog's shape: top-level scalars, tables (one level of
    sub-tables) and arrays of tables; deeper values inline. ``tomllib.loads(to_toml(d)) == d``."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{_toml_key(k)}]"]
            lines += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in v.items() if not isinstance(b, dict)]
            for a, b in v.items():
                if isinstance(b, dict):
                    lines += ["", f"[{_toml_key(k)}.{_toml_key(a)}]"]
                    lines += [f"{_toml_key(c)} = {_toml_value(d)}" for c, d in b.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines += ["", f"[[{_toml_key(k)}]]"]
                lines += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in item.items()]
    return "\n".join(lines) + "\n"


def write_scenario_config(scenario: str, directory: Path) -> Path | None:
    """The config file Onramp is started with for ``scenario``: for ``personalized`` :func:`bench_catalog`
    written to ``directory/bench-catalog.toml`` (validated with the server's own parser first); for
    ``capped`` None (built-in defaults: the demo catalog as shipped)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    if scenario == "capped":
        return None
    from server.base.catalog import parse_catalog  # the server's validation: a bad override fails here, loudly

    doc = bench_catalog()
    parse_catalog(doc)
    path = directory / "bench-catalog.toml"
    path.write_text("# Onramp benchmark catalog: the demo catalog with caps, gaps and cooldowns lifted "
                    "(bench/common.py bench_catalog)\n" + to_toml(doc), encoding="utf-8")
    return path


def start_scenario_onramp(scenario: str, db: Path, ready_timeout: float = 60.0,
                          module: Sequence[str] = ("server",), workers: int = 1,
                          cpus: Iterable[int] = ()) -> ServerProc:
    """:func:`start_onramp` with ``scenario``'s config (written next to ``db``)."""
    return start_onramp(db, ready_timeout, write_scenario_config(scenario, db.parent), module, workers, cpus)


def warm_events(uid: str, i: int, now_ms: int) -> list[pb.Event]:
    """The event history of a personalised-scenario warm user: four sessions 30, 20, 8 and 1 hours ago (so
    at least two UTC days, gaps under the 24 h re-engagement rule), the three core steps completed in the
    first, and a few feature uses (pattern ``i`` of :data:`_FEATURE_MIX`, under 5 per feature) on web or
    mobile."""
    device = "mobile" if i % 3 == 0 else "desktop"
    channel = "ios" if device == "mobile" else "web"
    feats = _FEATURE_MIX[i % len(_FEATURE_MIX)]
    evs: list[pb.Event] = []
    for s, hours_ago in enumerate((30, 20, 8, 1)):
        ts = now_ms - hours_ago * HOUR_MS + i % 1000

        def ev(name: str, k: int, **kw: str) -> pb.Event:
            return pb.Event(event_id=f"w-{uid}-{s}-{k}", user_id=uid, name=name, timestamp_ms=ts + k,
                            channel=channel, device_type=device, **kw)

        evs.append(ev("session_start", 0))
        if s == 0:
            evs += [ev("step_completed", 1 + j, step_id=core) for j, core in
                    enumerate(("welcome", "profile_setup", "first_project"))]
        evs += [ev("feature_used", 10 + j, feature=f) for j, f in enumerate(feats)]
    return evs


def warm_users(address: str, n_users: int, prefix: str = "u", requests_per_user: int = 1,
               scenario: str = "capped") -> None:
    """Make ``n_users`` warm as in production: consent for tracking and personalization granted, events
    ingested (profiles exist), and ``requests_per_user`` GetNextStep decisions logged per user. ``capped``
    (the default, the earlier warm-up): one session of two events 50 minutes ago; ``personalized``: the
    history of :func:`warm_events`, past the personalisation threshold (>= 3 sessions on >= 2 days)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} (got {scenario!r})")
    now = int(time.time() * 1000)
    consent_ts = now - 3_600_000 if scenario == "capped" else now - 40 * HOUR_MS
    with grpc.insecure_channel(address) as ch:
        stub = pb_grpc.OnrampStub(ch)
        futs = []
        for i in range(n_users):
            uid = f"{prefix}{i}"
            for purpose in ("tracking", "personalization"):
                futs.append(stub.SetConsent.future(pb.ConsentRequest(
                    user_id=uid, purpose=purpose, granted=True, source="bench", timestamp_ms=consent_ts)))
            if len(futs) > 400:
                [f.result(timeout=60) for f in futs]
                futs = []
        [f.result(timeout=60) for f in futs]
        batch_events = []
        for i in range(n_users):
            uid = f"{prefix}{i}"
            if scenario == "personalized":
                batch_events += warm_events(uid, i, now)
                continue
            ts = now - 3_000_000 + i % 1000
            batch_events += [pb.Event(event_id=f"w-{uid}-0", user_id=uid, name="session_start", timestamp_ms=ts,
                                      channel="web", device_type="desktop"),
                             pb.Event(event_id=f"w-{uid}-1", user_id=uid, name="feature_used", timestamp_ms=ts + 1,
                                      channel="web", device_type="desktop", feature="reports")]
        batches = [pb.EventBatch(sequence=j, events=batch_events[k:k + 500])
                   for j, k in enumerate(range(0, len(batch_events), 500))]
        for _ack in stub.IngestEventBatches(iter(batches), timeout=600):
            pass
        for _ in range(requests_per_user):
            futs = []
            for i in range(n_users):
                futs.append(stub.GetNextStep.future(pb.NextStepRequest(user_id=f"{prefix}{i}",
                                                                       timestamp_ms=int(time.time() * 1000))))
                if len(futs) > 200:
                    [f.result(timeout=60) for f in futs]
                    futs = []
            [f.result(timeout=60) for f in futs]


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (the decisions table's ``timestamp_ms`` clock)."""
    return int(time.time() * 1000)


@contextlib.contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to Onramp's database ``db``, closed on exit; usable while the server runs (it
    writes in WAL mode). sqlite3's own ``with conn`` only ends a transaction, it does not close."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def decisions_by_reason(db: Path, since_ms: int = 0) -> dict[str, int]:
    """Rows of Onramp's decisions table per ``reason`` logged at or after ``since_ms``, most first (read-only;
    the server writes in WAL mode, so this works while it runs)."""
    with read_only(db) as conn:
        return {r: int(n) for r, n in conn.execute(
            "SELECT reason, count(*) FROM decisions WHERE timestamp_ms >= ? GROUP BY reason ORDER BY 2 DESC, 1",
            (since_ms,))}


def bandit_propensities(db: Path, since_ms: int = 0) -> dict[str, float]:
    """Among ``bandit`` decisions logged at or after ``since_ms``: how many, the share with a logged
    propensity below 1 (an exploring policy's true probability) and the min/max propensity."""
    with read_only(db) as conn:
        n, below, lo, hi = conn.execute(
            "SELECT count(*), sum(propensity < 1.0), min(propensity), max(propensity) FROM decisions "
            "WHERE reason = 'bandit' AND timestamp_ms >= ?", (since_ms,)).fetchone()
    return {"n": int(n or 0), "below_1": (below or 0) / n if n else 0.0, "min": lo or 0.0, "max": hi or 0.0}


def reasons_line(reasons: Mapping[str, int]) -> str:
    """``bandit 1,234 (97.1%), capped 12 (0.9%)``: a reasons count for a report."""
    total = sum(reasons.values()) or 1
    return ", ".join(f"{k} {v:,} ({100 * v / total:.1f}%)" for k, v in reasons.items()) or "none"


@dataclass(frozen=True)
class Summary:
    """Median and spread (min, max) of one figure over repeats."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, spec: str = ",.0f", unit: str = "") -> str:
        """``median [min..max] (n=N)``."""
        return f"{self.median:{spec}}{unit} [{self.low:{spec}}..{self.high:{spec}}] (n={self.n})"


def summarize(values: list[float]) -> Summary:
    """Median and min/max of ``values``."""
    return Summary(statistics.median(values), min(values), max(values), len(values))


def ratio_table(raw: dict[str, dict[str, list[dict]]], fields: tuple[str, ...]) -> dict[str, dict[str, Summary]]:
    """Per load (``raw[load][server]`` = one result dict per repeat): each server's ``fields`` summarised as
    ``<server>_<field>``, plus onramp/bare ratios per repeat of throughput and p99 (``throughput_ratio``,
    ``p99_ratio``) and, when ``server_cpu_us_per_call`` is among the fields, of CPU per call (``cpu_ratio``;
    repeats where the bare server's CPU time read 0 are left out: it counts in 10 ms ticks); the same ratios
    of any other server but bare (e.g. ``floor``) are prefixed with its name (``floor_p99_ratio``). An Onramp
    with more workers (``onramp_2w``, :func:`onramp_name`) also gets its CPU per call over the first Onramp's
    (``onramp_2w_cpu_vs_onramp``)."""
    table: dict[str, dict[str, Summary]] = {}
    for key, by in raw.items():
        row = {f"{name}_{f}": summarize([r[f] for r in runs]) for name, runs in by.items() for f in fields}
        for name in [n for n in by if n != "bare"]:  # onramp, and bench.floor_server's variants when measured
            prefix = "" if name == "onramp" else f"{name}_"
            pairs = list(zip(by[name], by["bare"]))
            row[f"{prefix}throughput_ratio"] = summarize([o["throughput"] / b["throughput"] for o, b in pairs])
            row[f"{prefix}p99_ratio"] = summarize([o["p99_ms"] / b["p99_ms"] for o, b in pairs])
            if "server_cpu_us_per_call" in fields:
                row[f"{prefix}cpu_ratio"] = summarize(
                    [o["server_cpu_us_per_call"] / b["server_cpu_us_per_call"] for o, b in pairs
                     if b["server_cpu_us_per_call"] > 0] or [float("nan")])
        for name in [n for n in by if n.startswith("onramp_")]:  # more workers, against the first onramp
            if "server_cpu_us_per_call" in fields:
                row[f"{name}_cpu_vs_onramp"] = summarize(
                    [o["server_cpu_us_per_call"] / b["server_cpu_us_per_call"] for o, b in zip(by[name], by["onramp"])
                     if b["server_cpu_us_per_call"] > 0] or [float("nan")])
        table[key] = row
    return table


def load_lines(key: str, row: Mapping[str, Summary], names: Sequence[str]) -> list[str]:
    """Report lines of one load (``key``) of a :func:`ratio_table` row: each server's throughput, latency,
    errors and (when measured) server CPU per call, then each one's ratios to ``bare`` (the last name)."""
    width = max(6, *(len(n) for n in names))
    out = []
    for name in names:
        cpu = row.get(f"{name}_server_cpu_us_per_call")
        out.append(f"  {key:11s} {name:{width}s} throughput {row[f'{name}_throughput'].fmt(',.0f', ' req/s')}  "
                   f"p50 {row[f'{name}_p50_ms'].fmt('.2f', ' ms')}  p95 {row[f'{name}_p95_ms'].fmt('.2f', ' ms')}"
                   f"  p99 {row[f'{name}_p99_ms'].fmt('.2f', ' ms')}  errors {row[f'{name}_errors'].median:.0f}"
                   + (f"  server CPU/call {cpu.fmt(',.0f', ' us')}" if cpu else ""))
    for name in names[:-1]:
        prefix = "" if name == "onramp" else f"{name}_"
        cpu_ratio = row.get(f"{prefix}cpu_ratio")
        out.append(f"  {key:11s} ratio  throughput {name}/bare {row[f'{prefix}throughput_ratio'].fmt('.2f', 'x')}  "
                   f"p99 {name}/bare {row[f'{prefix}p99_ratio'].fmt('.2f', 'x')}"
                   + (f"  CPU/call {name}/bare {cpu_ratio.fmt('.2f', 'x')}" if cpu_ratio else ""))
    return out


def workers_heading(workers: Mapping[str, int], cpus: str) -> str:
    """``onramp = 1 worker, onramp_2w = 2 workers; CPUs: not pinned`` for a report's first line."""
    return (", ".join(f"{n} = {w} worker{'s' if w > 1 else ''}" for n, w in workers.items())
            + f"; CPUs: {cpus}")


def worker_report(key: str, row: Mapping[str, Summary], runs: Mapping[str, list[dict]],
                  workers: Mapping[str, int]) -> list[str]:
    """Report lines of one load (``key``) about the Onramp servers' workers, when a run has more than one
    worker: each one's CPU per call over the first Onramp's, its throughput per worker, and how the workers'
    CPU split between them (whether the load reached every worker)."""
    if len(workers) == 1 and max(workers.values()) == 1:
        return []
    out = []
    for name, w in workers.items():
        t = row[f"{name}_throughput"]
        parts = [f"throughput per worker {Summary(t.median / w, t.low / w, t.high / w, t.n).fmt(',.0f', ' req/s')}"]
        if name != "onramp":
            parts.insert(0, f"CPU/call {name}/onramp {row[f'{name}_cpu_vs_onramp'].fmt('.2f', 'x')}")
        shares = worker_shares(runs[name])
        if w > 1:
            parts.append("workers' CPU split " + (", ".join(f"{r} {100 * v:.0f}%" for r, v in shares.items())
                                                  or "not measured"))
            by_kind = role_cpu_per_call(runs[name])
            parts.append("CPU/call by process " + ", ".join(f"{k} {by_kind.get(k, 0.0):,.0f} us"
                                                             for k in ("workers", "learner", "server")))
        out.append(f"  {key:11s} {name} ({w} worker{'s' if w > 1 else ''}): " + "  ".join(parts))
    return out


def load_average() -> str:
    """The 1/5/15-minute load average of the machine."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
