"""The security pieces of the ``onramp`` command: ``hash-key``, and ``serve`` refusing unsafe or broken setups."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from server.api.auth import KeyHash, hash_key
from server.ops import cli


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_hash_key_subcommand(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("backend-secret\n"))
    assert cli.main(["hash-key"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("backend-secret")
    monkeypatch.setattr("sys.stdin", io.StringIO("backend-secret\n"))
    assert cli.main(["hash-key", "--scheme", "scrypt"]) == 0
    assert KeyHash.parse(capsys.readouterr().out.strip()).matches("backend-secret")
    assert cli.main(["hash-key", "--generate"]) == 0
    key_line, hash_line = capsys.readouterr().out.splitlines()
    assert KeyHash.parse(hash_line.split()[1]).matches(key_line.split()[1])


def test_serve_refuses_non_loopback_without_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The refusal comes before anything listens, so no traffic leaves 127.0.0.1.
    code = cli.main(["serve", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "o.db")])
    err = capsys.readouterr().err
    assert code == 2
    assert "refusing to listen on 0.0.0.0:0 without authentication" in err
    assert "--allow-insecure-no-auth" in err


def test_serve_reports_missing_tls_files_and_bad_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "onramp.toml"
    config.write_text(f'[tls]\ncert_file = "{tmp_path}/none.crt"\nkey_file = "{tmp_path}/none.key"\n')
    code = cli.main(["serve", "--port", "0", "--db", str(tmp_path / "o.db"), "--config", str(config)])
    assert code == 2
    assert f"[tls] cert_file: file not found: {tmp_path}/none.crt" in capsys.readouterr().err
    config.write_text('[auth]\nkeys = [{name = "a", hash = "plain", roles = ["admin"]}]\n')
    code = cli.main(["serve", "--port", "0", "--db", str(tmp_path / "o.db"), "--config", str(config)])
    assert code == 2
    assert "[auth] keys[0].hash" in capsys.readouterr().err
