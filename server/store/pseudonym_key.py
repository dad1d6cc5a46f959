"""Where the pseudonym key comes from. It is kept apart from the database it pseudonymises: the database
alone must not re-identify its decision rows (anyone holding both could HMAC a guessed user id).

One resolution, :func:`find_key`, used by the server and the offline tools alike; the first found wins:

1. the environment variable ``ONRAMP_PSEUDONYM_KEY`` (a secret string of at least 16 characters, used as
   its UTF-8 bytes);
2. ``[privacy] pseudonym_key`` in the config (the same form);
3. the key file, ``[privacy] pseudonym_key_file`` (default ``<db_path>.key``): 64 hex characters, the key
   is the 32 bytes they encode. Like ssh with a private key, a file with any group or other permission bit
   is refused;
4. offline tools only: the key in the ``meta`` table of a database that a server of this version has not
   opened yet (older servers kept it there; the server moves it out first, :func:`open_pseudonymizer`).

The database keeps only the key's fingerprint (``meta`` ``pseudonym_key_fingerprint``, not secret): a key
that does not match it is refused, since its pseudonyms would not match the stored ones. On the first start
of a database (no fingerprint yet) and with no key found, the server generates the key file (mode 0600).
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from server.base.config import ConfigError, PrivacyConfig
from server.store.privacy import META_FINGERPRINT, META_KEY, Pseudonymizer
from server.store.sqlite import SqliteStore

ENV_VAR = "ONRAMP_PSEUDONYM_KEY"
MIN_KEY_CHARS = 16  # a key given as a string (environment, config)
MIN_KEY_BYTES = 16  # a key file (hex)

log = logging.getLogger(__name__)


class PseudonymKeyError(ConfigError):
    """No usable pseudonym key: the message starts with the key source at fault and says what to do."""


@dataclass(frozen=True, slots=True)
class KeySource:
    """A key and where it came from (``where`` names the source in messages, never the key)."""

    key: bytes
    where: str


def _file_label(path: Path) -> str:
    return f"privacy.pseudonym_key_file {path}"


def read_key_file(path: Path) -> bytes | None:
    """The key in the key file at ``path`` (None when there is no file). Refused: a file that is not a
    regular file, has any group/other permission bit, or does not hold at least 32 hex characters."""
    label = _file_label(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PseudonymKeyError(f"{label}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PseudonymKeyError(f"{label}: not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "posix" and mode & 0o077:
        raise PseudonymKeyError(f"{label}: permissions {mode:04o} are too open: the key re-identifies every "
                                f"pseudonym, so it must be readable by its owner only. Run: chmod 600 {path}")
    try:
        text = path.read_text("ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is not hexadecimal"
        raise PseudonymKeyError(f"{label}: holds no valid key ({why}; expected 64 hexadecimal characters, as "
                                "Onramp writes it)") from None
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"{label}: the key is too short ({len(key)} bytes; at least {MIN_KEY_BYTES}, "
                                "64 hexadecimal characters as Onramp writes it)")
    return key


def create_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` (hex) to a new key file at ``path``, durably and atomically: a temp file created with
    O_EXCL and mode 0600 (never readable by others, whatever the umask), fsynced, then hard-linked to
    ``path`` (which fails if ``path`` exists: a key file is never overwritten), then the directory fsynced."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # a umask may have cleared the owner's bits
            os.write(fd, key.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def find_key(privacy: PrivacyConfig, db_path: str, *, environ: Mapping[str, str] = os.environ,
             meta_get: Callable[[str], str | None] | None = None) -> KeySource | None:
    """The pseudonym key by the precedence of the module docstring, or None when there is none. The key
    kept in a database's ``meta`` table counts only when ``meta_get`` is given (offline tools)."""
    env = environ.get(ENV_VAR)
    if env:  # set and not empty
        if len(env) < MIN_KEY_CHARS:
            raise PseudonymKeyError(f"{ENV_VAR}: must be a secret string of at least {MIN_KEY_CHARS} characters "
                                    f"(got {len(env)} characters)")
        return KeySource(env.encode("utf-8"), f"{ENV_VAR} (environment variable)")
    if privacy.pseudonym_key:
        return KeySource(privacy.pseudonym_key.encode("utf-8"), "privacy.pseudonym_key")
    path = Path(privacy.key_file(db_path))
    key = read_key_file(path)
    if key is not None:
        return KeySource(key, _file_label(path))
    stored = meta_get(META_KEY) if meta_get is not None else None
    if stored is not None:
        return KeySource(bytes.fromhex(stored), f"the meta table of {db_path}")
    return None


def check_fingerprint(source: KeySource, stored: str | None, db_path: str, key_file: str) -> Pseudonymizer:
    """The pseudonymizer of ``source``; PseudonymKeyError when the database was used with another key."""
    p = Pseudonymizer(source.key)
    if stored is not None and stored != p.fingerprint:
        raise PseudonymKeyError(
            f"{source.where}: this key (fingerprint {p.fingerprint}) is not the key the database {db_path} was "
            f"pseudonymised with (fingerprint {stored}); its decisions, outcomes and tombstones would no longer "
            f"match. Give the database's own key (restore its key file {key_file} from the backup made with it, "
            f"or set {ENV_VAR} / [privacy] pseudonym_key to it), or use a new database file.")
    return p


def missing_key_error(db_path: str, key_file: str, stored: str) -> PseudonymKeyError:
    """No key found for a database that was pseudonymised with the key of fingerprint ``stored``."""
    return PseudonymKeyError(
        f"{_file_label(Path(key_file))}: no such file, and no {ENV_VAR} or [privacy] pseudonym_key, but the "
        f"database {db_path} was pseudonymised with a key (fingerprint {stored}). Restore the key file from the "
        f"backup made with the database (or give that key in {ENV_VAR} / [privacy] pseudonym_key); a new key "
        "would not match its pseudonyms.")


def open_pseudonymizer(store: SqliteStore, privacy: PrivacyConfig, *,
                       environ: Mapping[str, str] = os.environ) -> Pseudonymizer:
    """The server's pseudonymizer for ``store`` (call before the writer starts): moves a key kept in ``meta``
    by an older server into the key file, finds the key (:func:`find_key`), generates the key file on the
    first start of a database, and refuses a key that does not match the database's fingerprint."""
    key_file = Path(privacy.key_file(store.path))
    legacy = store.meta_get(META_KEY)
    if legacy is not None:
        _move_out_of_meta(store, legacy, key_file)
    stored = store.meta_get(META_FINGERPRINT)
    source = find_key(privacy, store.path, environ=environ)
    if source is None:
        if stored is not None:
            raise missing_key_error(store.path, str(key_file), stored)
        key = secrets.token_bytes(32)
        try:
            create_key_file(key_file, key)
        except OSError as exc:
            raise PseudonymKeyError(f"{_file_label(key_file)}: cannot create the key file "
                                    f"({exc.strerror or exc})") from None
        source = KeySource(key, _file_label(key_file))
        log.info("generated a new pseudonym key in %s (mode 0600); back it up together with the database %s: "
                 "without it the database's pseudonyms cannot be used", key_file, store.path)
    p = check_fingerprint(source, stored, store.path, str(key_file))
    if stored is None:
        store.meta_set(META_FINGERPRINT, p.fingerprint)
    log.info("pseudonym key from %s (fingerprint %s)", source.where, p.fingerprint)
    return p


def _move_out_of_meta(store: SqliteStore, stored_hex: str, key_file: Path) -> None:
    """Migrate a database whose ``meta`` table holds the key: write it to the key file first (fsynced), then
    delete the row and keep its fingerprint (one transaction), then scrub the WAL so no copy of the key
    stays in the database's files. A key file that exists already must hold that same key."""
    key = bytes.fromhex(stored_hex)
    existing = read_key_file(key_file)
    if existing is None:
        try:
            create_key_file(key_file, key)
        except OSError as exc:
            raise PseudonymKeyError(f"{_file_label(key_file)}: cannot move the pseudonym key of {store.path} out of "
                                    f"its meta table into this file ({exc.strerror or exc}); nothing was "
                                    "changed") from None
    elif existing != key:
        raise PseudonymKeyError(
            f"{_file_label(key_file)}: holds another key (fingerprint {Pseudonymizer(existing).fingerprint}) than "
            f"the one kept in the meta table of {store.path} (fingerprint {Pseudonymizer(key).fingerprint}); "
            "nothing was changed. If the file belongs to another database, move it away and start again.")
    store.begin()
    try:
        store.meta_delete(META_KEY)
        if store.meta_get(META_FINGERPRINT) is None:
            store.meta_set(META_FINGERPRINT, Pseudonymizer(key).fingerprint)
        store.commit()
    except BaseException:
        store.rollback()
        raise
    scrubbed = store.scrub_wal()  # when readers hold the WAL, the writer retries after its first commit
    log.warning("moved the pseudonym key of %s out of its meta table into the key file %s (mode 0600)%s; back "
                "the key file up together with the database: without it the database's pseudonyms cannot be used",
                store.path, key_file, "" if scrubbed else " (readers held the WAL: it is truncated after a later "
                "commit)")
