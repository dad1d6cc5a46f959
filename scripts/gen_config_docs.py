"""Generate docs/config-reference.md, the reference of every config key (run: `make config-docs`).

The text comes from the config dataclasses and server/ops/config_keys.py (server/ops/config_reference.py);
tests/test_config_reference_fresh.py fails when the committed file no longer matches them.
"""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "config-reference.md"


def main() -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's server/, whichever checkout the venv was installed from
    from server.ops.config_reference import ReferenceError, render

    try:
        text = render()
    except ReferenceError as exc:
        print(f"gen_config_docs: {exc}", file=sys.stderr)
        return 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
