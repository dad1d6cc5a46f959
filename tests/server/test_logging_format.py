"""The JSON log formatter (on the serving hot path: one access line per call) formats exactly like the plain
``strftime`` + ``json.dumps(ensure_ascii=False, default=str)`` it replaced, across second boundaries."""
from __future__ import annotations

import json
import logging
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from server.logging_setup import REQUEST_FIELDS, JsonFormatter


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
