"""The shared server bootstrap: health, reflection, error mapping, telemetry, settings."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from upm_common.errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from upm_common.server import ServiceApp, ServiceRegistration, build_server, run_event_loop
from upm_common.settings import CommonSettings, SettingsError, load_settings
from upm_common.testing import ServedApp, serve_app

SERVICE = "upm.test.v1.ProbeService"


def _identity(data: bytes) -> bytes:
    return data


class ProbeServicer:
    """Raises what the request names, so each error path can be driven from a client."""

    async def fail(self, request: bytes, context: Any) -> bytes:
        kind = request.decode()
        if kind == "invalid":
            raise InvalidArgumentError(
                "events[2].message_id: must not be empty",
                violations=[FieldViolation("events[2].message_id", "must not be empty")],
            )
        if kind == "missing":
            raise NotFoundError("profile p1 not found", resource_type="profile", resource_name="p1")
        if kind == "quota":
            raise ResourceExhaustedError("over rate", retry_after_seconds=1.5, subject="key k")
        if kind == "bug":
            raise KeyError("secret internal detail")
        return b"ok:" + request

    async def stream(self, request: bytes, context: Any) -> Any:
        yield b"one"
        raise InvalidArgumentError.for_field("page_size", "must be at most 1000")


def _handlers(servicer: ProbeServicer) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Fail": grpc.unary_unary_rpc_method_handler(
            servicer.fail, request_deserializer=_identity, response_serializer=_identity
        ),
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.stream, request_deserializer=_identity, response_serializer=_identity
        ),
    }


def _add_generic(servicer: ProbeServicer, server: grpc.aio.Server) -> None:
    generic = grpc.method_handlers_generic_handler(SERVICE, _handlers(servicer))
    server.add_generic_rpc_handlers((generic,))


def _add_registered(servicer: ProbeServicer, server: grpc.aio.Server) -> None:
    # What the generated add_*Servicer_to_server functions do: both kinds of registration.
    _add_generic(servicer, server)
    server.add_registered_method_handlers(SERVICE, _handlers(servicer))


@pytest.fixture(params=[_add_generic, _add_registered], ids=["generic", "registered"])
async def served(request: pytest.FixtureRequest) -> AsyncIterator[ServedApp]:
    app = ServiceApp([ServiceRegistration(SERVICE, request.param, ProbeServicer())])
    async with serve_app(CommonSettings(), app) as served:
        yield served


def _call(served: ServedApp, method: str) -> Any:
    return served.channel.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
    )


async def _error(served: ServedApp, kind: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(served, "Fail")(kind.encode(), timeout=5)
    return caught.value


def _details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = rpc_status.from_call(error)
    assert status is not None
    found: dict[str, Any] = {}
    for detail in status.details:
        for cls in (
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
            error_details_pb2.ResourceInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.__name__] = message
    return found


async def test_health_reports_serving_overall_and_per_service(served: ServedApp) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    for name in ("", SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(served: ServedApp) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert SERVICE in names and "grpc.health.v1.Health" in names


async def test_invalid_argument_names_the_field(served: ServedApp) -> None:
    error = await _error(served, "invalid")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[2].message_id" in (error.details() or "")
    details = _details(error)
    violation = details["BadRequest"].field_violations[0]
    assert (violation.field, violation.description) == ("events[2].message_id", "must not be empty")
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"


async def test_not_found_carries_the_resource(served: ServedApp) -> None:
    error = await _error(served, "missing")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert _details(error)["ResourceInfo"].resource_name == "p1"


async def test_resource_exhausted_carries_quota_and_retry_delay(served: ServedApp) -> None:
    error = await _error(served, "quota")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = _details(error)
    assert details["QuotaFailure"].violations[0].subject == "key k"
    assert details["RetryInfo"].retry_delay.ToMilliseconds() == 1500


async def test_unknown_errors_become_internal_without_leaking(
    served: ServedApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        error = await _error(served, "bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "secret internal detail" in caplog.text  # the traceback goes to the log only


async def test_errors_in_a_stream_end_it_with_the_mapped_status(served: ServedApp) -> None:
    call = served.channel.unary_stream(
        f"/{SERVICE}/Stream", request_serializer=_identity, response_deserializer=_identity
    )(b"", timeout=5)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in call:
            received.append(item)
    assert received == [b"one"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_handled_rpcs_are_counted_with_their_code(served: ServedApp) -> None:
    labels = {
        "grpc_type": "unary",
        "grpc_service": SERVICE,
        "grpc_method": "Fail",
        "grpc_code": "NOT_FOUND",
    }
    before = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0
    await _error(served, "missing")
    assert REGISTRY.get_sample_value("grpc_server_handled_total", labels) == before + 1
    assert await _call(served, "Fail")(b"fine", timeout=5) == b"ok:fine"
    ok = dict(labels, grpc_code="OK")
    assert (REGISTRY.get_sample_value("grpc_server_handled_total", ok) or 0) >= 1


async def test_each_rpc_is_logged_with_method_code_and_duration(
    served: ServedApp, caplog: pytest.LogCaptureFixture
) -> None:
    stub = health_pb2_grpc.HealthStub(served.channel)
    with caplog.at_level(logging.INFO, logger="upm.rpc"):
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await _error(served, "missing")
    lines = [r.msg for r in caplog.records if r.name == "upm.rpc"]
    assert [(line["method"], line["code"]) for line in lines] == [  # type: ignore[index]
        ("/grpc.health.v1.Health/Check", "OK"),
        (f"/{SERVICE}/Fail", "NOT_FOUND"),
    ]
    assert all(line["duration_ms"] >= 0 for line in lines)  # type: ignore[index]


class _RecordingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.methods.append(details.method)
        return await continuation(details)


async def test_extra_interceptors_see_calls_that_are_still_mapped_and_counted() -> None:
    recording = _RecordingInterceptor()
    registration = ServiceRegistration(SERVICE, _add_registered, ProbeServicer())
    running = await build_server(
        CommonSettings(), [registration], port=0, extra_interceptors=[recording]
    )
    await running.start()
    labels = {
        "grpc_type": "unary",
        "grpc_service": SERVICE,
        "grpc_method": "Fail",
        "grpc_code": "INVALID_ARGUMENT",
    }
    before = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = channel.unary_unary(
                f"/{SERVICE}/Fail", request_serializer=_identity, response_deserializer=_identity
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"invalid", timeout=5)
    finally:
        await running.stop(None)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BadRequest" in _details(caught.value)
    assert recording.methods == [f"/{SERVICE}/Fail"]
    assert REGISTRY.get_sample_value("grpc_server_handled_total", labels) == before + 1


def test_services_run_on_uvloop_when_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def running_loop() -> type:
        return type(asyncio.get_running_loop())

    assert run_event_loop(running_loop()) is uvloop.Loop


def test_a_malformed_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPM_GRPC_PORT", "not-a-port")
    monkeypatch.setenv("UPM_EVENT_LOG_BACKEND", "kafka")
    with pytest.raises(SettingsError) as caught:
        load_settings(CommonSettings)
    message = str(caught.value)
    assert "UPM_GRPC_PORT" in message and "not-a-port" in message
    assert "UPM_EVENT_LOG_BACKEND" in message and "kafka" in message


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPM_GRPC_PORT", "6000")
    monkeypatch.setenv("UPM_REFLECTION", "false")
    settings = load_settings(CommonSettings)
    assert settings.grpc_port == 6000
    assert settings.reflection is False


def test_a_service_process_leaves_what_it_imported_out_of_garbage_collection() -> None:
    # In a fresh interpreter: the test process's own collector stays as it is.
    probe = (
        "import gc, json\n"
        "from upm_common.server import tune_garbage_collector\n"
        "before = gc.get_freeze_count(), gc.get_threshold()\n"
        "tune_garbage_collector()\n"
        "print(json.dumps([before, [gc.get_freeze_count(), gc.get_threshold()]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    (frozen_before, threshold_before), (frozen, threshold) = json.loads(done.stdout)
    assert frozen_before == 0 and threshold_before[0] == 700
    assert frozen > 10_000  # the modules' objects
    assert threshold[0] > 10 * threshold_before[0]
