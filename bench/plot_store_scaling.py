"""Plot the writer's CPU per stored event against the events stored, from ``bench.store_scaling --json``
files (one line per variant of each file, labelled with the file's name when there are several), into a PNG for docs/benchmarks.md. Needs matplotlib. Run:
``python -m bench.plot_store_scaling store.json [more.json ...] --out docs/store_scaling.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {"uuid": "this layout, uuid4 ids", "ordered": "this layout, ordered ids",
          "v1-uuid": "before (unique event_id index), uuid4 ids", "v1-ordered": "before, ordered ids"}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.plot_store_scaling", description=__doc__)
    ap.add_argument("json", nargs="+", type=Path, help="outputs of python -m bench.store_scaling --json")
    ap.add_argument("--out", type=Path, default=Path("docs/store_scaling.png"))
    ap.add_argument("--title", default="bench.store_scaling: writer CPU per stored event as the log grows")
    a = ap.parse_args(argv)
    runs = {path.stem: json.loads(path.read_text()) for path in a.json}
    if not any(runs.values()):
        ap.error("no rows in the given files")
    plot(runs, a.out, a.title)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
