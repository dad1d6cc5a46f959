"""The operator's dashboard over HTTP: one WSGI app served on the metrics port (``server/base/metrics.py``).

* ``GET /dashboard`` - the page: HTML with its CSS and JavaScript inline (``dashboard_page/``), no data and
  nothing fetched from anywhere else (a Content-Security-Policy allows only this origin and the page's own
  inline code). Its script draws every chart as SVG from ``/dashboard/data``.
* ``GET /dashboard/data`` - the numbers (JSON): the analytics of :mod:`server.ops.dashboard_data` and the live
  model figures. When ``[auth]`` has keys it needs a key with the ``admin`` role, sent as
  ``Authorization: Bearer <key>`` or ``x-api-key: <key>``; never in the URL (a query string is ignored). The
  page asks for the key in a form, keeps it in the tab's ``sessionStorage`` and sends it as a header.

Failed authentications cost what they cost on the gRPC port (docs/security.md, "Failed authentications"): each
takes a token from the client host's budget (``[limits] auth_failures_*``, the same budget as gRPC calls), so
does every slow salted-hash check before it runs (given back when the key is valid), and a refusal is answered
about ``[limits] auth_failure_delay_ms`` late.
"""
from __future__ import annotations

import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from server.api.auth import (API_KEY_HEADER, ROLE_ADMIN, KeyRing, presented_key, peer_network)
from server.api.limits import AuthFailureLimiter, RateLimited
from server.base.clock import now_ms
from server.ops.dashboard_data import LiveModel, TtlCache

PREFIX = "/dashboard"
DATA_PATH = PREFIX + "/data"
PAGE_DIR = Path(__file__).with_name("dashboard_page")
MAX_DELAYED_REFUSALS = 100  # refusals waiting out their delay at once; beyond that they are answered at once
MSG_MISSING_KEY = "missing API key: send the header Authorization: Bearer <key> (or x-api-key: <key>)"
MSG_UNKNOWN_KEY = "unknown API key"

log = logging.getLogger("onramp.dashboard")
_JITTER = random.Random()

SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]


class Refused(Exception):
    """A request the dashboard does not answer: HTTP status, a message safe to show and log, extra headers."""

    def __init__(self, status: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def load_page() -> str:
    """The page template with its stylesheet and script inlined (``{{nonce}}`` and ``{{auth}}`` left to fill)."""
    page = (PAGE_DIR / "index.html").read_text(encoding="utf-8")
    return (page.replace("{{css}}", (PAGE_DIR / "dashboard.css").read_text(encoding="utf-8"))
                .replace("{{js}}", (PAGE_DIR / "dashboard.js").read_text(encoding="utf-8")))


class DashboardApp:
    """The WSGI app of ``/dashboard``: the page, and the numbers behind the admin check.

    ``analytics`` caches the report numbers; ``live()`` reads the model figures (None when unknown).
    """

    def __init__(self, analytics: TtlCache, live: Callable[[], LiveModel | None], keyring: KeyRing,
                 auth_failures: AuthFailureLimiter | None = None, failure_delay_s: float = 0.25) -> None:
        self.analytics = analytics
        self.live = live
        self.keyring = keyring
        self.auth_failures = auth_failures if auth_failures is not None and auth_failures.active else None
        self.failure_delay_s = failure_delay_s
        self.page = load_page()
        self._delayed = 0
        self._delayed_lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        try:
            if environ.get("REQUEST_METHOD", "GET") != "GET":
                raise Refused("405 Method Not Allowed", "only GET", [("Allow", "GET")])
            if path in (PREFIX, PREFIX + "/"):
                return self._send(start_response, "200 OK", *self._page())
            if path == DATA_PATH:
                caller = self.admit(environ)
                return self._send(start_response, "200 OK", *self._data(caller))
            raise Refused("404 Not Found", f"no such page: {path} (the dashboard is {PREFIX})")
        except Refused as refused:
            body = json.dumps({"error": refused.message}).encode()
            return self._send(start_response, refused.status, body, "application/json", refused.headers)

    # -- the two resources ---------------------------------------------------------------------------------
    def _page(self) -> tuple[bytes, str, list[tuple[str, str]]]:
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        body = self.page.replace("{{nonce}}", nonce).replace("{{auth}}", "required" if self.keyring.enabled else "off")
        return body.encode(), "text/html; charset=utf-8", [("Content-Security-Policy", csp)]

    def _data(self, caller: str) -> tuple[bytes, str, list[tuple[str, str]]]:
        cached = self.analytics.get()
        try:
            live = self.live()
            live_part: dict[str, Any] = live.to_dict() if live is not None else {"error": "not known by this server"}
        except TimeoutError:
            live_part = {"error": "the server's event loop did not answer in time (busy); try again"}
        payload = {
            "auth": {"required": self.keyring.enabled, "caller": caller},
            "generated_at_ms": now_ms(),
            "analytics": {"computed_at_ms": cached.computed_at_ms, "compute_s": round(cached.compute_s, 3),
                          "ttl_s": round(cached.ttl_s, 3), "error": cached.error, **(cached.value or {})},
            "live": live_part,
        }
        return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode(), "application/json", []

    @staticmethod
    def _send(start_response: Callable[..., Any], status: str, body: bytes, content_type: str,
              headers: list[tuple[str, str]]) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                *SECURITY_HEADERS, *headers])
        return [body]

    # -- who may read the numbers --------------------------------------------------------------------------
    def admit(self, environ: dict[str, Any]) -> str:
        """The caller's name (the key's name, or ``peer:<host>`` without auth), or raise :class:`Refused`:
        401 without a valid key, 403 for a key without the admin role, 429 when the host's budget of failed
        authentications is spent."""
        address = environ.get("REMOTE_ADDR", "")
        if not self.keyring.enabled:
            return f"peer:{address}"
        host = peer_network(f"ipv6:[{address}]:0" if ":" in address else f"ipv4:{address}:0")
        key = presented_key([(API_KEY_HEADER, environ.get("HTTP_X_API_KEY", "")),
                             ("authorization", environ.get("HTTP_AUTHORIZATION", ""))])
        took = False
        try:
            if key and self.auth_failures is not None and self.keyring.slow_hash_due(key):
                self.auth_failures.take(host)  # a slow salted hash is paid for before it runs
                took = True
            api_key = self.keyring.lookup(key) if key else None
            if api_key is None:
                if self.auth_failures is not None and not took:
                    self.auth_failures.take(host)
                self._refuse(host, Refused("401 Unauthorized", MSG_UNKNOWN_KEY if key else MSG_MISSING_KEY,
                                           [("WWW-Authenticate", 'Bearer realm="onramp-dashboard"')]))
        except RateLimited as limited:
            waited = self._delay()
            limited = limited.after(waited)
            self._refuse(host, Refused("429 Too Many Requests", limited.message,
                                       [("Retry-After", str(max(1, -(-limited.retry_after_ms // 1000))))]),
                         delay=False)
        assert api_key is not None
        if took and self.auth_failures is not None:
            self.auth_failures.give(host)  # the key was valid: its check is no failure
        if ROLE_ADMIN not in api_key.roles:
            self._refuse(host, Refused("403 Forbidden", f"API key {api_key.name!r} lacks role {ROLE_ADMIN!r} needed "
                                                        f"for the dashboard (it has {sorted(api_key.roles)})"),
                         delay=False)
        return api_key.name

    def _refuse(self, host: str, refused: Refused, delay: bool = True) -> None:
        log.warning("dashboard refused for %s: %s", host, refused.message)
        if delay:
            self._delay()
        raise refused

    def _delay(self) -> float:
        """Wait 0.5-1.5 x the failure delay in this request's thread (unless too many already wait)."""
        if self.failure_delay_s <= 0:
            return 0.0
        with self._delayed_lock:
            if self._delayed >= MAX_DELAYED_REFUSALS:
                return 0.0
            self._delayed += 1
        try:
            seconds = self.failure_delay_s * (0.5 + _JITTER.random())
            time.sleep(seconds)
            return seconds
        finally:
            with self._delayed_lock:
                self._delayed -= 1
