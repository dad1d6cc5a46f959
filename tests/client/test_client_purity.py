"""onramp_client is what backend services install: it must import only grpcio, protobuf and the stubs."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "client"
FORBIDDEN = ("server", "bandits", "bench", "river", "numpy", "sqlite_utils", "pyarrow", "prometheus_client")


def test_importing_the_client_loads_no_server_dependencies() -> None:
    code = ("import sys, onramp_client; from onramp_client import OnrampClient; "
            f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))")
    # Run from the client directory with only it first on the path, as an installed onramp-client would be.
    out = subprocess.run([sys.executable, "-c", code], cwd=CLIENT, capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.strip() == ""


def test_client_sources_import_only_grpc_protobuf_stubs_and_stdlib() -> None:
    allowed = {"grpc", "google", "onramp", "onramp_client"} | set(sys.stdlib_module_names)
    seen: set[str] = set()
    for path in (CLIENT / "onramp_client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                seen |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                seen.add(node.module.split(".")[0])
    assert "grpc" in seen and seen <= allowed, seen - allowed
