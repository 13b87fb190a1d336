"""Server interceptors: error mapping (inner) and telemetry — one log line and metrics per RPC.

Error mapping is the one place where exceptions become statuses: a `UpmError` carries its code
and becomes google.rpc details (BadRequest, ErrorInfo, QuotaFailure, RetryInfo, ResourceInfo);
any other exception is logged with its traceback and becomes INTERNAL with a generic message,
so internals never leak to clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from upm_common.logging import get_logger
from upm_common.metrics import (
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    GRPC_STARTED,
)

log = get_logger("upm.rpc")

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


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method's handler once and reuses the wrapped one on every later call.

    grpc.aio runs `intercept_service` per call; building the wrapper closures and metric label
    children per call cost more than the RPC's own bookkeeping on hot services.
    """

    def __init__(self) -> None:
        # method -> (the handler seen, its wrapper); one entry per method, so bounded.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, self.wrap_handler(method, handler))
        return cached[1]

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns exceptions raised by servicers into statuses with google.rpc details."""

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
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


class TelemetryInterceptor(_WrappingInterceptor):
    """One structured log line and the go-grpc-prometheus metrics per RPC. No payloads logged."""

    def wrap_handler(
        self, full_method: str, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
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
        self.handled: dict[str, Any] = {}

    def start(self) -> float:
        self.started.inc()
        return time.perf_counter()

    def finish(self, context: grpc.aio.ServicerContext, started: float) -> None:
        elapsed = time.perf_counter() - started
        code = context.code() or grpc.StatusCode.OK
        if isinstance(code, int):
            code = _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
        if context.cancelled():
            code = grpc.StatusCode.CANCELLED
        handled = self.handled.get(code.name)
        if handled is None:
            handled = self.handled[code.name] = GRPC_HANDLED.labels(*self.labels, code.name)
        handled.inc()
        self.seconds.observe(elapsed)
        log.info(
            "rpc", method=self.full_method, code=code.name, duration_ms=round(elapsed * 1000, 3)
        )


_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
