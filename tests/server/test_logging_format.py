"""The JSON log formatter (on the serving hot path: one access line per call) formats exactly like the plain
``strftime`` + ``json.dumps(ensure_ascii=False, default=str)`` it replaced, across second boundaries."""
from __future__ import annotations

import json
import logging
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from server.base.logging_setup import REQUEST_FIELDS, JsonFormatter


def _reference(record: logging.LogRecord) -> str:
    out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
           "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
    for key in REQUEST_FIELDS:
        value = getattr(record, key, None)
        if value is not None and value != "":
            out[key] = value
    return json.dumps(out, ensure_ascii=False, default=str)


def _record(created: float, msg: str, extra: dict) -> logging.LogRecord:
    r = logging.LogRecord("onramp.access", logging.INFO, __file__, 1, msg, (), None)
    r.created = created
    r.msecs = (created - int(created)) * 1000
    for k, v in extra.items():
        setattr(r, k, v)
    return r


@settings(max_examples=300, deadline=None)
@given(times=st.lists(st.floats(1.6e9, 1.9e9, allow_nan=False), min_size=1, max_size=6),
       msg=st.text(max_size=30),
       extra=st.fixed_dictionaries({}, optional={"request_id": st.text(max_size=10), "code": st.sampled_from(["OK", ""]),
                                                 "duration_ms": st.floats(0, 1e4), "peer": st.none(),
                                                 "caller": st.text(max_size=5)}))
def test_json_lines_are_the_same_as_the_plain_formatting(times, msg, extra):
    fmt = JsonFormatter()
    for t in [*times, times[0], times[0] + 0.0005, times[0] + 1.0]:  # same second again, then the next one
        record = _record(t, msg, extra)
        assert fmt.format(record) == _reference(record)


def test_non_json_values_are_written_with_str():
    fmt = JsonFormatter()
    record = _record(1.8e9 + 0.25, "x", {"request_id": object.__new__(type("Odd", (), {"__str__": lambda s: "odd"}))})
    assert json.loads(fmt.format(record))["request_id"] == "odd"
    assert fmt.format(record) == _reference(record)


def _access_lines(force_slow: bool) -> list[str]:
    import io

    from server.api import interceptors
    from server.base.logging_setup import bind_request, configure_logging, only_json_handler

    stream = io.StringIO()
    handler = configure_logging(stream=stream)
    assert only_json_handler(interceptors.access_log, logging.INFO) is handler
    if force_slow:  # a filter on the logger: the record must go through the normal handler chain
        interceptors.access_log.addFilter(lambda record: True)
    real_time = time.time
    try:
        time.time = lambda: 1.8e9 + 0.4567  # both paths read the clock once per line
        with bind_request(request_id="r-1", rpc="onramp.v1.Onramp/GetNextStep", peer="ipv4:127.0.0.1:5"):
            interceptors._access(logging.INFO, {"code": "OK", "duration_ms": 1.25, "caller": "peer:127.0.0.1"})
            interceptors._access(logging.INFO, {"code": "NOT_FOUND", "duration_ms": 0.5, "caller": "", "peer": "x"})
        interceptors._access(logging.INFO, {"code": "OK", "duration_ms": 2.0, "caller": "ü"})  # no call bound
    finally:
        time.time = real_time
        interceptors.access_log.filters.clear()
        logging.getLogger().removeHandler(handler)
    return stream.getvalue().splitlines()


def test_the_fast_access_line_is_the_line_of_the_normal_logging_path(monkeypatch):
    from server.api import interceptors
    from server.base.logging_setup import configure_logging, only_json_handler

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # without pytest's capture handlers (they force the normal path)
    fast, slow = _access_lines(False), _access_lines(True)
    assert len(fast) == 3 and fast == slow
    assert json.loads(fast[1])["peer"] == "x" and "caller" not in json.loads(fast[1])
    handler = configure_logging()
    try:
        assert only_json_handler(interceptors.access_log, logging.INFO) is handler
        other = logging.NullHandler()
        logging.getLogger("onramp").addHandler(other)  # a second handler on the way: normal path
        assert only_json_handler(interceptors.access_log, logging.INFO) is None
        logging.getLogger("onramp").removeHandler(other)
        handler.setLevel(logging.WARNING)
        assert only_json_handler(interceptors.access_log, logging.INFO) is None
    finally:
        logging.getLogger().removeHandler(handler)
