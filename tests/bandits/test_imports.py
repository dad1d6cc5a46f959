"""bandits/ stays pure: it imports only numpy, the standard library and itself (decision workers import it, and
they load no River)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ALLOWED = {"numpy", "bandits"} | set(sys.stdlib_module_names)


def test_bandits_imports_only_numpy_and_stdlib():
    root = Path(__file__).resolve().parents[2] / "bandits"
    seen = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                seen |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                seen.add(node.module.split(".")[0])
    assert seen and seen <= ALLOWED, seen - ALLOWED
