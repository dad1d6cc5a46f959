"""Checkpoint files: round trip, atomic replace, and every truncated or corrupted file is refused."""
from __future__ import annotations

import logging
import os
import pathlib
import stat

import pytest

from server.store.checkpoint import (FORMAT_VERSION, JSON_FORMAT, decode_checkpoint, encode_checkpoint, read_checkpoint,
                               remove_temp_files, write_checkpoint)

PAYLOAD = {"events_seq": 1234, "outcomes": 56, "engine": {"learned": 7, "policy": [0.5, 1.25]}}


def test_round_trip_and_replace(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "onramp.ckpt"
    assert read_checkpoint(path) is None
    write_checkpoint(path, PAYLOAD)
    assert read_checkpoint(path) == PAYLOAD
    write_checkpoint(path, {**PAYLOAD, "events_seq": 2000})
    assert read_checkpoint(path)["events_seq"] == 2000
    assert [p.name for p in tmp_path.iterdir()] == ["onramp.ckpt"]  # no temp file left behind


@pytest.mark.parametrize("cut", [0, 10, 40, -1])
def test_a_truncated_checkpoint_is_not_loaded(tmp_path: pathlib.Path, cut: int, caplog) -> None:
    data = encode_checkpoint(PAYLOAD)
    path = tmp_path / "onramp.ckpt"
    path.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    with caplog.at_level(logging.WARNING, logger="server.store.checkpoint"):
        assert read_checkpoint(path) is None
    assert "ignoring checkpoint" in caplog.text


def test_a_corrupted_checkpoint_is_not_loaded(tmp_path: pathlib.Path, caplog) -> None:
    data = bytearray(encode_checkpoint(PAYLOAD))
    data[-3] ^= 0x01  # one flipped bit in the payload, length unchanged
    path = tmp_path / "onramp.ckpt"
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="server.store.checkpoint"):
        assert read_checkpoint(path) is None
    assert "checksum mismatch" in caplog.text
    with pytest.raises(ValueError, match="format"):
        decode_checkpoint(encode_checkpoint(PAYLOAD).replace(f"CHECKPOINT {FORMAT_VERSION} ".encode(),
                                                             b"CHECKPOINT 9 ", 1))


def test_both_formats_round_trip_and_objects_survive(tmp_path: pathlib.Path) -> None:
    assert decode_checkpoint(encode_checkpoint(PAYLOAD, JSON_FORMAT)) == PAYLOAD
    payload = {"blob": b"\x00\xff", "set": {1, 2}, "nested": {"t": (1, 2.5)}}
    path = tmp_path / "onramp.ckpt"
    assert write_checkpoint(path, payload) == path.stat().st_size
    assert read_checkpoint(path) == payload
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        encode_checkpoint(PAYLOAD, 7)


@pytest.mark.parametrize("server,message", [
    ({"checkpoint_interval_s": -1}, "server.checkpoint_interval_s: must be a number of seconds from 0"),
    ({"checkpoint_interval_s": "300"}, "server.checkpoint_interval_s: must be a number of seconds from 0"),
    ({"checkpoint_interval_s": True}, "server.checkpoint_interval_s: must be a number of seconds from 0"),
    ({"checkpoint_interval_s": 0.5}, "server.checkpoint_interval_s: must be 0 (off) or at least 1 second"),
    ({"checkpoint_interval_s": 90_000}, "server.checkpoint_interval_s: must be a number of seconds from 0"),
    ({"checkpoint_path": 5}, "server.checkpoint_path: must be a file path string"),
    ({"checkpoint_fork": "yes"}, "server.checkpoint_fork: must be true (write checkpoints from a forked child) or false"),
    ({"checkpoint_fork": 1}, "server.checkpoint_fork: must be true (write checkpoints from a forked child) or false"),
])
def test_checkpoint_keys_are_validated_naming_the_key(server: dict, message: str) -> None:
    from server.base.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as err:
        parse_config({"server": server})
    assert str(err.value).startswith(message)


def test_checkpoint_key_defaults_and_file() -> None:
    from server.base.config import parse_config
    cfg = parse_config({"server": {"db_path": "/data/onramp.db"}}).server
    assert (cfg.checkpoint_interval_s, cfg.checkpoint_file) == (300.0, "/data/onramp.db.checkpoint")
    cfg = parse_config({"server": {"checkpoint_interval_s": 0, "checkpoint_path": "/x/state.ckpt"}}).server
    assert (cfg.checkpoint_interval_s, cfg.checkpoint_file) == (0.0, "/x/state.ckpt")
    assert parse_config({}).server.checkpoint_fork is hasattr(os, "fork")  # on where fork exists
    assert parse_config({"server": {"checkpoint_fork": False}}).server.checkpoint_fork is False


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_checkpoint_file_is_readable_by_its_owner_only(tmp_path: pathlib.Path) -> None:
    """It holds user profiles (and is a pickle): mode 0600, whatever the umask, also after a replace."""
    path = tmp_path / "onramp.ckpt"
    old = os.umask(0o022)
    try:
        write_checkpoint(path, PAYLOAD)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        path.chmod(0o644)
        write_checkpoint(path, PAYLOAD)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_orphaned_temp_files_of_this_checkpoint_only_are_removed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "onramp[1].ckpt"  # glob characters in the name are taken literally
    write_checkpoint(path, PAYLOAD)
    orphans = [tmp_path / ".onramp[1].ckpt.x1y2.tmp", tmp_path / ".onramp[1].ckpt.zz.tmp"]
    others = [tmp_path / ".onramp1.ckpt.x1y2.tmp", tmp_path / ".other.ckpt.ab.tmp", tmp_path / "onramp[1].ckpt.tmp"]
    for f in orphans + others:
        f.write_bytes(b"half")
    assert sorted(remove_temp_files(path)) == sorted(str(f) for f in orphans)
    assert all(f.exists() for f in others) and read_checkpoint(path) == PAYLOAD
    assert remove_temp_files(tmp_path / "missing-dir" / "x.ckpt") == []
