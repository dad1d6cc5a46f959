"""Logs: one JSON object per line for machines, or human-readable lines on a terminal, with the request id, RPC
and peer of the call being handled.

The interceptor stores the call's fields in a context variable (:func:`bind_request`); a filter copies them
onto every record logged while the call runs, so any module's ``logging.getLogger(__name__)`` lines carry
them without extra work.
"""
from __future__ import annotations

import contextvars
import json
import logging
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

REQUEST_FIELDS = ("request_id", "rpc", "peer", "caller", "code", "duration_ms")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("auto", "json", "text")

_request: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("onramp_request", default=None)


class LoggingConfigError(ValueError):
    """A bad ``[logging]`` setting; the message starts with the key at fault."""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """The ``[logging]`` section: ``level`` and ``format`` ("json": one object per line; "text": human-readable
    lines; "auto": text when the log stream, stderr, is a terminal, else json)."""

    level: str = "INFO"
    format: str = "auto"

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "LoggingConfig":
        """Validate a ``[logging]`` table; errors name the key, e.g. ``[logging] level``."""
        section = dict(section or {})
        unknown = set(section) - {"level", "format"}
        if unknown:
            raise LoggingConfigError(f"[logging] {sorted(unknown)[0]}: unknown key (expected level, format)")
        level = section.get("level", "INFO")
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise LoggingConfigError(f"[logging] level: expected one of {list(LEVELS)} (got {level!r})")
        fmt = section.get("format", "auto")
        if fmt not in FORMATS:
            raise LoggingConfigError(f"[logging] format: expected one of {list(FORMATS)} (got {fmt!r})")
        return cls(level.upper(), fmt)


def resolved_format(fmt: str, stream: IO[str]) -> str:
    """The format ``fmt`` means on ``stream``: "auto" is "text" on a terminal and "json" anywhere else (a pipe,
    a file, a log collector); "json" and "text" mean themselves."""
    if fmt != "auto":
        return fmt
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


@contextmanager
def bind_request(**fields: Any) -> Iterator[None]:
    """Attach request fields (request_id, rpc, peer) to every record logged inside the block."""
    token = _request.set(fields)
    try:
        yield
    finally:
        try:
            _request.reset(token)
        except ValueError:
            # An async generator closed from another task (grpc cancelling a stream) runs this in a
            # different Context; the variable then belongs to a context that is going away anyway.
            pass


def enter_request(fields: Mapping[str, Any]) -> contextvars.Token[Mapping[str, Any] | None]:
    """:func:`bind_request` without the context manager, for the per-call hot path: bind ``fields`` and
    return the token to give to :func:`leave_request`."""
    return _request.set(fields)


def leave_request(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    """Undo :func:`enter_request` (a no-op when the call ends in another context, as in bind_request)."""
    try:
        _request.reset(token)
    except ValueError:
        pass


def current_request_id() -> str:
    """The request id of the call being handled, or '' outside a call."""
    fields = _request.get()
    return str(fields.get("request_id", "")) if fields else ""


class RequestContextFilter(logging.Filter):
    """Copies the bound request fields onto each record (without overwriting fields given via ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _request.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, the request fields present, and exc.

    Every call writes an access line, so this is on the serving hot path: the seconds part of ``ts`` is
    reused while the second is the same, and one encoder serves every record (the output is exactly
    ``json.dumps(out, ensure_ascii=False, default=str)``)."""

    _encoder = json.JSONEncoder(ensure_ascii=False, default=str)
    # The C encoder that JSONEncoder.encode builds on every call, built once (about half the cost of a line).
    # Same text; it skips the circular-reference check, which a flat dict of request fields never needs.
    _chunks = None if c_make_encoder is None else c_make_encoder(
        None, _encoder.default, encode_basestring, None, ": ", ", ", False, False, True)

    def _encode(self, out: dict[str, Any]) -> str:
        chunks = self._chunks
        return self._encoder.encode(out) if chunks is None else "".join(chunks(out, 0))

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            self._second = second
        return f"{self._second_text}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in REQUEST_FIELDS:
            value = getattr(record, key, None)
            if value is not None and value != "":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self._encode(out)


    def format_access(self, created: float, level: str, logger: str, msg: str, values: Mapping[str, Any]) -> str:
        """What :meth:`format` gives for a record of ``logger`` at ``level`` created at ``created`` with message
        ``msg``, no exception and the request fields ``values`` (the fast access-line path, no LogRecord)."""
        out: dict[str, Any] = {
            "ts": self._timestamp(created, int((created - int(created)) * 1000)),  # LogRecord.msecs, as int
            "level": level,
            "logger": logger,
            "msg": msg,
        }
        for key in REQUEST_FIELDS:
            value = values.get(key)
            if value is not None and value != "":
                out[key] = value
        return self._encode(out)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the request fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = [f"{k}={getattr(record, k)}" for k in REQUEST_FIELDS if getattr(record, k, None) not in (None, "")]
        return base + (" " + " ".join(extras) if extras else "")


_HANDLER_MARK = "_onramp_handler"


def only_json_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[Any] | None:
    """The Onramp JSON handler when it is, as :func:`configure_logging` installs it, the only place a record
    of ``logger`` at ``level`` would go (no filter on ``logger``, no other handler on it or its ancestors,
    the handler's own filter the request-context one); else None, and the record must take the normal path.

    With it, the interceptor writes the per-call access line without a ``LogRecord`` and the handler
    chain (:func:`write_access`), which was ~7 % of the event loop's time under load."""
    if logger.filters or logger.disabled:
        return None
    found: logging.Handler | None = None
    c: logging.Logger | None = logger
    while c is not None:
        for h in c.handlers:
            if found is not None:
                return None
            found = h
        if not c.propagate:
            break
        c = c.parent
    if found is None or not getattr(found, _HANDLER_MARK, False) or type(found) is not logging.StreamHandler \
            or type(found.formatter) is not JsonFormatter or level < found.level or len(found.filters) != 1 \
            or type(found.filters[0]) is not RequestContextFilter:
        return None
    return found


def write_access(handler: logging.StreamHandler[Any], logger: logging.Logger, level: int, msg: str,
                 extra: Mapping[str, Any]) -> None:
    """Write the line ``logger.log(level, msg, extra=extra)`` would write through ``handler`` (one that
    :func:`only_json_handler` returned): ``extra`` first, then the bound request fields, as the filter does."""
    bound = _request.get()
    values = {**bound, **extra} if bound else extra
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    handler.acquire()
    try:
        try:
            line = formatter.format_access(time.time(), logging.getLevelName(level), logger.name, msg, values)
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: report through handleError
            handler.handleError(logger.makeRecord(logger.name, level, __file__, 0, msg, (), None, None, dict(extra)))
    finally:
        handler.release()


def configure_logging(config: LoggingConfig = LoggingConfig(), stream: IO[str] | None = None) -> logging.Handler:
    """Install one handler on the root logger (replacing a previous Onramp handler) and return it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if resolved_format(config.format, stream) == "json" else TextFormatter())
    handler.addFilter(RequestContextFilter())
    root.addHandler(handler)
    root.setLevel(config.level)
    return handler
