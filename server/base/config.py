"""The one TOML config file of an Onramp server, read with tomllib and validated so that every error names
the key at fault (``ingest.max_properties: must be a positive integer (got -1)``).

This module owns ``[server]``, ``[privacy]`` and ``[ingest]``. The catalog/decision-engine sections and the
security/operations sections are accepted as they are and kept in :attr:`Config.raw` for their own parsers
(``server/base/catalog.py``, ``server/api/serving.py``). Any other top-level key is an error. No file at all is fine:
every setting has a default.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

OWN_SECTIONS = ("server", "privacy", "ingest")
# Sections read by other modules (catalog, decision engine, security and operations).
RESERVED_SECTIONS = ("steps", "core", "guardrails", "rules", "rewards", "experiments", "segments",
                     "bandit", "auth", "tls", "metrics", "limits", "logging")
SYNCHRONOUS_MODES = ("normal", "full")
MAX_WORKERS = 1024


class ConfigError(ValueError):
    """A bad config file or setting; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: where to listen and where the SQLite database lives."""

    host: str = "127.0.0.1"
    port: int = 50051
    db_path: str = "./onramp.db"
    # Largest gRPC message accepted or sent; 0 keeps the ``[limits] max_message_bytes`` default (16 MiB).
    max_message_bytes: int = 0
    # gRPC worker processes sharing the port under one supervisor (server/ops/supervisor.py); 0 = one per core.
    workers: int = 0


    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """``[privacy]``: where the key of the keyed pseudonyms comes from (server/store/pseudonym_key.py): a secret
    string here, or a key file kept apart from the database (never the database itself)."""

    pseudonym_key: str | None = None
    # The key file; "" = next to the database, ``<db_path>.key`` (generated at the first start).
    pseudonym_key_file: str = ""

    def key_file(self, db_path: str) -> str:
        """The key file: ``pseudonym_key_file`` or ``<db_path>.key``."""
        return self.pseudonym_key_file or f"{db_path}.key"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """``[ingest]``: validation limits of events and the batching of commits."""

    max_id_chars: int = 256  # user_id, anonymous_id, device_id
    max_event_id_chars: int = 128
    max_feature_chars: int = 128  # feature, step_id, decision_id
    max_properties: int = 64
    max_property_value_chars: int = 1024
    max_future_skew_ms: int = 5 * 60 * 1000  # events further in the future are rejected
    max_batch_events: int = 10_000  # events per EventBatch
    commit_max_events: int = 500  # IngestEvents buffers this many events ...
    commit_interval_ms: int = 20  # ... or this long before handing them to the writer
    writer_max_events: int = 20_000  # events grouped into one transaction by the writer at most
    max_inflight_batches: int = 16  # IngestEventBatches: batches read ahead of their acks
    synchronous: str = "full"  # SQLite PRAGMA synchronous in WAL mode: "full" (power-safe) or "normal"
    dedupe_window_hours: int = 168  # an event_id is stored once among events whose time is this recent


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated config; ``raw`` is the parsed TOML document (every section, including the
    catalog/engine/ops ones that other modules parse)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = "none (built-in defaults)"

    def with_server(self, **changes: Any) -> "Config":
        """A copy with some ``[server]`` settings replaced (e.g. from command-line flags), re-validated."""
        raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.raw.items()}
        section = dict(raw.get("server", {}))
        section.update({k: v for k, v in changes.items() if v is not None})
        raw["server"] = section
        return replace(parse_config(raw, source=self.source), source=self.source)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _check_keys(section: str, table: Mapping[str, Any], cls: type) -> None:
    names = [f.name for f in fields(cls)]
    for key in table:
        if key not in names:
            raise ConfigError(f"{section}.{key}: unknown key (expected one of {', '.join(names)})")


def _int(section: str, table: Mapping[str, Any], key: str, default: int, low: int, high: int | None = None,
         what: str = "") -> int:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        if low == 1 and high is None:
            expected = "must be a positive integer"
        elif high is None:
            expected = f"must be an integer >= {low}"
        else:
            expected = f"must be an integer from {low} to {high}"
        raise ConfigError(f"{section}.{key}: {expected}{what} (got {value!r})")
    return value


def _str(section: str, table: Mapping[str, Any], key: str, default: str, allow_empty: bool = False) -> str:
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigError(f"{section}.{key}: must be a non-empty string (got {_type_name(value)} {value!r})")
    return value


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: must be a table [{name}] (got {_type_name(value)} {value!r})")
    return value


def _parse_server(t: Mapping[str, Any]) -> ServerConfig:
    _check_keys("server", t, ServerConfig)
    d = ServerConfig()
    host = _str("server", t, "host", d.host)
    port = _int("server", t, "port", d.port, 0, 65535, " (0 = any free port)")
    db_path = _str("server", t, "db_path", d.db_path)
    mmb = _int("server", t, "max_message_bytes", d.max_message_bytes, 0, None)
    if 0 < mmb < 1024:
        raise ConfigError(f"server.max_message_bytes: must be 0 (default) or at least 1024 (got {mmb!r})")
    workers = _int("server", t, "workers", d.workers, 0, MAX_WORKERS, " (0 = one per core)")
    return ServerConfig(host=host, port=port, db_path=db_path, max_message_bytes=mmb, workers=workers)


def _parse_privacy(t: Mapping[str, Any]) -> PrivacyConfig:
    _check_keys("privacy", t, PrivacyConfig)
    key_file = t.get("pseudonym_key_file", "")
    if not isinstance(key_file, str):
        raise ConfigError("privacy.pseudonym_key_file: must be a file path string (\"\" = <db_path>.key; got "
                          f"{_type_name(key_file)} {key_file!r})")
    if "pseudonym_key" not in t:
        return PrivacyConfig(pseudonym_key_file=key_file)
    key = t["pseudonym_key"]
    if not isinstance(key, str) or len(key) < 16:
        shown = f"{len(key)} characters" if isinstance(key, str) else f"{_type_name(key)}"
        raise ConfigError(f"privacy.pseudonym_key: must be a secret string of at least 16 characters (got {shown})")
    if key_file:
        raise ConfigError("privacy.pseudonym_key_file: set either pseudonym_key or pseudonym_key_file, not both "
                          "(which key would pseudonymise?)")
    return PrivacyConfig(pseudonym_key=key)


def _parse_ingest(t: Mapping[str, Any]) -> IngestConfig:
    _check_keys("ingest", t, IngestConfig)
    d = IngestConfig()
    values: dict[str, Any] = {}
    for f in fields(IngestConfig):
        if f.name == "synchronous":
            continue
        low = 0 if f.name == "max_future_skew_ms" else 1
        values[f.name] = _int("ingest", t, f.name, getattr(d, f.name), low)
    sync = t.get("synchronous", d.synchronous)
    if sync not in SYNCHRONOUS_MODES:
        raise ConfigError(f"ingest.synchronous: must be one of {', '.join(SYNCHRONOUS_MODES)} (got {sync!r})")
    values["synchronous"] = sync
    return IngestConfig(**values)


def parse_config(document: Mapping[str, Any], source: str = "<inline>") -> Config:
    """Validate a parsed TOML document (a dict) into a :class:`Config`; raises :class:`ConfigError`."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"config: must be a table (got {_type_name(document)})")
    known = (*OWN_SECTIONS, *RESERVED_SECTIONS)
    for key in document:
        if key not in known:
            raise ConfigError(f"{key}: unknown top-level key (expected one of {', '.join(known)})")
    return Config(
        server=_parse_server(_table(document, "server")),
        privacy=_parse_privacy(_table(document, "privacy")),
        ingest=_parse_ingest(_table(document, "ingest")),
        raw={k: v for k, v in document.items()},
        source=source,
    )


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the TOML file at ``path``; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file ({exc.strerror or exc})") from None
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: config file is not UTF-8 ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return parse_config(document, source=str(p))

