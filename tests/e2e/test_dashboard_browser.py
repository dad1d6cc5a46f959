"""The operator's dashboard in a real browser: ``python -m server serve`` on a synthetic population with
``[auth]`` keys, driven by headless Chromium over the DevTools Protocol (tests/e2e/chromium.py). The page asks
for a key, refuses one without the admin role, and with the admin key draws its SVG charts with the numbers
``onramp report funnel`` and ``onramp report experiments`` print for the same database.

Skipped on a machine without Chromium, except under CI, which installs Debian's ``chromium`` (.ci/run). With
``ONRAMP_DASHBOARD_SCREENSHOT=docs/dashboard.png`` the run also writes the screenshot the docs show.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.api.auth import hash_key
from server.offline.synth import ArmEffect, PopulationSpec, generate_population
from tests.e2e.chromium import INSTALL_HINT, Chromium, find_chromium

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "dash-admin-0123456789abcdef"
BACKEND_KEY = "dash-backend-0123456789abcdef"
READY = "document.body.dataset.state === 'ready'"

pytestmark = [pytest.mark.timeout(300),
              # skipped on a developer's machine without chromium; under CI (.ci/run installs it) they run and fail
              pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                 reason=f"no chromium to drive: {INSTALL_HINT}")]


class ServerProcess:
    """``python -m server serve --config ...`` as a child process; the dashboard's port read from its log."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--config", str(config)], cwd=ROOT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=self._log_file,
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/dashboard)", log.read_text())
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"server did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        finally:
            self._log_file.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard-browser") / "pop.db"
    generate_population(path, PopulationSpec(n_users=1500, seed=1, arm_effects={"tailored": ArmEffect(retention=0.8)}))
    return path


@pytest.fixture(scope="module")
def server(db: Path) -> Iterator[ServerProcess]:
    config = db.with_name("onramp.toml")
    keys = [{"name": "ops-desk", "key": ADMIN_KEY, "roles": ["admin"]},
            {"name": "backend", "key": BACKEND_KEY, "roles": ["ingest", "decide"]}]
    config.write_text(
        # one process: the live model figures checked below are the serving process's own, which with several
        # workers show the learner's counts only once it published its first snapshot
        f'[server]\nport = 0\nworkers = 1\ndb_path = "{db}"\n'
        "[metrics]\nenabled = true\nport = 0\n"
        "[limits]\nauth_failure_delay_ms = 0\n"
        "[auth]\nkeys = [\n" + "".join(
            f'  {{ name = "{k["name"]}", hash = "{hash_key(k["key"])}", roles = {json.dumps(k["roles"])} }},\n'
            for k in keys) + "]\n", encoding="utf-8")
    process = ServerProcess(config, db.with_name("server.log"))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    with Chromium(width=1360, height=900) as chromium:
        yield chromium


def cli_report(db: Path, *args: str) -> dict[str, Any]:
    """``onramp report ... --json`` run as the operator runs it, on the same database."""
    done = subprocess.run([sys.executable, "-m", "server", "report", *args, "--db", str(db), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr  # experiments exits 1 when a guardrail is flagged
    return json.loads(done.stdout)


def sign_in(browser: Chromium, key: str) -> None:
    browser.wait_for("!document.getElementById('login').hidden")
    browser.type_text("#key", key)
    browser.click("#login-form button")


# -- the checks --------------------------------------------------------------------------------------------
def test_without_the_admin_key_nothing_is_shown(server: ServerProcess, browser: Chromium) -> None:
    browser.navigate(server.url)
    assert browser.wait_for("document.body.dataset.state") == "login"
    assert browser.evaluate("document.querySelectorAll('[data-k], main svg').length") == 0
    sign_in(browser, BACKEND_KEY)
    browser.wait_for("document.body.dataset.state === 'refused'")
    assert browser.evaluate("document.getElementById('login-error').textContent") == \
        "API key 'backend' lacks role 'admin' needed for the dashboard (it has ['decide', 'ingest'])"
    sign_in(browser, "not-a-key")
    browser.wait_for("document.getElementById('login-error').textContent === 'unknown API key'")
    assert browser.evaluate("document.querySelectorAll('[data-k], main svg').length") == 0
    assert browser.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    assert "not-a-key" not in browser.evaluate("location.href") and BACKEND_KEY not in browser.evaluate("location.href")


def test_with_the_admin_key_the_charts_show_the_cli_numbers(server: ServerProcess, browser: Chromium, db: Path,
                                                           tmp_path: Path) -> None:
    browser.navigate(server.url)
    sign_in(browser, ADMIN_KEY)
    browser.wait_for(READY)
    assert ADMIN_KEY not in browser.evaluate("location.href")
    counts = browser.evaluate("""(() => { const n = s => document.querySelectorAll(s).length; return {
        decisions: n('svg.chart-decisions rect[data-reason]'), funnel: n('svg.chart-funnel rect.done'),
        flagged: n('svg.chart-funnel rect.done.flagged'), ttv: n('svg.chart-ttv rect.bar'),
        retention: n('svg.chart-retention polyline'), survey: n('svg.chart-survey rect.survey-bar'),
        forest: n('svg.forest circle.dot'), whiskers: n('td.plot svg'), status: document.getElementById('status').textContent
    }; })()""")
    funnel = cli_report(db, "funnel")
    experiment = cli_report(db, "experiments", "--experiment", "tailored_vs_generic")
    shown_steps = [s for s in funnel["steps"] if s["shown"]]
    assert counts["decisions"] > 30 and counts["ttv"] > 5
    assert counts["funnel"] == len(shown_steps) and counts["flagged"] == sum(s["flagged"] for s in shown_steps) > 0
    assert counts["retention"] == len(funnel["cohorts"]) + 1  # one line per signup week, and all users
    assert counts["survey"] == len(funnel["survey"]["distribution"])
    assert counts["forest"] == len(experiment["comparisons"])
    assert counts["whiskers"] >= len(funnel["steps"]) * 2 + len(experiment["comparisons"])
    assert f"{funnel['users']:,} users" in counts["status"] and "signed in as ops-desk" in counts["status"]

    shown = browser.evaluate("Array.from(document.querySelectorAll('[data-k]')).map(e => "
                             "[e.dataset.k, e.dataset.v, e.dataset.fmt, e.textContent])")
    reports = {"funnel": funnel, "experiment": experiment}
    compared: dict[str, int] = {"funnel": 0, "experiment": 0}
    for key, raw, fmt, text in shown:
        source, _, path = key.partition(".")
        if source not in reports:
            continue
        expected = resolve(reports[source], path)
        assert json.loads(raw) == expected, key
        assert written_as(fmt, text, expected), (key, text, expected)
        compared[source] += 1
    keys = {k for k, *_ in shown}
    for i, step in enumerate(funnel["steps"]):
        assert {f"funnel.steps.{i}.{f}" for f in ("shown", "completed", "completion_rate", "drop_off")} <= keys
        assert (f"funnel.steps.{i}.flagged" in keys) == step["flagged"]
    for i, cmp in enumerate(experiment["comparisons"]):
        assert {f"experiment.comparisons.{i}.{f}" for f in ("comparison.diff", "comparison.p_value", "p_adjusted")} <= keys
        assert (f"experiment.comparisons.{i}.guardrail_worse" in keys) == cmp["guardrail_worse"]
    assert any(c["guardrail_worse"] for c in experiment["comparisons"])
    assert {"funnel.time_to_value.median_h", "funnel.overall_retention.D30", "funnel.survey.mean"} <= keys
    assert compared["funnel"] > 100 and compared["experiment"] > 80
    live = dict((k, json.loads(v)) for k, v, *_ in shown if k.startswith("live."))
    assert live["live.outcomes_learned"] > 0 and live["live.policy_version"].startswith(live["live.catalog_version"])
    assert not [line for line in browser.console if line.startswith("exception")], browser.console

    png = browser.screenshot(tmp_path / "dashboard.png")
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    target = os.environ.get("ONRAMP_DASHBOARD_SCREENSHOT")
    if target:
        save_small_png(tmp_path / "dashboard.png", Path(target))


def test_sign_out_forgets_the_key(server: ServerProcess, browser: Chromium) -> None:
    browser.navigate(server.url)
    browser.wait_for(READY)  # the key is still in this tab's session storage
    browser.click("#signout")
    assert browser.wait_for("document.body.dataset.state") == "login"
    assert browser.evaluate("sessionStorage.length") == 0
    assert browser.evaluate("document.querySelectorAll('[data-k], main svg').length") == 0


# -- helpers ---------------------------------------------------------------------------------------------------
def resolve(document: Any, path: str) -> Any:
    """The value at a dotted path (``steps.2.completion_rate``) of a report's JSON."""
    for part in path.split("."):
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document


FLAGS = {True: ("ABNORMAL", "GUARDRAIL WORSE", "significant", "Sample ratio mismatch"), False: ("no difference shown",)}
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def written_as(fmt: str, text: str, value: Any) -> bool:
    """Whether the page wrote ``value`` as ``text`` in its format ``fmt``, to the digits the format keeps."""
    if fmt == "flag":  # a badge: what it says for true, and for false
        return text.startswith(FLAGS[value])
    if fmt == "text":
        return text == str(value)
    if value is None:
        return text == "n/a"
    found = NUMBER.search(text)
    if found is None:
        return False
    number = float(found.group().replace(",", ""))
    if fmt == "int":
        return number == value and "." not in text
    scale, decimals = {"pct": (100, 1), "spct": (100, 1), "f1": (1, 1), "h1": (1, 1), "f2": (1, 2),
                       "sf2": (1, 2)}.get(fmt, (1, None))
    if decimals is None:  # "p": three significant digits
        return abs(number - value) <= abs(value) * 5e-3 + 1e-300
    return abs(number - value * scale) <= 0.5 * 10 ** -decimals + 1e-9


def save_small_png(source: Path, target: Path) -> None:
    """The screenshot with its colours reduced to a 128-colour palette (a fraction of the size)."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE).save(target, optimize=True)
