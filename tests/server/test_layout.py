"""The server's roles import one way: each subpackage of ``server/`` imports only the roles below it, and
protobuf (``onramp.v1``) only at the API edge and in the process wiring above it."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"
# Lowest first: a role may import itself and the roles before it, never one after it.
ORDER = ("base", "store", "ingest", "learn", "decide", "api", "ops")
OFFLINE_MAY_IMPORT = {"offline", "base", "store"}  # the offline tools read the database, never the live service
PROTOBUF_ROLES = {"api", "ops"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            if node.module == "server":
                found |= {f"server.{alias.name}" for alias in node.names}
    return found


def _role(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "server" and len(parts) > 1 else None


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SERVER.rglob("*.py")):
        rel = path.relative_to(SERVER)
        role = rel.parts[0] if len(rel.parts) > 1 else ""
        out.append((role, path))
    return out


def test_every_module_lives_in_a_role():
    loose = [p.name for role, p in _modules() if role == "" and p.name not in ("__init__.py", "__main__.py")]
    assert loose == []
    roles = {role for role, _ in _modules() if role}
    assert roles == set(ORDER) | {"offline"}, roles


def test_roles_import_only_downwards():
    wrong = []
    for role, path in _modules():
        if not role:
            continue
        for module in _imports(path):
            target = _role(module)
            if target is None or target == role:
                continue
            if role == "offline":
                ok = target in OFFLINE_MAY_IMPORT
            elif target == "offline":
                ok = role == "ops"  # the CLI runs the offline tools
            else:
                ok = ORDER.index(target) < ORDER.index(role)
            if not ok:
                wrong.append(f"{path.relative_to(SERVER.parent)} imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_protobuf_stays_at_the_api_edge():
    wrong = [f"{path.relative_to(SERVER.parent)} imports {module}" for role, path in _modules()
             if role not in PROTOBUF_ROLES for module in _imports(path)
             if module.startswith("onramp.v1") or module.startswith("google.protobuf")]
    assert wrong == [], "\n".join(wrong)


# The workers' and the learner's roles use the store only through its Protocols (server/store/interfaces.py), so a
# second backend fits without touching them: these server.store modules hold no SQL and import no backend.
STORE_USERS = ("ingest", "learn", "decide", "api")
STORE_SEAM = {"server.store.interfaces", "server.store.rows", "server.store.writer", "server.store.decision_logger",
              "server.store.privacy"}
BACKENDS = ("sqlite3", "sqlite_utils", "server.store.sqlite")


def _store_imports(path: Path) -> set[str]:
    """Like :func:`_imports`, with ``from server.store import x`` read as ``server.store.x``."""
    found = _imports(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "server.store":
            found.discard("server.store")
            found |= {f"server.store.{alias.name}" for alias in node.names}
    return found


def test_workers_and_the_learner_import_only_the_store_protocols():
    wrong = []
    for role, path in _modules():
        if role not in STORE_USERS:
            continue
        for module in _store_imports(path):
            if module.split(".")[0] in BACKENDS[:2] or (module.startswith("server.store") and module not in STORE_SEAM):
                wrong.append(f"{path.relative_to(SERVER.parent)} imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_the_store_protocols_pull_in_no_backend():
    """Importing every module of the workers' and the learner's roles loads neither SQLite nor the SQLite store."""
    modules = [".".join(path.relative_to(SERVER.parent).with_suffix("").parts) for role, path in _modules()
               if role in STORE_USERS]
    assert "server.decide.engine" in modules and "server.learn.learner" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m in {BACKENDS!r} or m.startswith('server.store.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=SERVER.parent, capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout.strip()))
    assert loaded <= STORE_SEAM, loaded - STORE_SEAM


# A decision worker of `onramp serve` imports neither River nor scipy (their imports were most of its start, so of a
# restart): it predicts from the plain numbers of the learner's snapshots (server/learn/segment_model.py). Only the
# learner, which trains the River models, imports them.
HEAVY = ("river", "scipy")
WORKER_ENTRY = ("server.ops.worker", "server.ops.cli", "server.ops.app", "server.ops.supervisor", "server.ops.ports",
                "server.ops.dashboard_data", "server.ops.dashboard_http")


def _heavy_imported(modules: list[str]) -> set[str]:
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=SERVER.parent, capture_output=True, text=True, check=True)
    return set(ast.literal_eval(out.stdout.strip()))


def test_a_worker_imports_neither_river_nor_scipy():
    """What a worker process loads (its entry point, the process wiring, every module of the decision and API
    roles) pulls in no River and no scipy; the learner process's modules do."""
    modules = [*WORKER_ENTRY, *(".".join(path.relative_to(SERVER.parent).with_suffix("").parts)
                                for role, path in _modules() if role in ("decide", "api"))]
    assert "server.decide.engine" in modules and "server.api.service" in modules
    assert _heavy_imported(modules) == set()
    assert _heavy_imported(["server.ops.learner_process", "server.learn.learner"]) == set(HEAVY)
