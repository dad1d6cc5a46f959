"""A legitimate client's GetNextStep latency while another client floods the server with random API keys.

The real server (``python -m server serve``) runs with two PBKDF2 keys in ``[auth]``: ``backend`` (the
legitimate client's, verified during its warm-up) and ``privacy-desk`` (never presented, so every unknown key
could be it and would need a PBKDF2 check). The legitimate client (``legit``, its own process) asks
GetNextStep back to back, one call in flight, and reports p50/p99; it is measured alone, then while the flood
client (``flood``, its own process: grpc.aio, N calls in flight, a new random key per call) runs. Variants:
``default`` (the shipped ``[limits]``: a budget of failed authentications per client host, failures answered
about 250 ms late) and ``limits-off`` (``auth_failures_per_second = 0``, ``auth_failure_delay_ms = 0``: every
unknown key is checked with PBKDF2 against ``privacy-desk``, answered at once). Reported per variant: the
legitimate p50/p99 alone and under the flood, the p99 ratio, the flood's calls and status codes, and the
server's CPU seconds (``/proc/PID/stat``) while the legitimate client ran.

Run: ``python -m bench auth`` (the ``default`` variant, see bench/__main__.py) or
``python -m bench.auth_flood run [--variants default,limits-off] [--concurrency N] [--repeats N] [--duration S]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import PY, ROOT, ServerProc, Summary, start_onramp, summarize
from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from server.api.auth import hash_key

VARIANTS = {"default": "", "limits-off": "[limits]\nauth_failures_per_second = 0\nauth_failure_delay_ms = 0\n"}
FLOOD_CONCURRENCY = 8


def write_config(directory: Path, variant: str, backend_key: str) -> Path:
    """The server config of ``variant``: the two PBKDF2 keys, and ``[limits]`` as the variant says."""
    path = directory / f"auth-{variant}.toml"
    path.write_text(
        "[auth]\nkeys = [\n"
        f'  {{ name = "backend", hash = "{hash_key(backend_key, "pbkdf2")}", roles = ["ingest", "decide"] }},\n'
        f'  {{ name = "privacy-desk", hash = "{hash_key(generate_unused_key(), "pbkdf2")}", roles = ["admin"] }},\n'
        "]\n" + VARIANTS[variant], encoding="utf-8")
    return path


def generate_unused_key() -> str:
    """A key nobody presents (the ``privacy-desk`` one)."""
    return "onr_" + secrets.token_urlsafe(32)


# -- the two clients, each in its own process ---------------------------------------------------------------

def legit(address: str, key: str, duration: float, warmup: int = 20) -> dict:
    """GetNextStep back to back with a valid key for ``duration`` seconds after ``warmup`` calls (the first
    verifies the key); p50/p99/max in ms of every measured call (a failure counts with its time to fail)."""
    md = (("x-api-key", key),)
    lat: list[float] = []
    errors: dict[str, int] = {}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.OnrampStub(channel)
        for i in range(warmup):
            stub.GetNextStep(pb.NextStepRequest(user_id=f"legit-{i % 50}"), metadata=md, timeout=30)
        end = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                stub.GetNextStep(pb.NextStepRequest(user_id=f"legit-{i % 50}"), metadata=md, timeout=10)
            except grpc.RpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1
            lat.append(time.perf_counter() - t0)
            i += 1
    a = np.asarray(lat) * 1000.0
    return {"calls": len(lat), "errors": errors, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


async def flood(address: str, concurrency: int, max_s: float) -> dict:
    """GetNextStep with a new random key per call, ``concurrency`` in flight, until stdin closes (or
    ``max_s``); prints ``ready`` once the first answer came back. Returns the calls made and their codes."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)), daemon=True).start()
    loop.call_later(max_s, stop.set)
    codes: dict[str, int] = {}
    first = asyncio.Event()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.OnrampStub(channel)

        async def worker() -> None:
            while not stop.is_set():
                md = (("x-api-key", "onr_" + secrets.token_urlsafe(24)),)
                try:
                    await stub.GetNextStep(pb.NextStepRequest(user_id="x"), metadata=md, timeout=30)
                    code = "OK"
                except grpc.aio.AioRpcError as err:
                    code = err.code().name
                codes[code] = codes.get(code, 0) + 1
                if not first.is_set():
                    first.set()
                    print("ready", flush=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    calls = sum(codes.values())
    return {"calls": calls, "calls_per_s": calls / elapsed, "codes": codes}


# -- the benchmark ------------------------------------------------------------------------------------------

def _legit_run(address: str, key: str, duration: float) -> dict:
    out = subprocess.run([PY, "-m", "bench.auth_flood", "legit", "--address", address, "--key", key,
                          "--duration", str(duration)], cwd=ROOT, capture_output=True, text=True,
                         timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"legit client exited with {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(server: ServerProc, key: str, duration: float, flood_concurrency: int = 0) -> dict:
    """One legitimate run of ``duration`` seconds, alone or beside a flood client with ``flood_concurrency``
    calls in flight; the server's CPU seconds (all its processes) while it ran."""
    address = server.address
    flooder = None
    if flood_concurrency:
        flooder = subprocess.Popen([PY, "-m", "bench.auth_flood", "flood", "--address", address,
                                    "--concurrency", str(flood_concurrency), "--max-s", str(duration + 60)],
                                   cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert flooder.stdout is not None and flooder.stdin is not None
        if flooder.stdout.readline().strip() != "ready":
            flooder.kill()
            raise RuntimeError("flood client did not start")
        time.sleep(0.5)  # past the failure budget's burst: the steady state of the flood
    try:
        cpu0 = server.cpu_s()
        res = _legit_run(address, key, duration)
        res["server_cpu_s"] = server.cpu_s() - cpu0
    finally:
        if flooder is not None:
            out, _ = flooder.communicate(input="", timeout=60)  # stdin closed: the flood stops
    if flooder is not None:
        res["flood"] = json.loads(out.strip().splitlines()[-1])
    return res


def run(quick: bool = False, repeats: int = 3, duration: float | None = None, variants: tuple[str, ...] = ("default",),
        concurrency: int = FLOOD_CONCURRENCY) -> dict:
    """Per variant: ``repeats`` pairs of legitimate runs, alone then under the flood; medians [min..max]."""
    duration = duration if duration is not None else (1.0 if quick else 3.0)
    key = generate_unused_key()
    raw: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="onramp-bench-auth-") as tmp:
        for variant in variants:
            server = start_onramp(Path(tmp) / f"{variant}.db", config=write_config(Path(tmp), variant, key))
            try:
                runs: dict[str, list[dict]] = {"alone": [], "flood": []}
                for _ in range(repeats):
                    runs["alone"].append(measure(server, key, duration))
                    runs["flood"].append(measure(server, key, duration, concurrency))
                raw[variant] = runs
            finally:
                server.stop()
    table = {variant: summary(runs) for variant, runs in raw.items()}
    return {"duration_s": duration, "repeats": repeats, "flood_concurrency": concurrency, "table": table,
            "raw": raw}


def summary(runs: dict[str, list[dict]]) -> dict[str, Summary]:
    """Medians of one variant's runs, and the p99 ratio flood/alone per repeat."""
    row = {f"{phase}_{f}": summarize([r[f] for r in runs[phase]]) for phase in ("alone", "flood")
           for f in ("p50_ms", "p99_ms", "max_ms", "calls", "server_cpu_s")}
    row["p99_ratio"] = summarize([f["p99_ms"] / a["p99_ms"] for a, f in zip(runs["alone"], runs["flood"])])
    row["flood_calls_per_s"] = summarize([r["flood"]["calls_per_s"] for r in runs["flood"]])
    return row


def report(res: dict) -> list[str]:
    """Human-readable lines of a :func:`run` result."""
    out = [f"auth: legitimate GetNextStep (1 in flight, PBKDF2 key verified at warm-up) alone and beside a flood "
           f"of random keys ({res['flood_concurrency']} in flight), {res['duration_s']} s per run, medians "
           f"[min..max] of {res['repeats']} repeats"]
    for variant, row in res["table"].items():
        codes: dict[str, int] = {}
        for r in res["raw"][variant]["flood"]:
            for code, n in r["flood"]["codes"].items():
                codes[code] = codes.get(code, 0) + n
        for phase in ("alone", "flood"):
            out.append(f"  {variant:9s} {phase:5s}  p50 {row[f'{phase}_p50_ms'].fmt('.2f', ' ms')}  "
                       f"p99 {row[f'{phase}_p99_ms'].fmt('.2f', ' ms')}  max {row[f'{phase}_max_ms'].fmt('.1f', ' ms')}"
                       f"  calls {row[f'{phase}_calls'].fmt(',.0f')}  "
                       f"server CPU {row[f'{phase}_server_cpu_s'].fmt('.2f', ' s')}")
        out.append(f"  {variant:9s} ratio  p99 flood/alone {row['p99_ratio'].fmt('.2f', 'x')}  flood "
                   f"{row['flood_calls_per_s'].fmt(',.0f', ' calls/s')}, codes {json.dumps(codes, sort_keys=True)}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``legit`` / ``flood``: the two client processes; ``run``: the benchmark on its own."""
    ap = argparse.ArgumentParser(prog="python -m bench.auth_flood", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("legit")
    lg.add_argument("--address", required=True)
    lg.add_argument("--key", required=True)
    lg.add_argument("--duration", type=float, required=True)
    fl = sub.add_parser("flood")
    fl.add_argument("--address", required=True)
    fl.add_argument("--concurrency", type=int, default=FLOOD_CONCURRENCY)
    fl.add_argument("--max-s", type=float, default=60.0)
    rn = sub.add_parser("run")
    rn.add_argument("--quick", action="store_true")
    rn.add_argument("--repeats", type=int, default=3)
    rn.add_argument("--duration", type=float, default=None)
    rn.add_argument("--variants", default="default", help=f"comma-separated, of {list(VARIANTS)}")
    rn.add_argument("--concurrency", type=int, default=FLOOD_CONCURRENCY, help="the flood's calls in flight")
    a = ap.parse_args(argv)
    if a.cmd == "legit":
        print(json.dumps(legit(a.address, a.key, a.duration)))
    elif a.cmd == "flood":
        print(json.dumps(asyncio.run(flood(a.address, a.concurrency, a.max_s))), flush=True)
    else:
        variants = tuple(v for v in a.variants.split(",") if v)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            ap.error(f"--variants: unknown {unknown[0]!r} (expected names of {list(VARIANTS)})")
        print("\n".join(report(run(a.quick, a.repeats, a.duration, variants, a.concurrency))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
