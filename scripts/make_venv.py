"""Build the virtualenv of `make serve` and `make test` (run by make: `python3 scripts/make_venv.py .venv`).

Several make targets may start at once on a fresh clone (`make serve` in one terminal, `make test` in
another): each waits for an exclusive lock on ``<venv>.lock`` and, once it holds it, builds only if the
stamp ``<venv>/.installed`` is missing or older than a pyproject.toml. So one of them builds and the
others reuse its venv, instead of two pip runs writing the same files.

A venv cannot be built elsewhere and renamed (its scripts name their interpreter by absolute path), hence
the lock; ``fcntl`` needs nothing beyond Python.
"""
from __future__ import annotations

import argparse
import fcntl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = (ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml")
STAMP = ".installed"


def up_to_date(venv: Path) -> bool:
    """Whether the stamp exists and is newer than every pyproject.toml."""
    stamp = venv / STAMP
    if not stamp.is_file():
        return False
    built = stamp.stat().st_mtime
    return all(dep.stat().st_mtime <= built for dep in DEPENDENCIES)


def build(venv: Path, python: str) -> None:
    """Create the venv and install Onramp (editable) with its test extras, then write the stamp."""
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", ".[test]"], check=True, cwd=ROOT)
    (venv / STAMP).touch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", type=Path, help="the virtualenv directory (e.g. .venv)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to build it with")
    args = parser.parse_args(argv)
    venv: Path = args.venv if args.venv.is_absolute() else ROOT / args.venv
    with open(f"{venv}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another make is building {args.venv} ...", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if up_to_date(venv):
            return 0
        try:
            build(venv, args.python)
        except subprocess.CalledProcessError as exc:
            print(f"make_venv: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
