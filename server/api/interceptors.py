"""The one grpc.aio server interceptor that guards and observes every call (installed on a server as an
interceptor, or by :meth:`OnrampInterceptor.guard` around each handler as it is registered).

Per call, in order: request id (from ``x-request-id`` or new) echoed in trailing metadata -> API key and
role check (server/api/auth.py; each refused key and each slow salted-hash check takes a token from the client
host's budget of failed authentications, RESOURCE_EXHAUSTED once it is spent, while a key verified before
never touches it; failed authentications are answered about ``[limits] auth_failure_delay_ms`` late) ->
call rate limit (server/api/limits.py) -> request decoding (bytes that are not a valid request message end the
call with INVALID_ARGUMENT, not grpc.aio's UNKNOWN) -> the handler, with streamed events counted against the
events limit -> latency histogram and access log line (server/base/metrics.py, server/base/logging_setup.py).
Health checks and reflection need no key and are not rate limited.
Streamed events are counted as the servicer iterates its ``request_iterator`` (``async for``); a servicer
that reads with ``context.read()`` instead bypasses the events limit.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from server.api.auth import AuthError, KeyRing, Principal, peer_network, required_role
from server.api.limits import AUTH_FAILURES, RETRY_AFTER_MS_HEADER, AuthFailureLimiter, RateLimited, RateLimiter
from server.base.ids import new_request_id
from server.base.logging_setup import bind_request, enter_request, leave_request, only_json_handler, write_access
from server.base.metrics import MethodMetrics, Metrics

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Failed authentications answered late at once, at most; beyond it they are answered right away (memory bound).
MAX_DELAYED_REFUSALS = 1000
# Methods whose request messages carry events counted by the events/s limit.
EVENT_METHODS = frozenset({"/onramp.v1.Onramp/IngestEvents", "/onramp.v1.Onramp/IngestEventBatches"})

access_log = logging.getLogger("onramp.access")
_JITTER = random.Random()  # spreads late answers to failed authentications


def event_count(message: Any) -> int:
    """Events carried by one request message: an EventBatch counts its events, an Event counts one."""
    events = getattr(message, "events", None)
    if events is not None:
        return len(events)
    return 1 if hasattr(message, "event_id") else 0


def request_id_from(metadata: Any) -> str:
    """The caller's ``x-request-id`` when well-formed (1-128 of [A-Za-z0-9._:-]), else a new random id."""
    for name, value in metadata or ():
        if name.lower() == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID_RE.match(value):
            return value
    return new_request_id()


def _code_name(code: Any) -> str:
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


def _access(level: int, extra: dict[str, Any]) -> None:
    """Log the "rpc done" access line at ``level``: straight to the Onramp JSON handler when it is the only
    one (:func:`server.base.logging_setup.only_json_handler`, same line), else through the normal handlers without
    the caller lookup (``findCaller`` walks the stack on every record; the source is always this module)."""
    if access_log.isEnabledFor(level):
        handler = only_json_handler(access_log, level)
        if handler is not None:
            write_access(handler, access_log, level, "rpc done", extra)
            return
        access_log.handle(access_log.makeRecord(access_log.name, level, __file__, 0, "rpc done", (), None,
                                                "_finish", extra))


class MalformedRequest(Exception):
    """A request message whose bytes are not valid protobuf for its type (a client mistake)."""


@dataclass(frozen=True, slots=True)
class _Route:
    """What the interceptor needs to know about one method, worked out once per method, not per call."""

    method: str  # the full name, "/onramp.v1.Onramp/GetNextStep"
    name: str  # without the leading slash, as metrics and logs show it
    open: bool  # no role needed (health, reflection): no key, no rate limit, access lines at DEBUG
    metrics: MethodMetrics | None


@dataclass(slots=True)
class _Call:
    """What the interceptor knows about one call while it runs."""

    method: str
    request_id: str
    peer: str
    started: float
    metadata: Any = None
    principal: Principal | None = None
    code: str = "OK"


class _GuardedHandlers(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come wrapped by the interceptor (:meth:`OnrampInterceptor.guard`)."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: "OnrampInterceptor") -> None:
        self._inner = inner
        self._interceptor = interceptor

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._interceptor.guarded(handler, handler_call_details.method)


class OnrampInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, rate-limits, times and logs every RPC; see the module docstring for the order."""

    def __init__(self, keyring: KeyRing, limiter: RateLimiter | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 auth_failures: AuthFailureLimiter | None = None) -> None:
        self.keyring = keyring
        self.limiter = limiter if limiter is not None and limiter.active else None
        self.auth_failures = auth_failures if auth_failures is not None and auth_failures.active \
            and keyring.enabled else None
        # The client host a failure is counted for (tests group by connection instead: every peer one host).
        self.failure_key: Callable[[str], str] = peer_network
        # A failed authentication is answered about this late: a client guessing keys with N calls in flight
        # gets about N answers per delay, and waiting costs the server no CPU.
        self.failure_delay_s = auth_failures.config.auth_failure_delay_ms / 1000 if auth_failures is not None \
            else 0.0
        self.max_delayed = MAX_DELAYED_REFUSALS
        self._delayed = 0
        self.metrics = metrics
        self._clock = clock
        # method -> (the servicer's handler, our wrapped handler): a method's handler object is the same on
        # every call, so it is wrapped once (bounded by the number of served methods).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.guarded(handler, handler_call_details.method)

    def guarded(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` (of ``method``) wrapped to run every per-call step of this interceptor around it; wrapped
        once per method and handler object, so asking again costs a dict lookup."""
        hit = self._wrapped.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def guard(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """Make ``server`` (made without interceptors) wrap each method handler registered on it from now on,
        generic or pre-registered, with :meth:`guarded` at registration. Every call then runs the same steps
        as through :meth:`intercept_service`, without grpc.aio running an interceptor chain (coroutines) to
        find each call's handler, which cost about 30 µs of server CPU per call against a tiny servicer."""
        add_generic = server.add_generic_rpc_handlers
        add_registered = server.add_registered_method_handlers

        def add_generic_rpc_handlers(handlers: Sequence[grpc.GenericRpcHandler]) -> None:
            add_generic(tuple(_GuardedHandlers(handler, self) for handler in handlers))

        def add_registered_method_handlers(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
            add_registered(service, {name: self.guarded(handler, f"/{service}/{name}")
                                     for name, handler in handlers.items()})

        server.add_generic_rpc_handlers = add_generic_rpc_handlers  # type: ignore[method-assign]
        server.add_registered_method_handlers = add_registered_method_handlers  # type: ignore[method-assign]
        return server

    def _route(self, method: str) -> _Route:
        name = method.lstrip("/")
        return _Route(method, name, required_role(method) is None,
                      self.metrics.for_method(name) if self.metrics is not None else None)

    # -- per-call steps -------------------------------------------------------------------------------------

    def _admit(self, call: _Call, route: _Route, context: grpc.aio.ServicerContext) -> Awaitable[None] | None:
        """Set the request id trailer, check key/role and the call limit. None when the call is admitted
        right away (no coroutine on the hot path), else the awaitable that finishes the check (a slow key hash
        on a worker thread) or aborts the call with the refusal."""
        context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        try:
            principal = self.keyring.authorize_now(call.method, call.metadata, call.peer)
        except AuthError as err:
            return self._refuse_auth(call, context, err)
        if principal is None:
            return self._admit_slow(call, route, context)
        call.principal = principal
        return self._limit(call, route, context)

    def _limit(self, call: _Call, route: _Route, context: grpc.aio.ServicerContext) -> Awaitable[None] | None:
        if self.limiter is not None and not route.open:
            try:
                self.limiter.check_call(call.principal.name if call.principal else call.peer)
            except RateLimited as limited:
                return self._refuse(call, context, limited)
        return None

    async def _admit_slow(self, call: _Call, route: _Route, context: grpc.aio.ServicerContext) -> None:
        """Check a key that needs a slow salted hash; the hash is paid for with a token from the client host's
        failure budget, given back when the key is valid (one computation serves concurrent calls with the
        same key, and only it takes a token)."""
        failures = self.auth_failures
        host = self.failure_key(call.peer) if failures is not None else ""
        took = False

        def before_hash() -> None:
            nonlocal took
            if failures is not None:
                failures.take(host)
                took = True

        def give_back() -> None:  # the key was valid: its check is no failure
            if failures is not None and took:
                failures.give(host)

        try:
            call.principal = await self.keyring.authorize_async(call.method, call.metadata, call.peer, before_hash)
        except RateLimited as limited:
            await self._refuse(call, context, limited)
        except AuthError as err:
            if err.code != grpc.StatusCode.UNAUTHENTICATED:
                give_back()  # a valid key without the role
            await self._refuse_auth(call, context, err, counted=took)
        else:
            give_back()
        refusal = self._limit(call, route, context)
        if refusal is not None:
            await refusal

    async def _refuse_auth(self, call: _Call, context: grpc.aio.ServicerContext, err: AuthError,
                           counted: bool = False) -> None:
        """Answer an auth refusal; an UNAUTHENTICATED one takes a token from the client host's failure budget
        (unless ``counted`` already), and once that is spent the answer is RESOURCE_EXHAUSTED instead."""
        if err.code == grpc.StatusCode.UNAUTHENTICATED:
            if self.auth_failures is not None and not counted:
                try:
                    self.auth_failures.take(self.failure_key(call.peer))
                except RateLimited as limited:
                    await self._refuse(call, context, limited)
            await self._delay_failure()
        call.code = err.code.name
        if self.metrics is not None:
            self.metrics.auth_failures_total.labels(code=err.code.name).inc()
        access_log.warning("call refused: %s", err.message, extra={"code": err.code.name})
        await context.abort(err.code, err.message, trailing_metadata=((REQUEST_ID_HEADER, call.request_id),))

    async def _delay_failure(self) -> float:
        """Wait 0.5-1.5 x ``failure_delay_s`` (at random, so answers held together do not come back together)
        before answering a failed authentication, unless too many already wait; returns the seconds waited."""
        if self.failure_delay_s <= 0 or self._delayed >= self.max_delayed:
            return 0.0
        delay = self.failure_delay_s * (0.5 + _JITTER.random())
        self._delayed += 1
        try:
            await asyncio.sleep(delay)
        finally:
            self._delayed -= 1
        return delay

    async def _refuse(self, call: _Call, context: grpc.aio.ServicerContext, limited: RateLimited) -> None:
        if limited.kind == AUTH_FAILURES:
            limited = limited.after(await self._delay_failure())
        call.code = grpc.StatusCode.RESOURCE_EXHAUSTED.name
        if self.metrics is not None:
            self.metrics.rate_limited_total.labels(kind=limited.kind).inc()
        access_log.warning("call refused: %s", limited.message, extra={"code": call.code})
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED, limited.message,
            trailing_metadata=((REQUEST_ID_HEADER, call.request_id),
                               (RETRY_AFTER_MS_HEADER, str(limited.retry_after_ms))))

    def _requests(self, call: _Call, context: grpc.aio.ServicerContext, requests: Any) -> Any:
        """The request stream, with each message's events taken from the caller's events bucket."""
        limiter = self.limiter
        if limiter is None or limiter.config.events_per_second <= 0 or call.method not in EVENT_METHODS \
                or not hasattr(requests, "__aiter__"):
            return requests

        async def counted() -> AsyncIterator[Any]:
            async for message in requests:
                try:
                    limiter.check_events(call.principal.name if call.principal else call.peer, event_count(message))
                except RateLimited as limited:
                    await self._refuse(call, context, limited)
                yield message

        return counted()

    def _start(self, route: _Route, context: grpc.aio.ServicerContext) -> _Call:
        metadata = context.invocation_metadata()
        call = _Call(route.method, request_id_from(metadata), context.peer(), self._clock(), metadata)
        if route.metrics is not None:
            route.metrics.in_flight.inc()
        return call

    def _finish(self, call: _Call, route: _Route, context: grpc.aio.ServicerContext,
                error: BaseException | None) -> None:
        """Record the status the client got in the histogram and the access line. Only an exception the
        handler did not turn into a status (a server fault, UNKNOWN) is logged at ERROR with its traceback."""
        fault = False
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
            call.code = "CANCELLED"
        elif isinstance(error, MalformedRequest):
            call.code = "INVALID_ARGUMENT"
        elif isinstance(error, grpc.aio.AbortError) or error is None:
            call.code = _code_name(context.code()) if call.code == "OK" else call.code
        else:
            call.code = "UNKNOWN"
            fault = True
        duration = self._clock() - call.started
        if route.metrics is not None:
            route.metrics.in_flight.dec()
            route.metrics.observe(call.code, duration)
        extra = {"code": call.code, "duration_ms": round(duration * 1000, 3),
                 "caller": call.principal.name if call.principal else ""}
        if fault:
            access_log.error("rpc failed: %s", type(error).__name__, exc_info=error, extra=extra)
        else:
            _access(logging.DEBUG if route.open else logging.INFO, extra)

    # -- handler wrapping -----------------------------------------------------------------------------------

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            wrapped = self._wrap_streaming(behavior, method, handler.request_streaming, handler)
            factory = grpc.stream_stream_rpc_method_handler if handler.request_streaming \
                else grpc.unary_stream_rpc_method_handler
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            wrapped = self._wrap_unary(behavior, method, handler.request_streaming, handler)
            factory = grpc.stream_unary_rpc_method_handler if handler.request_streaming \
                else grpc.unary_unary_rpc_method_handler
        # Requests are decoded inside the call (see _decoded): grpc.aio answers a deserializer failure with
        # UNKNOWN, while bytes that are not a valid request message are a client mistake (INVALID_ARGUMENT).
        return factory(wrapped, request_deserializer=None, response_serializer=handler.response_serializer)

    @staticmethod
    def _decode(deserializer: Callable[[bytes], Any] | None, raw: Any, what: str) -> Any:
        """``raw`` decoded by the method's deserializer; raises MalformedRequest when it is malformed.

        The call is aborted by the wrapper, on the handler's own task: a stream may be read from another
        task (IngestEventBatches), and aborting there while the handler writes makes grpc.aio fail with
        GRPC_CALL_ERROR_TOO_MANY_OPERATIONS and leaves the call hanging."""
        if deserializer is None or not isinstance(raw, (bytes, bytearray, memoryview)):
            return raw
        try:
            return deserializer(bytes(raw))
        except Exception as err:  # noqa: BLE001 - any decoding failure is the caller's malformed message
            cls = getattr(deserializer, "__self__", None)
            name = getattr(getattr(cls, "DESCRIPTOR", None), "full_name", "the request message")
            raise MalformedRequest(f"{what}: not a valid {name} message ({type(err).__name__}: {err})") from None

    def _decoded(self, deserializer: Callable[[bytes], Any] | None, requests: Any) -> Any:
        """The request stream with each message decoded; a malformed one ends the call (INVALID_ARGUMENT)."""
        if deserializer is None or not hasattr(requests, "__aiter__"):
            return requests

        async def decoded() -> AsyncIterator[Any]:
            position = 0
            async for raw in requests:
                yield self._decode(deserializer, raw, f"requests[{position}]")
                position += 1

        return decoded()

    def _request(self, handler: grpc.RpcMethodHandler, call: _Call, context: grpc.aio.ServicerContext,
                 request: Any, request_streaming: bool) -> Any:
        if request_streaming:
            return self._requests(call, context, self._decoded(handler.request_deserializer, request))
        return self._decode(handler.request_deserializer, request, "request")

    def _wrap_unary(self, behavior: Callable[..., Any], method: str, request_streaming: bool,
                    handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
        route = self._route(method)
        coroutine = inspect.iscoroutinefunction(behavior)  # the servicer's methods are; checked once, not per call

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = self._start(route, context)
            error: BaseException | None = None
            token = enter_request({"request_id": call.request_id, "rpc": route.name, "peer": call.peer})
            try:
                pending = self._admit(call, route, context)
                if pending is not None:
                    await pending
                request = self._request(handler, call, context, request, request_streaming)
                if coroutine:
                    return await behavior(request, context)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except MalformedRequest as bad:
                error = bad
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad))
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(call, route, context, error)
                leave_request(token)

        return wrapped

    def _wrap_streaming(self, behavior: Callable[..., Any], method: str, request_streaming: bool,
                        handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
        route = self._route(method)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self._start(route, context)
            error: BaseException | None = None
            with bind_request(request_id=call.request_id, rpc=route.name, peer=call.peer):
                try:
                    pending = self._admit(call, route, context)
                    if pending is not None:
                        await pending
                    request = self._request(handler, call, context, request, request_streaming)
                    result = behavior(request, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    elif inspect.isawaitable(result):
                        await result
                    else:
                        for item in result or ():
                            yield item
                except MalformedRequest as bad:
                    error = bad
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad))
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._finish(call, route, context, error)

        return wrapped
