"""The operator's dashboard over HTTP (no browser: tests/e2e/test_dashboard_browser.py drives Chromium): the
``[metrics] dashboard`` key and when the dashboard is served, its numbers equal the CLI reports' on the same
database, the admin key it asks for when ``[auth]`` has keys, and the cache that spares the database."""
from __future__ import annotations

import json
import time
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ops_support import KEYS
from server.api.auth import hash_key
from server.api.serving import OpsConfig
from server.base.catalog import load_catalog
from server.offline.analytics import load_activity, step_completion
from server.offline.common import open_readonly
from server.offline.synth import ArmEffect, PopulationSpec, generate_population
from server.ops.app import running_server
from server.ops.cli import main
from server.ops.dashboard_data import TtlCache, decisions_over_time

METRICS_ON = {"enabled": True, "port": 0}


def auth_section() -> dict[str, Any]:
    """``[auth]`` with the test keys: ``ops`` is the admin, ``backend`` ingests and decides."""
    return {"keys": [{"name": n, "hash": hash_key(k), "roles": r} for n, (k, r) in KEYS.items()]}


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` of the metrics port: status, headers, body (errors included)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def metrics_port(handle: Any) -> int:
    return handle.server.ops.metrics_server.port


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard") / "pop.db"
    generate_population(path, PopulationSpec(n_users=800, seed=11, arm_effects={"tailored": ArmEffect(retention=0.6)}))
    return path


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    main(list(argv))
    return json.loads(capsys.readouterr().out)


# -- when it is served ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, message", [
    ({"enabled": True, "dashboard": "yes"}, "[metrics] dashboard: expected true or false"),
    ({"dashboard": True}, "[metrics] dashboard: true needs [metrics] enabled = true"),
    ({"enabled": True, "host": "0.0.0.0", "dashboard": True}, "[metrics] dashboard: true needs [auth] keys"),
])
def test_dashboard_key_errors_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        OpsConfig.from_mapping({"metrics": section})
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("metrics, keys, served", [
    ({}, False, False),  # no metrics port, no dashboard
    ({"enabled": True}, False, True),  # loopback: on by default
    ({"enabled": True, "dashboard": False}, False, False),
    ({"enabled": True, "host": "0.0.0.0"}, False, False),  # reachable from elsewhere without keys: off
    ({"enabled": True, "host": "0.0.0.0"}, True, True),  # with keys it asks for an admin key
    ({"enabled": True, "host": "0.0.0.0", "dashboard": False}, True, False),
    ({"enabled": True, "host": "::1", "dashboard": True}, False, True),
])
def test_when_the_dashboard_is_served(metrics: dict[str, Any], keys: bool, served: bool) -> None:
    document = {"metrics": metrics, **({"auth": auth_section()} if keys else {})}
    assert OpsConfig.from_mapping(document).dashboard is served


def test_dashboard_off_leaves_only_metrics() -> None:
    with running_server(metrics={**METRICS_ON, "dashboard": False}) as handle:
        port = metrics_port(handle)
        for path in ("/dashboard", "/dashboard/data"):  # no app there: the metrics endpoint answers any path
            assert get(port, path)[2].startswith(b"# HELP")
        assert b"onramp_rpc_duration_seconds" in get(port, "/metrics")[2]


def wait_for_snapshot(handle: Any, timeout_s: float = 60.0) -> None:
    """Wait until the engine decides with a snapshot that includes every outcome of the database."""
    learner, engine = handle.server.learner, handle.server.service.decisions
    end = time.monotonic() + timeout_s
    while not handle.call(lambda: learner.pos.outcomes > 0 and not learner._dirty  # noqa: SLF001
                          and engine.snapshot_version >= learner.version > 0):
        assert time.monotonic() < end, "the learner published no snapshot"
        time.sleep(0.05)


# -- the numbers ---------------------------------------------------------------------------------------------
def test_numbers_equal_the_cli_reports_on_the_same_database(population: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(db_path=population, metrics=METRICS_ON) as handle:
        wait_for_snapshot(handle)
        status, headers, body = get(metrics_port(handle), "/dashboard/data")
        assert status == 200 and headers["Content-Type"] == "application/json"
        data = json.loads(body)
        funnel = cli_json(capsys, "report", "funnel", "--db", str(population), "--json")
        experiment = cli_json(capsys, "report", "experiments", "--db", str(population), "--json",
                              "--experiment", "tailored_vs_generic")
    analytics = data["analytics"]
    assert analytics["error"] == ""
    assert analytics["funnel"] == funnel
    assert analytics["experiment"]["report"] == experiment
    assert any(c["guardrail_worse"] for c in experiment["comparisons"])  # the harmed arm is visible
    assert any(s["flagged"] for s in funnel["steps"])
    # the two views the reports do not have, from the same loaded activity
    catalog = load_catalog(None)
    conn = open_readonly(population)
    try:
        act = load_activity(conn)
    finally:
        conn.close()
    idx, completed = step_completion(act, catalog)
    steps = {row["step_id"]: row for row in analytics["steps"]}
    for step in set(act.dec_step[idx].tolist()):
        mine = act.dec_step[idx] == step
        assert (steps[step]["shows"], steps[step]["completed"]) == (int(mine.sum()), int(completed[mine].sum()))
        rewards = act.dec_reward[idx][mine]
        assert steps[step]["reward_mean"] == pytest.approx(float(rewards[~np.isnan(rewards)].mean()))
    over_time = analytics["decisions_over_time"]
    assert over_time == decisions_over_time(act)
    assert over_time["total"] == len(act.dec_ts) == sum(sum(v) for v in over_time["reasons"].values())
    assert data["live"]["catalog_version"] == catalog.version
    assert data["live"]["policy_version"].startswith(catalog.version + ":")
    assert data["live"]["outcomes_learned"] > 0  # the learner learned the log's outcomes at its first start
    assert data["auth"] == {"required": False, "caller": "peer:127.0.0.1"}


def test_an_empty_database_gives_empty_sections_not_errors() -> None:
    with running_server(metrics=METRICS_ON) as handle:
        data = json.loads(get(metrics_port(handle), "/dashboard/data")[2])
    a = data["analytics"]
    assert a["error"] == "" and a["funnel"]["users"] == 0 and a["decisions_over_time"]["total"] == 0
    assert a["experiment"]["message"] and "report" not in a["experiment"]


def test_the_page_is_self_contained() -> None:
    with running_server(metrics=METRICS_ON) as handle:
        status, headers, body = get(metrics_port(handle), "/dashboard")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert page.count(f'nonce="{nonce}"') == 2  # the one inline stylesheet and the one inline script
    for outside in ("<script src", "<link", "@import", "url(", "//cdn", "https://"):
        assert outside not in page
    assert 'data-auth="off"' in page


# -- the admin key -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_server(population: Path) -> Any:
    limits = {"auth_failure_delay_ms": 0, "auth_failures_per_second": 0.001, "auth_failures_burst": 5}
    with running_server(db_path=population, metrics=METRICS_ON, auth=auth_section(), limits=limits) as handle:
        yield handle


def test_with_keys_the_numbers_need_an_admin_key(keyed_server: Any) -> None:
    port = metrics_port(keyed_server)
    admin, backend = KEYS["ops"][0], KEYS["backend"][0]
    status, headers, body = get(port, "/dashboard/data")
    assert status == 401 and json.loads(body) == {"error": "missing API key: send the header Authorization: Bearer "
                                                           "<key> (or x-api-key: <key>)"}
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = get(port, "/dashboard/data", {"Authorization": "Bearer " + backend})
    assert status == 403
    assert json.loads(body)["error"] == ("API key 'backend' lacks role 'admin' needed for the dashboard "
                                         "(it has ['decide', 'ingest'])")
    assert get(port, "/dashboard/data", {"x-api-key": "not-a-key"})[0] == 401
    assert get(port, f"/dashboard/data?key={admin}&api_key={admin}")[0] == 401  # never from the URL
    for headers_ in ({"Authorization": "Bearer " + admin}, {"x-api-key": admin}):
        status, _, body = get(port, "/dashboard/data", headers_)
        assert status == 200
        data = json.loads(body)
        assert data["auth"] == {"required": True, "caller": "ops"} and data["analytics"]["funnel"]["users"] > 0
    status, _, body = get(port, "/dashboard")  # the page itself holds no data: it asks for the key
    assert status == 200 and b'data-auth="required"' in body


def test_failed_keys_spend_the_hosts_budget(keyed_server: Any) -> None:
    port = metrics_port(keyed_server)
    codes = [get(port, "/dashboard/data", {"x-api-key": f"wrong-{i}"})[0] for i in range(8)]
    assert codes[-1] == 429 and set(codes) <= {401, 429}
    status, headers, body = get(port, "/dashboard/data", {"x-api-key": "wrong-again"})
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert json.loads(body)["error"].startswith("too many failed authentications from '127.0.0.1'")
    # a key verified before is not held up by the budget
    assert get(port, "/dashboard/data", {"x-api-key": KEYS["ops"][0]})[0] == 200


# -- the cache -----------------------------------------------------------------------------------------------
class Clock:
    """A clock a test moves by hand (monotonic seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_keeps_a_result_for_its_time_to_live() -> None:
    clock = Clock()
    answers = iter(range(100))

    def compute() -> dict[str, Any]:
        clock.now += 0.5  # a computation that takes half a second
        return {"n": next(answers)}

    cache = TtlCache(compute, min_ttl_s=5.0, slow_factor=4.0, clock=clock, wall=lambda: 1_700_000_000.0)
    first = cache.get()
    assert first.value == {"n": 0} and first.compute_s == 0.5 and first.ttl_s == 5.0
    assert first.computed_at_ms == 1_700_000_000_000
    clock.now += 4.9
    assert cache.get() is first and cache.computed == 1
    clock.now += 0.2
    assert cache.get().value == {"n": 1} and cache.computed == 2


def test_a_slow_computation_is_kept_longer_and_a_failure_is_kept_too() -> None:
    clock = Clock()

    def slow() -> dict[str, Any]:
        clock.now += 3.0
        raise OSError("disk gone")

    cache = TtlCache(slow, min_ttl_s=5.0, slow_factor=4.0, clock=clock)
    got = cache.get()
    assert got.value is None and got.error == "disk gone" and got.ttl_s == 12.0
    clock.now += 11.9
    assert cache.get() is got
    clock.now += 0.2
    assert cache.get() is not got and cache.computed == 2
    assert math.isclose(cache.get().ttl_s, 12.0)
