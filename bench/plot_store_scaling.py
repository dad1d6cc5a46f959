"""Plot the writer's CPU per stored event against the events stored, from ``bench.store_scaling --json``
files (one line per variant of each file, labelled with the file's name when there are several; ``PATH:V1,V2``
keeps only those variants of a file), into a PNG for docs/benchmarks.md. Needs matplotlib. Run:
``python -m bench.plot_store_scaling store.json [more.json:v1-uuid ...] --out docs/store_scaling.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"uuid": "dedupe window, uuid4 ids", "ordered": "dedupe window, ordered ids",
          "v1-uuid": "unique event_id index, uuid4 ids", "v1-ordered": "unique event_id index, ordered ids"}


def plot(runs: dict[str, list[dict]], out: Path, title: str) -> None:
    """One line per run and variant: CPU µs per event of each slice, at the events stored at its end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for run, rows in runs.items():
        for variant in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == variant]
            label = LABELS.get(variant, variant) + (f" ({run})" if len(runs) > 1 else "")
            ax.plot([r["stored"] / 1e6 for r in mine], [r["cpu_us_per_event"] for r in mine], marker="o",
                    markersize=3, label=label)
    ax.set_xlabel("events stored (millions)")
    ax.set_ylabel("writer CPU per event (µs)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def read_runs(args: list[str]) -> dict[str, list[dict]]:
    """The rows of each ``PATH`` or ``PATH:VARIANT,...`` (only those variants), by the file's name."""
    runs: dict[str, list[dict]] = {}
    for arg in args:
        name, _, only = arg.partition(":")
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"{name}: no such file (expected a JSON file of python -m bench.store_scaling --json)")
        keep = {v for v in only.split(",") if v}
        runs[path.stem] = [r for r in json.loads(path.read_text()) if not keep or r["variant"] in keep]
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plot_store_scaling", description=__doc__)
    ap.add_argument("json", nargs="+", help="outputs of python -m bench.store_scaling --json (PATH or PATH:VARIANTS)")
    ap.add_argument("--out", type=Path, default=Path("docs/store_scaling.png"))
    ap.add_argument("--title", default="bench.store_scaling: writer CPU per stored event as the log grows")
    a = ap.parse_args(argv)
    try:
        runs = read_runs(a.json)
    except ValueError as e:
        ap.error(str(e))
    if not any(runs.values()):
        ap.error("no rows in the given files")
    plot(runs, a.out, a.title)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
