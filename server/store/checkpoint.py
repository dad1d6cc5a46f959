"""Atomic, self-checking checkpoint files: a crash while writing never leaves a file that is later loaded.

A file is one header line ``ONRAMP-CHECKPOINT <format> <sha256> <length>`` followed by the payload: a pickle
(format 2, what the server writes: profiles and River models are plain Python objects, and pickling them is
several times faster than any JSON mapping) or JSON (format 1, still read). The SHA-256 over the payload is
checked before anything is unpickled, so only a complete file this server wrote is ever loaded. It is
written to a temporary file in the same directory (mode 0600, as :func:`tempfile.mkstemp` creates it: the
file holds user profiles), fsynced, renamed over the old one with :func:`os.replace` and the directory is
fsynced. A writer killed before the rename leaves the old file intact and an orphaned temporary file, which
:func:`remove_temp_files` deletes. :func:`read_checkpoint` returns ``None`` (with a WARNING) for a missing,
truncated or corrupted file, so the caller falls back to rebuilding from the log.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import pickle
import tempfile
from typing import Any

log = logging.getLogger(__name__)

MAGIC = "ONRAMP-CHECKPOINT"
JSON_FORMAT = 1
FORMAT_VERSION = 2  # pickle body
READABLE_FORMATS = (JSON_FORMAT, FORMAT_VERSION)
TEMP_SUFFIX = ".tmp"


def encode_checkpoint(payload: dict[str, Any], format_version: int = FORMAT_VERSION) -> bytes:
    """The file content for ``payload``: header line (magic, format version, sha256, length) + body (pickle
    for format 2, JSON for format 1)."""
    if format_version == JSON_FORMAT:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    elif format_version == FORMAT_VERSION:
        body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        raise ValueError(f"unknown checkpoint format {format_version!r} (known: {READABLE_FORMATS})")
    header = f"{MAGIC} {format_version} {hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    return header + body


def decode_checkpoint(data: bytes) -> dict[str, Any]:
    """The payload of checkpoint file content; ValueError naming what is wrong (header, version, length,
    checksum, body). The checksum is verified before the body is decoded."""
    header, sep, body = data.partition(b"\n")
    parts = header.decode("ascii", "replace").split(" ")
    if not sep or len(parts) != 4 or parts[0] != MAGIC:
        raise ValueError("not a checkpoint file (bad header)")
    if parts[1] not in {str(f) for f in READABLE_FORMATS}:
        raise ValueError(f"checkpoint format {parts[1]!r} (this server reads {', '.join(map(str, READABLE_FORMATS))})")
    if not parts[3].isdigit() or int(parts[3]) != len(body):
        raise ValueError(f"checkpoint truncated: {len(body)} payload bytes, header says {parts[3]}")
    if hashlib.sha256(body).hexdigest() != parts[2]:
        raise ValueError("checkpoint checksum mismatch")
    if parts[1] == str(JSON_FORMAT):
        payload = json.loads(body)
    else:
        try:
            payload = pickle.loads(body)
        except Exception as exc:  # noqa: BLE001 - pickle raises many types on bad input
            raise ValueError(f"checkpoint body cannot be read: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError("checkpoint payload is not an object")
    return payload


def write_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any] | bytes) -> int:
    """Write ``payload`` (or content already made by :func:`encode_checkpoint`) to ``path`` atomically and
    durably (temp file, fsync, os.replace, fsync dir). Returns the bytes written."""
    target = pathlib.Path(path)
    data = payload if isinstance(payload, bytes) else encode_checkpoint(payload)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def _temp_prefix(target: pathlib.Path) -> str:
    return f".{target.name}."


def remove_temp_files(path: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files :func:`write_checkpoint` left next to ``path`` when its writer was killed
    before the rename (call only while no checkpoint of ``path`` is being written); their names."""
    target = pathlib.Path(path)
    prefix, removed = _temp_prefix(target), []
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return []
    for tmp in candidates:
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove the orphaned checkpoint temp file %s: %s", tmp, exc)
            continue
        removed.append(str(tmp))
    return removed


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The payload stored at ``path``, or ``None`` when there is none or it fails verification (logged as a
    WARNING: the caller rebuilds from the log instead)."""
    try:
        data = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("ignoring checkpoint %s: cannot read it (%s); rebuilding from the log", path, exc)
        return None
    try:
        return decode_checkpoint(data)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        log.warning("ignoring checkpoint %s: %s; rebuilding from the log", path, exc)
        return None
