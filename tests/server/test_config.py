"""Config file: defaults without a file, validation errors naming the key, reserved sections kept in raw."""
from __future__ import annotations

import pathlib

import pytest

from server.base.config import Config, ConfigError, load_config, parse_config


def test_no_file_gives_defaults() -> None:
    config = load_config(None)
    assert config.server.host == "127.0.0.1" and config.server.port == 50051
    assert config.server.db_path == "./onramp.db"
    assert config.ingest.max_properties == 64 and config.ingest.max_future_skew_ms == 300_000
    assert config.privacy.pseudonym_key is None and config.privacy.pseudonym_key_file == ""
    assert config.privacy.key_file(config.server.db_path) == "./onramp.db.key"
    assert config.raw == {}


def test_file_is_read_and_reserved_sections_kept(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "onramp.toml"
    path.write_text(
        '[server]\nhost = "0.0.0.0"\nport = 6000\ndb_path = "data/x.db"\nmax_message_bytes = 2048\n'
        '[privacy]\npseudonym_key = "0123456789abcdef-secret"\n'
        '[ingest]\nmax_properties = 8\nmax_future_skew_ms = 0\nsynchronous = "normal"\n'
        '[guardrails]\nmax_steps_per_day = 3\n[[steps]]\nid = "welcome"\n[auth]\n[metrics]\nenabled = false\n')
    config = load_config(path)
    assert config.server.address == "0.0.0.0:6000" and config.server.db_path == "data/x.db"
    assert config.server.max_message_bytes == 2048
    assert config.privacy.pseudonym_key == "0123456789abcdef-secret"
    assert config.ingest.max_properties == 8 and config.ingest.max_future_skew_ms == 0
    assert config.ingest.synchronous == "normal"
    assert config.raw["guardrails"] == {"max_steps_per_day": 3}
    assert config.raw["steps"] == [{"id": "welcome"}]
    assert config.source == str(path)


@pytest.mark.parametrize("document, message", [
    ({"ingest": {"max_properties": -1}}, "ingest.max_properties: must be a positive integer (got -1)"),
    ({"ingest": {"max_properties": "8"}}, "ingest.max_properties: must be a positive integer (got '8')"),
    ({"ingest": {"commit_interval_ms": True}}, "ingest.commit_interval_ms: must be a positive integer (got True)"),
    ({"ingest": {"max_future_skew_ms": -5}}, "ingest.max_future_skew_ms: must be an integer >= 0 (got -5)"),
    ({"ingest": {"synchronous": "off"}}, "ingest.synchronous: must be one of normal, full (got 'off')"),
    ({"ingest": {"max_propertys": 3}}, "ingest.max_propertys: unknown key"),
    ({"server": {"port": 70000}}, "server.port: must be an integer from 0 to 65535"),
    ({"server": {"host": ""}}, "server.host: must be a non-empty string"),
    ({"server": {"db_path": 5}}, "server.db_path: must be a non-empty string (got an integer 5)"),
    ({"server": {"max_message_bytes": 100}}, "server.max_message_bytes: must be 0 (default) or at least 1024"),
    ({"server": "x"}, "server: must be a table [server]"),
    ({"privacy": {"pseudonym_key": "short"}}, "privacy.pseudonym_key: must be a secret string of at least 16"),
    ({"privacy": {"pseudonym_key": 12}}, "privacy.pseudonym_key: must be a secret string"),
    ({"privacy": {"pseudonym_key_file": 3}}, "privacy.pseudonym_key_file: must be a file path string"),
    ({"privacy": {"pseudonym_key": "0123456789abcdef-secret", "pseudonym_key_file": "/etc/onramp/key"}},
     "privacy.pseudonym_key_file: set either pseudonym_key or pseudonym_key_file, not both"),
    ({"privacy": {"pseudonym_keyfile": "x"}}, "privacy.pseudonym_keyfile: unknown key"),
    ({"bogus": {}}, "bogus: unknown top-level key"),
])
def test_errors_name_the_key(document: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(document)
    assert str(err.value).startswith(message), str(err.value)


def test_the_key_file_goes_beside_the_database_unless_configured() -> None:
    config = parse_config({"server": {"db_path": "/var/lib/onramp/x.db"}})
    assert config.privacy.key_file(config.server.db_path) == "/var/lib/onramp/x.db.key"
    config = parse_config({"server": {"db_path": "x.db"}, "privacy": {"pseudonym_key_file": "/run/keys/onramp"}})
    assert config.privacy.key_file(config.server.db_path) == "/run/keys/onramp"


def test_unreadable_and_invalid_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.toml")
    assert "missing.toml: cannot read config file" in str(err.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.toml: invalid TOML" in str(err.value)


def test_with_server_overrides_and_revalidates() -> None:
    config = parse_config({"server": {"port": 7000}, "ingest": {"max_properties": 5}})
    changed = config.with_server(port=0, db_path="/tmp/x.db", host=None)
    assert changed.server.port == 0 and changed.server.db_path == "/tmp/x.db"
    assert changed.server.host == "127.0.0.1" and changed.ingest.max_properties == 5
    with pytest.raises(ConfigError):
        Config().with_server(port=-1)
