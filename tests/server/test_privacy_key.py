"""Where the pseudonym key comes from (server/store/pseudonym_key.py): a key file kept apart from the database
(generated 0600 at the first start, refused when group/other may read it), the environment or the config,
in that precedence; the database holds only the fingerprint, and a key that does not match it is refused;
a key kept in the meta table (older servers) is moved out into the key file and leaves no copy behind."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pathlib
import sqlite3
import stat

import pytest

from server.base.config import PrivacyConfig
from server.offline.common import OfflineError, open_readonly, pseudonymizer_for
from server.ops import cli
from server.store.privacy import META_FINGERPRINT, META_KEY, Pseudonymizer
from server.store.pseudonym_key import ENV_VAR, PseudonymKeyError, create_key_file, find_key, open_pseudonymizer
from server.store.sqlite import SqliteStore

NO_ENV: dict[str, str] = {}
CONFIGURED = PrivacyConfig(pseudonym_key="a-configured-key-0001")


def hmac32(key: bytes, subject: str) -> str:
    return hmac.new(key, subject.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def start(db: pathlib.Path, privacy: PrivacyConfig = PrivacyConfig(), environ: dict[str, str] = NO_ENV
          ) -> tuple[Pseudonymizer, dict[str, str | None]]:
    """What a server start does with the key; returns the pseudonymizer and the meta values after it."""
    store = SqliteStore(db)
    try:
        p = open_pseudonymizer(store, privacy, environ=environ)
        return p, {k: store.meta_get(k) for k in (META_KEY, META_FINGERPRINT)}
    finally:
        store.close()


def files_of(db: pathlib.Path) -> bytes:
    """The bytes of the database and its -wal and -shm files."""
    return b"".join(pathlib.Path(f"{db}{suffix}").read_bytes() for suffix in ("", "-wal", "-shm")
                    if pathlib.Path(f"{db}{suffix}").exists())


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_a_0600_key_file_and_the_database_keeps_only_its_fingerprint(
        tmp_path: pathlib.Path) -> None:
    db = tmp_path / "onramp.db"
    first, meta = start(db)
    key_file = tmp_path / "onramp.db.key"
    text = key_file.read_text()
    assert mode_of(key_file) == 0o600 and len(text) == 65 and text.endswith("\n")
    key = bytes.fromhex(text)
    assert first("user-7") == hmac32(key, "user-7")
    assert meta == {META_KEY: None, META_FINGERPRINT: first.fingerprint}
    assert text.strip().encode() not in files_of(db) and key not in files_of(db)
    again, _ = start(db)  # the next start reads the same key
    assert again("user-7") == first("user-7")
    other, _ = start(tmp_path / "other.db")
    assert other("user-7") != first("user-7")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_the_key_file_is_0600_whatever_the_umask_and_never_overwritten(tmp_path: pathlib.Path, umask: int) -> None:
    path = tmp_path / "k.key"
    old = os.umask(umask)
    try:
        create_key_file(path, b"\x01" * 32)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600 and path.read_text() == "01" * 32 + "\n"
    with pytest.raises(FileExistsError):
        create_key_file(path, b"\x02" * 32)
    assert path.read_text() == "01" * 32 + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temp file left behind


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700])
def test_a_key_file_group_or_others_may_use_is_refused(tmp_path: pathlib.Path, mode: int) -> None:
    db = tmp_path / "onramp.db"
    start(db)
    key_file = tmp_path / "onramp.db.key"
    key_file.chmod(mode)
    if mode & 0o077 == 0:  # only the owner's bits: fine
        start(db)
        return
    with pytest.raises(PseudonymKeyError) as err:
        start(db)
    assert str(err.value).startswith(f"privacy.pseudonym_key_file {key_file}: permissions {mode:04o} are too open")
    assert f"chmod 600 {key_file}" in str(err.value)


@pytest.mark.parametrize("content, problem", [("not a key\n", "holds no valid key"), ("ab" * 8, "too short"),
                                               ("", "too short")])
def test_a_key_file_without_a_valid_key_is_refused(tmp_path: pathlib.Path, content: str, problem: str) -> None:
    key_file = tmp_path / "mine.key"
    key_file.write_text(content)
    key_file.chmod(0o600)
    with pytest.raises(PseudonymKeyError, match=problem) as err:
        start(tmp_path / "onramp.db", PrivacyConfig(pseudonym_key_file=str(key_file)))
    assert str(err.value).startswith(f"privacy.pseudonym_key_file {key_file}: ")


def test_a_key_that_does_not_match_the_database_is_refused_whatever_its_source(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "onramp.db"
    first, meta = start(db)
    key_file = tmp_path / "onramp.db.key"
    original = key_file.read_text()
    cases = [(NO_ENV, CONFIGURED, "privacy.pseudonym_key: "),
             ({ENV_VAR: "an-environment-key-0001"}, PrivacyConfig(), f"{ENV_VAR} (environment variable): ")]
    for environ, privacy, source in cases:
        with pytest.raises(PseudonymKeyError) as err:
            start(db, privacy, environ)
        message = str(err.value)
        assert message.startswith(source), message
        assert f"the database {db} was pseudonymised with" in message and first.fingerprint in message
        assert f"restore its key file {key_file} from the backup" in message
    key_file.unlink()
    create_key_file(key_file, b"\x07" * 32)
    with pytest.raises(PseudonymKeyError) as err:
        start(db)
    assert str(err.value).startswith(f"privacy.pseudonym_key_file {key_file}: this key (fingerprint ")
    key_file.unlink()
    key_file.write_text(original)
    key_file.chmod(0o600)
    again, meta_after = start(db)  # nothing was changed by the refusals
    assert meta_after == meta and again("u1") == first("u1")


def test_a_used_database_without_its_key_is_refused_and_no_new_key_is_made(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "onramp.db"
    _, meta = start(db)
    key_file = tmp_path / "onramp.db.key"
    key_file.unlink()
    with pytest.raises(PseudonymKeyError) as err:
        start(db)
    message = str(err.value)
    assert message.startswith(f"privacy.pseudonym_key_file {key_file}: no such file")
    assert f"database {db} was pseudonymised with a key (fingerprint {meta[META_FINGERPRINT]})" in message
    assert "Restore the key file from the backup" in message
    assert not key_file.exists()


def test_precedence_environment_then_config_then_key_file_then_meta(tmp_path: pathlib.Path) -> None:
    db = str(tmp_path / "onramp.db")
    create_key_file(tmp_path / "onramp.db.key", b"\x05" * 32)
    env = {ENV_VAR: "an-environment-key-0001"}
    meta = {META_KEY: "06" * 32}.get
    assert find_key(CONFIGURED, db, environ=env, meta_get=meta).key == b"an-environment-key-0001"
    assert find_key(CONFIGURED, db, environ={ENV_VAR: ""}, meta_get=meta).key == b"a-configured-key-0001"
    assert find_key(PrivacyConfig(), db, environ=NO_ENV, meta_get=meta).key == b"\x05" * 32
    (tmp_path / "onramp.db.key").unlink()
    assert find_key(PrivacyConfig(), db, environ=NO_ENV, meta_get=meta).key == b"\x06" * 32
    assert find_key(PrivacyConfig(), db, environ=NO_ENV) is None  # the server never reads a key from meta
    with pytest.raises(PseudonymKeyError, match=f"^{ENV_VAR}: must be a secret string of at least 16"):
        find_key(PrivacyConfig(), db, environ={ENV_VAR: "short"})
    # a server started with the environment's key pseudonymises with it and writes no key file
    p, _ = start(tmp_path / "onramp.db", CONFIGURED, env)
    assert p("u1") == hmac32(b"an-environment-key-0001", "u1")
    assert not (tmp_path / "onramp.db.key").exists()
    elsewhere = tmp_path / "keys" / "onramp.key"
    elsewhere.parent.mkdir()
    p2, _ = start(tmp_path / "second.db", PrivacyConfig(pseudonym_key_file=str(elsewhere)))
    assert mode_of(elsewhere) == 0o600 and p2("u1") == hmac32(bytes.fromhex(elsewhere.read_text()), "u1")


def legacy_database(db: pathlib.Path, key_hex: str) -> None:
    """A database as a server that kept the key in its meta table leaves it (key and fingerprint in meta, some
    rows, closed: everything checkpointed into the database file)."""
    store = SqliteStore(db)
    p = Pseudonymizer(bytes.fromhex(key_hex))
    store.meta_set(META_KEY, key_hex)
    store.meta_set(META_FINGERPRINT, p.fingerprint)
    store.add_tombstone(p("someone"), 1)
    store.close()


def test_a_key_kept_in_the_meta_table_is_moved_into_the_key_file_and_no_copy_stays(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "onramp.db"
    key_hex = os.urandom(32).hex()
    legacy_database(db, key_hex)
    assert key_hex.encode() in files_of(db)
    store = SqliteStore(db)
    try:
        with caplog.at_level(logging.WARNING, logger="server.store.pseudonym_key"):
            p = open_pseudonymizer(store, PrivacyConfig(), environ=NO_ENV)
        # while the server runs: the row was deleted with secure_delete and the WAL truncated, so no copy
        # of the key stays in the database's files (closing the store would checkpoint the WAL anyway)
        assert key_hex.encode() not in files_of(db)
        assert store.meta_get(META_KEY) is None
        assert store.meta_get(META_FINGERPRINT) == Pseudonymizer(bytes.fromhex(key_hex)).fingerprint
    finally:
        store.close()
    key_file = tmp_path / "onramp.db.key"
    assert key_file.read_text() == key_hex + "\n" and mode_of(key_file) == 0o600
    assert p("someone") == hmac32(bytes.fromhex(key_hex), "someone")  # same pseudonyms as before
    assert f"moved the pseudonym key of {db} out of its meta table into the key file {key_file}" in caplog.text
    assert key_hex.encode() not in files_of(db)
    assert start(db)[0]("someone") == p("someone")


def test_moving_the_key_out_keeps_an_identical_key_file_and_refuses_another(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "onramp.db"
    key_hex = os.urandom(32).hex()
    legacy_database(db, key_hex)
    key_file = tmp_path / "onramp.db.key"
    create_key_file(key_file, b"\x09" * 32)
    with pytest.raises(PseudonymKeyError) as err:
        start(db)
    assert str(err.value).startswith(f"privacy.pseudonym_key_file {key_file}: holds another key")
    assert "nothing was changed" in str(err.value)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone() == (key_hex,)
    assert key_file.read_text() == "09" * 32 + "\n"
    key_file.unlink()
    create_key_file(key_file, bytes.fromhex(key_hex))
    p, meta = start(db)
    assert meta[META_KEY] is None and p("someone") == hmac32(bytes.fromhex(key_hex), "someone")


def test_offline_tools_find_the_key_as_the_server_does(tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "onramp.db"
    served, _ = start(db)
    conn = open_readonly(db)
    try:
        assert pseudonymizer_for(conn)("u1") == served("u1")
        with monkeypatch.context() as env:
            env.setenv(ENV_VAR, "an-environment-key-0001")
            with pytest.raises(PseudonymKeyError, match=f"^{ENV_VAR} .*is not the key the database"):
                pseudonymizer_for(conn)
        with pytest.raises(PseudonymKeyError, match="^privacy.pseudonym_key: "):
            pseudonymizer_for(conn, CONFIGURED)
        (tmp_path / "onramp.db.key").rename(tmp_path / "elsewhere.key")
        with pytest.raises(OfflineError, match=f"no pseudonym key for {db}: no key file {db}.key"):
            pseudonymizer_for(conn)
        found = pseudonymizer_for(conn, PrivacyConfig(pseudonym_key_file=str(tmp_path / "elsewhere.key")))
        assert found("u1") == served("u1")
    finally:
        conn.close()
    # a database no server of this version has opened yet: its meta key, read-only, nothing moved
    legacy = tmp_path / "legacy.db"
    key_hex = os.urandom(32).hex()
    legacy_database(legacy, key_hex)
    conn = open_readonly(legacy)
    try:
        assert pseudonymizer_for(conn)("u1") == hmac32(bytes.fromhex(key_hex), "u1")
    finally:
        conn.close()
    assert not (tmp_path / "legacy.db.key").exists()


def test_serve_refuses_to_start_with_a_key_that_does_not_match(tmp_path: pathlib.Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "onramp.db"
    start(db)
    monkeypatch.setenv(ENV_VAR, "an-environment-key-0001")
    assert cli.main(["serve", "--port", "0", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"onramp: {ENV_VAR} (environment variable): this key (fingerprint " in err
    assert f"is not the key the database {db} was pseudonymised with" in err
