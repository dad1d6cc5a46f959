"""Structured JSON logs and request ids: one object per line, request fields on every line of a call."""
from __future__ import annotations

import io
import json
import logging

import grpc
import pytest

from onramp.v1 import onramp_pb2 as pb
from onramp.v1 import onramp_pb2_grpc as pb_grpc
from ops_support import auth_config, captured_json_logs, key_md, ops_with, run_async, tiny_server
from server.base.logging_setup import LoggingConfig, LoggingConfigError, bind_request, configure_logging


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_request_ids_in_logs_and_trailers_over_grpc() -> None:
    async def scenario() -> dict:
        out: dict = {}
        async with tiny_server(ops_with(auth=auth_config())) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OnrampStub(channel)
                call = stub.GetNextStep(pb.NextStepRequest(user_id="u1"),
                                        metadata=(*key_md("decider"), ("x-request-id", "req-abc.123")))
                await call
                out["given"] = dict(await call.trailing_metadata())
                call = stub.GetNextStep(pb.NextStepRequest(user_id="u1"),
                                        metadata=(*key_md("decider"), ("x-request-id", "bad id with spaces")))
                await call
                out["replaced"] = dict(await call.trailing_metadata())
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetNextStep(pb.NextStepRequest(user_id="boom"), metadata=key_md("decider"))
                out["boom"] = dict(err.value.trailing_metadata())
        return out

    with captured_json_logs() as stream:
        r = run_async(scenario())
    records = _lines(stream.getvalue())
    assert r["given"]["x-request-id"] == "req-abc.123"
    generated = r["replaced"]["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32
    mine = [x for x in records if x.get("request_id") == "req-abc.123"]
    by_msg = {x["msg"]: x for x in mine}
    assert by_msg["deciding for one user"]["logger"] == "tiny"  # the servicer's own line carries the id
    done = by_msg["rpc done"]
    assert done["rpc"] == "onramp.v1.Onramp/GetNextStep" and done["code"] == "OK"
    assert done["peer"].startswith("ipv4:127.0.0.1:") and done["caller"] == "decider"
    assert done["level"] == "INFO" and done["logger"] == "onramp.access"
    assert isinstance(done["duration_ms"], float) and done["ts"].endswith("Z")
    failed = [x for x in records if x.get("request_id") == r["boom"]["x-request-id"] and x["level"] == "ERROR"]
    assert failed and failed[0]["code"] == "UNKNOWN" and "tiny servicer exploded" in failed[0]["exc"]


def test_configure_logging_writes_one_json_object_per_line() -> None:
    stream = io.StringIO()
    old_level = logging.getLogger().level
    handler = configure_logging(LoggingConfig(level="DEBUG"), stream=stream)
    try:
        log = logging.getLogger("onramp.test")
        with bind_request(request_id="r1", rpc="onramp.v1.Onramp/GetNextStep", peer="ipv4:127.0.0.1:1"):
            log.info("inside %s", "call")
        log.debug("outside\nwith newline")
        # configuring again replaces the handler instead of doubling lines
        handler = configure_logging(LoggingConfig(level="DEBUG"), stream=stream)
        log.warning("once")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert [x["msg"] for x in records] == ["inside call", "outside\nwith newline", "once"]
    assert records[0]["request_id"] == "r1" and records[0]["rpc"] == "onramp.v1.Onramp/GetNextStep"
    assert "request_id" not in records[1]
    assert set(records[2]) == {"ts", "level", "logger", "msg"}


def test_text_format_and_config_errors() -> None:
    stream = io.StringIO()
    old_level = logging.getLogger().level
    handler = configure_logging(LoggingConfig.from_mapping({"format": "text", "level": "info"}), stream=stream)
    try:
        with bind_request(request_id="r2"):
            logging.getLogger("onramp.test").info("hello")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(old_level)
    assert "INFO onramp.test: hello request_id=r2" in stream.getvalue()
    for section, where in (({"level": "LOUD"}, "[logging] level"), ({"format": "xml"}, "[logging] format"),
                           ({"colour": True}, "[logging] colour")):
        with pytest.raises(LoggingConfigError) as err:
            LoggingConfig.from_mapping(section)
        assert str(err.value).startswith(where)


def test_auto_format_is_text_on_a_terminal_and_json_elsewhere() -> None:
    import os
    import pty

    from server.base.logging_setup import JsonFormatter, TextFormatter

    assert LoggingConfig().format == "auto"
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal, io.StringIO() as pipe_like:
        old_level = logging.getLogger().level
        try:
            on_terminal = configure_logging(LoggingConfig(), stream=terminal)
            assert isinstance(on_terminal.formatter, TextFormatter)
            elsewhere = configure_logging(LoggingConfig(), stream=pipe_like)
            assert isinstance(elsewhere.formatter, JsonFormatter)
            forced = configure_logging(LoggingConfig(format="json"), stream=terminal)
            assert isinstance(forced.formatter, JsonFormatter)
            logging.getLogger().removeHandler(forced)
        finally:
            logging.getLogger().setLevel(old_level)
    os.close(master)
    with pytest.raises(LoggingConfigError) as err:
        LoggingConfig.from_mapping({"format": "yaml"})
    assert str(err.value) == "[logging] format: expected one of ['auto', 'json', 'text'] (got 'yaml')"
