"""Per-RPC instrumentation: error mapping (inner) and telemetry — one log line and metrics per RPC.

Error mapping is the one place where exceptions become statuses: a `UpmError` carries its code
and becomes google.rpc details (BadRequest, ErrorInfo, QuotaFailure, RetryInfo, ResourceInfo);
any other exception is logged with its traceback and becomes INTERNAL with a generic message,
so internals never leak to clients.

Servers built by `upm_common.server` apply both by wrapping each method's handler once, when
the service is registered (`InstrumentingRegistrar`), rather than as grpc.aio interceptors:
with any interceptor installed, grpc.aio resolves every call's handler through its interceptor
pipeline, a chain of coroutines, where a server without interceptors takes its handler straight
from a dict. The interceptor classes remain for servers that need other interceptors between
telemetry and error mapping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from upm_common.errors import (
    ERROR_DOMAIN,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    UpmError,
)
from upm_common.logging import RPC_LOGGER, get_logger, log_rpc
from upm_common.metrics import (
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    GRPC_STARTED,
)

log = get_logger(RPC_LOGGER)

Behavior = Callable[..., Any]


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _rewrap(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behavior, bool, bool], Behavior]
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped, whatever the streaming kind."""
    if handler.request_streaming and handler.response_streaming:
        factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    elif handler.request_streaming:
        factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    elif handler.response_streaming:
        factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    else:
        factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    return factory(
        wrap(behavior, handler.request_streaming, handler.response_streaming),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def status_for(error: UpmError) -> grpc.Status:
    """The status, with google.rpc details, that a domain error maps to."""
    details: list[Any] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN),
    ]
    if isinstance(error, InvalidArgumentError) and error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, NotFoundError) and (error.resource_type or error.resource_name):
        details.append(
            error_details_pb2.ResourceInfo(
                resource_type=error.resource_type,
                resource_name=error.resource_name,
                description=error.message,
            )
        )
    if isinstance(error, ResourceExhaustedError):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=error.subject, description=error.message
                    )
                ]
            )
        )
    retry_after = getattr(error, "retry_after_seconds", None)
    if isinstance(error, ResourceExhaustedError | UnavailableError) and retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(retry_after * 1e9))
        details.append(retry)
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)
    return rpc_status.to_status(status)


_INTERNAL = rpc_status.to_status(
    status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
)


class _WrappedHandlers:
    """Each method's handler wrapped once, the wrapper reused on every later call.

    Building the wrapper closures and metric label children per call cost more than the RPC's
    own bookkeeping on hot services. One entry per method, so bounded.
    """

    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]):
        self._wrap = wrap
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self._wrap(method, handler))
        return cached[1]


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that applies `wrap_handler` to each method's handler (once per method)."""

    def __init__(self) -> None:
        self._handlers = _WrappedHandlers(self.wrap_handler)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._handlers.get(handler_call_details.method, handler)

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns exceptions raised by servicers into statuses with google.rpc details."""

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return with_error_mapping(method, handler)


class TelemetryInterceptor(_WrappingInterceptor):
    """One structured log line and the go-grpc-prometheus metrics per RPC. No payloads logged."""

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return with_telemetry(method, handler)


def with_error_mapping(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler, with exceptions raised by the servicer turned into statuses."""

    def wrap(behavior: Behavior, _req_stream: bool, resp_stream: bool) -> Behavior:
        if resp_stream:

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for response in behavior(request, context):
                        yield response
                except Exception as exc:
                    await _abort(context, exc, method)

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except Exception as exc:
                await _abort(context, exc, method)

        return unary

    return _rewrap(handler, wrap)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, UpmError):
        await context.abort_with_status(status_for(exc))
    if _is_abort(exc):
        raise exc
    log.error("rpc_internal_error", method=method, exc_info=exc)
    await context.abort_with_status(_INTERNAL)


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio signals an explicit context.abort() with its own exception type; let it through.
    return type(exc).__name__ == "AbortError" or isinstance(exc, asyncio.CancelledError)


def with_telemetry(full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler, with one structured log line and the metrics per RPC. No payloads logged."""
    metrics = _MethodMetrics(full_method, _rpc_type(handler))

    def wrap(behavior: Behavior, req_stream: bool, resp_stream: bool) -> Behavior:
        def count_requests(request: Any) -> Any:
            if not req_stream:
                metrics.received.inc()
                return request
            return _counting(request, metrics.received)

        if resp_stream:

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = metrics.start()
                try:
                    async for response in behavior(count_requests(request), context):
                        metrics.sent.inc()
                        yield response
                finally:
                    metrics.finish(context, started)

            return streaming

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = metrics.start()
            try:
                response = await behavior(count_requests(request), context)
                metrics.sent.inc()
                return response
            finally:
                metrics.finish(context, started)

        return unary

    return _rewrap(handler, wrap)


def instrument(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Telemetry around error mapping, as the two interceptors in that order would give.

    Unary-unary calls, the hot kind, get both in a single coroutine: one frame per call
    instead of two.
    """
    if handler.request_streaming or handler.response_streaming:
        return with_telemetry(method, with_error_mapping(method, handler))
    metrics = _MethodMetrics(method, "unary")
    behavior = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = metrics.start()
        metrics.received.inc()
        try:
            try:
                response = await behavior(request, context)
            except Exception as exc:
                await _abort(context, exc, method)
                return None
            metrics.sent.inc()
            return response
        finally:
            metrics.finish(context, started)

    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class InstrumentingRegistrar:
    """Stands in for the server while services register: adds their handlers instrumented.

    The generated `add_*Servicer_to_server` functions call only these two methods.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers([_InstrumentedGenericHandler(h) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.server.add_registered_method_handlers(
            service,
            {name: instrument(f"/{service}/{name}", h) for name, h in handlers.items()},
        )


class _InstrumentedGenericHandler(grpc.GenericRpcHandler):
    """Serves the methods another generic handler serves, instrumented."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._handlers = _WrappedHandlers(instrument)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._handlers.get(handler_call_details.method, handler)


async def _counting(requests: AsyncIterator[Any], counter: Any) -> AsyncIterator[Any]:
    async for request in requests:
        counter.inc()
        yield request


class _MethodMetrics:
    """The metric children of one method, looked up once rather than by label on every call."""

    def __init__(self, full_method: str, rpc_type: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.full_method = full_method
        self.labels = (rpc_type, service, method)
        self.started = GRPC_STARTED.labels(*self.labels)
        self.received = GRPC_MSG_RECEIVED.labels(*self.labels)
        self.sent = GRPC_MSG_SENT.labels(*self.labels)
        self.seconds = GRPC_HANDLING_SECONDS.labels(*self.labels)
        # What context.code() returned (None, a number or a StatusCode) -> (code name, counter).
        self.handled: dict[Any, tuple[str, Any]] = {}

    def start(self) -> float:
        self.started.inc()
        return time.perf_counter()

    def finish(self, context: grpc.aio.ServicerContext, started: float) -> None:
        elapsed = time.perf_counter() - started
        code = grpc.StatusCode.CANCELLED if context.cancelled() else context.code()
        handled = self.handled.get(code)
        if handled is None:
            handled = self.handled[code] = self._handled(code)
        name, counter = handled
        counter.inc()
        self.seconds.observe(elapsed)
        log_rpc(self.full_method, name, round(elapsed * 1000, 3))

    def _handled(self, code: Any) -> tuple[str, Any]:
        if code is None:
            code = grpc.StatusCode.OK
        elif isinstance(code, int):
            code = _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
        return code.name, GRPC_HANDLED.labels(*self.labels, code.name)


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
