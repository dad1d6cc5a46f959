"""Atomic, self-checking checkpoint files: a crash while writing never leaves a file that is later loaded.

A file is one header line ``ONRAMP-CHECKPOINT <format> <sha256> <length>`` followed by the payload (JSON). It
is written to a temporary file in the same directory, fsynced, renamed over the old one with
:func:`os.replace` and the directory is fsynced. :func:`read_checkpoint` returns ``None`` (with a WARNING)
for a missing, truncated or corrupted file, so the caller falls back to rebuilding from the log.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
from typing import Any

log = logging.getLogger(__name__)

MAGIC = "ONRAMP-CHECKPOINT"
FORMAT_VERSION = 1


def encode_checkpoint(payload: dict[str, Any]) -> bytes:
    """The file content for ``payload``: header line (magic, format version, sha256, length) + JSON body."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    header = f"{MAGIC} {FORMAT_VERSION} {hashlib.sha256(body).hexdigest()} {len(body)}\n".encode()
    return header + body


def decode_checkpoint(data: bytes) -> dict[str, Any]:
    """The payload of checkpoint file content; ValueError naming what is wrong (header, version, length,
    checksum, JSON)."""
    header, sep, body = data.partition(b"\n")
    parts = header.decode("ascii", "replace").split(" ")
    if not sep or len(parts) != 4 or parts[0] != MAGIC:
        raise ValueError("not a checkpoint file (bad header)")
    if parts[1] != str(FORMAT_VERSION):
        raise ValueError(f"checkpoint format {parts[1]!r} (this server reads {FORMAT_VERSION})")
    if not parts[3].isdigit() or int(parts[3]) != len(body):
        raise ValueError(f"checkpoint truncated: {len(body)} payload bytes, header says {parts[3]}")
    if hashlib.sha256(body).hexdigest() != parts[2]:
        raise ValueError("checkpoint checksum mismatch")
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError("checkpoint payload is not an object")
    return payload


def write_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically and durably (temp file, fsync, os.replace, fsync dir)."""
    target = pathlib.Path(path)
    data = encode_checkpoint(payload)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The payload stored at ``path``, or ``None`` when there is none or it fails verification (logged as a
    WARNING: the caller rebuilds from the log instead)."""
    try:
        data = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode_checkpoint(data)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("ignoring checkpoint %s: %s; rebuilding from the log", path, exc)
        return None
