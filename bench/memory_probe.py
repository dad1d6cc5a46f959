"""Where a server's memory goes: runs the real server assembly (``server.ops.app.build_server``, as
``onramp serve`` does) and, on SIGUSR1, writes a breakdown of its in-memory state to a JSON file: the deep
size of every attribute of the pipeline and the decision engine (expanded one level into Onramp's own
objects, e.g. ``engine.segments.*``), plus, when started with ``--tracemalloc``, the top allocation sites.

Deep sizes walk ``gc.get_referents`` from each attribute in turn with one shared "seen" set, so an object
reachable from two parts (a user id string that keys both the profiles and the consent book) is counted once,
in the first part walked (profiles first). Functions, methods, classes, modules, threads, locks, tasks,
coroutines and database connections are not followed. Run ``python -m bench.memory_probe --port P --db D --out OUT.json`` and drive
it with :mod:`bench.populate`; ``python -m bench.memory_probe --breakdown --users N --events E`` does it all.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import PY, ROOT, free_port, rss_bytes, run_client, wait_ready

LEAF_TYPES: tuple[type, ...] = (type, types.ModuleType, types.FunctionType, types.MethodType,
                                types.BuiltinFunctionType, types.CodeType, types.FrameType, threading.Thread,
                                sqlite3.Connection, asyncio.AbstractEventLoop, asyncio.Task,
                                types.CoroutineType, asyncio.Future)
OWN_MODULES = ("server.", "bandits.")
_FIRST: dict[str, Any] = {}  # the first tracemalloc snapshot (the empty server), later ones are compared to it


def _skip(o: object) -> bool:
    return isinstance(o, LEAF_TYPES) or type(o).__name__ in ("lock", "RLock", "_thread.lock", "Condition")


def deep_size(root: object, seen: set[int]) -> tuple[int, int]:
    """(bytes, objects) reachable from ``root`` that are not in ``seen`` (which is updated)."""
    total = count = 0
    stack = [root]
    while stack:
        o = stack.pop()
        i = id(o)
        if i in seen or _skip(o):
            continue
        seen.add(i)
        total += sys.getsizeof(o)
        count += 1
        stack.extend(gc.get_referents(o))
        if type(o) is dict:  # CPython does not traverse a dict's str keys (they cannot form cycles)
            stack.extend(o)
    return total, count


def attributes(obj: object) -> Iterator[tuple[str, Any]]:
    """The instance attributes of ``obj`` (``__dict__`` and ``__slots__``)."""
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names += [n for n in getattr(cls, "__slots__", ()) if n not in ("__dict__", "__weakref__")]
    for n in dict.fromkeys(names):
        if hasattr(obj, n):
            yield n, getattr(obj, n)


def _own(o: object) -> bool:
    return type(o).__module__.startswith(OWN_MODULES) and not _skip(o)


def breakdown(parts: list[tuple[str, object]], depth: int = 1) -> list[dict]:
    """Deep size of each named part's attributes (Onramp objects expanded ``depth`` more levels), walked in
    order with one shared seen-set; rows sorted by bytes, largest first."""
    seen: set[int] = set()
    rows: list[dict] = []

    def visit(name: str, o: object, d: int) -> None:
        if id(o) in seen:
            return
        if _own(o) and d >= 0 and not isinstance(o, (dict, list, set, tuple)):
            seen.add(id(o))
            rows.append({"part": name, "bytes": sys.getsizeof(o), "objects": 1, "type": type(o).__name__})
            for a, v in attributes(o):
                visit(f"{name}.{a}", v, d - 1)
            return
        b, c = deep_size(o, seen)
        n = len(o) if hasattr(o, "__len__") and not isinstance(o, (str, bytes)) else None
        rows.append({"part": name, "bytes": b, "objects": c, "type": type(o).__name__, "len": n})

    for name, o in parts:
        visit(name, o, depth)
    rows.sort(key=lambda r: -r["bytes"])
    return rows


def malloc_info() -> dict[str, int]:
    """glibc ``mallinfo2``: bytes the C heap has handed out (``in_use``: SQLite's page cache, gRPC core,
    large Python objects) and free bytes it holds (``free_held``: fragmentation); empty if unavailable."""
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = MallInfo2
    m = fn()
    return {"in_use": m.uordblks + m.hblkhd, "free_held": m.fordblks, "mmapped": m.hblkhd}


def sqlite_memory_bytes() -> int:
    """Bytes SQLite has allocated in this process (page caches of all connections, schema, statements):
    ``sqlite3_status64(SQLITE_STATUS_MEMORY_USED)`` of the shared library ``_sqlite3`` is linked to; -1 if
    that library cannot be found."""
    name = ctypes.util.find_library("sqlite3")
    if not name:
        return -1
    lib = ctypes.CDLL(name)
    cur, high = ctypes.c_int64(), ctypes.c_int64()
    lib.sqlite3_status64(0, ctypes.byref(cur), ctypes.byref(high), 0)
    return int(cur.value)


def snapshot(server: Any, out: Path, top: int) -> None:
    """Write the breakdown (and tracemalloc's top sites, if tracing) of ``server`` to ``out``."""
    from server.store.user_state import profile_count

    gc.collect()
    rt = server.runtime
    engine = server.api.service.decisions
    pipe = rt.pipeline
    parts: list[tuple[str, object]] = [(f"pipeline.{a}", v) for a, v in attributes(pipe)
                                       if a not in ("store", "writer", "_loop", "_reader")]
    parts += [(f"engine.{a}", v) for a, v in attributes(engine) if a not in ("pipeline", "catalog", "metrics")]
    parts += [("catalog", rt.catalog), ("metrics", rt.metrics)]
    t = time.perf_counter()
    rows = breakdown(parts, depth=1)
    res: dict[str, Any] = {"rss": rss_bytes(), "profiles": profile_count(rt.store),
                           "walk_s": time.perf_counter() - t, "parts": rows,
                           "walked_bytes": sum(r["bytes"] for r in rows), "malloc": malloc_info(),
                           "sqlite_memory_used": sqlite_memory_bytes(), "python_blocks": sys.getallocatedblocks()}
    gc.collect()  # the walk's seen-set lives in a closure cycle
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, __file__)])
        res["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        first = _FIRST.setdefault("snapshot", snap)
        res["tracemalloc_top"] = [{"where": str(s.traceback), "bytes": s.size_diff, "count": s.count_diff}
                                  for s in snap.compare_to(first, "lineno")[:top]]
    out.write_text(json.dumps(res, indent=1))


async def serve(port: int, db: Path, out: Path, top: int) -> None:
    """Run the server (default config, no auth, 127.0.0.1:``port``) until SIGTERM; SIGUSR1 writes ``out``."""
    from server.ops.app import build_server
    from server.base.config import load_config

    config = load_config(None).with_server(host="127.0.0.1", port=port, db_path=str(db))
    server = build_server(config, allow_insecure_no_auth=True)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: snapshot(server, out, top))
    await stop.wait()
    await server.stop(30)


def decide_all(address: str, users: int) -> None:
    """One GetNextStep per user (decisions logged, shown history and caches filled as in production)."""
    import grpc

    from onramp.v1 import onramp_pb2 as pb
    from onramp.v1 import onramp_pb2_grpc as pb_grpc

    async def go() -> None:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.OnrampStub(ch)
            nxt = iter(range(users))

            async def worker() -> None:
                for i in nxt:
                    await stub.GetNextStep(pb.NextStepRequest(user_id=f"m{i}", timestamp_ms=int(time.time() * 1000)),
                                           timeout=120)
            await asyncio.gather(*(worker() for _ in range(128)))
    asyncio.run(go())


def measure(users: int, events: int, decisions: bool, trace: bool, top: int = 30) -> dict:
    """Start a probe server on a fresh database, build ``users`` profiles from ``events`` events through the
    API, optionally one GetNextStep per user, and return the breakdown (empty server first, then loaded)."""
    with tempfile.TemporaryDirectory(prefix="onramp-probe-") as tmp:
        db, out = Path(tmp) / "probe.db", Path(tmp) / "probe.json"
        port = free_port()
        cmd = [PY, *(["-X", "tracemalloc=1"] if trace else []), "-m", "bench.memory_probe", "--port", str(port),
               "--db", str(db), "--out", str(out), "--top", str(top)]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = f"127.0.0.1:{port}"

        def snap() -> dict:
            out.unlink(missing_ok=True)
            proc.send_signal(signal.SIGUSR1)
            for _ in range(6000):
                if out.exists():
                    time.sleep(0.2)
                    try:
                        return json.loads(out.read_text())
                    except json.JSONDecodeError:
                        continue
                time.sleep(0.1)
            raise TimeoutError("no snapshot written")
        try:
            wait_ready(address, proc, 120)
            empty = snap()
            build = run_client("bench.populate", ["--target", address, "--users", str(users), "--events",
                                                  str(events), "--prefix", "m"], timeout=7200)
            loaded = snap()
            res = {"users": users, "events": events, "build": build, "empty": empty, "loaded": loaded}
            if decisions:
                decide_all(address, users)
                res["decided"] = snap()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    return res


def table(res: dict, key: str, top: int = 25) -> list[str]:
    """Lines: the parts of snapshot ``key`` that grew most over the empty server, bytes per user."""
    users = res["users"]
    base = {r["part"]: r["bytes"] for r in res["empty"]["parts"]}
    snap = res[key]
    rows = sorted(snap["parts"], key=lambda r: -(r["bytes"] - base.get(r["part"], 0)))
    grown = sum(r["bytes"] - base.get(r["part"], 0) for r in snap["parts"])
    mal, base_mal = snap.get("malloc", {}), res["empty"].get("malloc", {})
    extra = [f"  C heap in use {(mal.get('in_use', 0) - base_mal.get('in_use', 0)) / users:,.0f} B/user, "
             f"free but held {(mal.get('free_held', 0) - base_mal.get('free_held', 0)) / users:,.0f} B/user; "
             f"SQLite memory {snap.get('sqlite_memory_used', 0) / 2**20:,.1f} MiB "
             f"(empty {res['empty'].get('sqlite_memory_used', 0) / 2**20:,.1f} MiB)"]
    if "traced_bytes" in snap:
        extra.append(f"  tracemalloc: Python allocations grew "
                     f"{(snap['traced_bytes'] - res['empty']['traced_bytes']) / users:,.0f} B/user")
    out = [f"{key}: RSS {snap['rss'] / 2**20:,.1f} MiB (empty {res['empty']['rss'] / 2**20:,.1f} MiB, "
           f"{(snap['rss'] - res['empty']['rss']) / users:,.0f} B/user); objects walked grew "
           f"{grown / 2**20:,.1f} MiB = {grown / users:,.0f} B/user"]
    out += extra
    for r in rows[:top]:
        d = r["bytes"] - base.get(r["part"], 0)
        out.append(f"  {r['part']:<45} {d / users:>8,.0f} B/user  {r['bytes'] / 2**20:>9,.1f} MiB  "
                   f"{r['objects']:>10,} objs  len={r.get('len')}  ({r['type']})")
    for t in snap.get("tracemalloc_top", [])[:15]:
        out.append(f"  traced growth {t['bytes'] / users:>8,.0f} B/user  {t['count']:>9,} blocks  {t['where']}")
    return out


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--breakdown", action="store_true", help="build users through the API and print the breakdown")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--decisions", action="store_true", help="also one GetNextStep per user, then a third snapshot")
    ap.add_argument("--tracemalloc", action="store_true", help="also trace allocation sites (slower)")
    ap.add_argument("--json", default=None, help="write the whole result here")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--db", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    if a.breakdown:
        res = measure(a.users, a.events, a.decisions, a.tracemalloc, a.top)
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        for key in ("loaded", "decided"):
            if key in res:
                print("\n".join(table(res, key)))
        return
    if not (a.port and a.db and a.out):
        ap.error("serving a probe needs --port, --db and --out (or use --breakdown)")
    asyncio.run(serve(a.port, Path(a.db), Path(a.out), a.top))


if __name__ == "__main__":
    main()
