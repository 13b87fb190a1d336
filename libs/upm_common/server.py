"""The composition of a gRPC service process: server, health, reflection, interceptors, drain.

`build_server` returns an unstarted server bound to its port (port 0 picks a free one, for
tests). `run_app` starts it with the app's workers, and on SIGTERM or SIGINT drains: health turns
NOT_SERVING so load balancers stop sending, in-flight RPCs get `drain_seconds` to finish, workers
are cancelled, and resources are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from upm_common.interceptors import (
    ErrorMappingInterceptor,
    InstrumentingRegistrar,
    TelemetryInterceptor,
)
from upm_common.logging import get_logger
from upm_common.metrics import start_metrics_server
from upm_common.settings import CommonSettings, SettingsError

log = get_logger("upm.server")

Worker = Callable[[], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class ServiceRegistration:
    """A servicer and the generated function that adds it to a server."""

    name: str
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


@dataclass
class ServiceApp:
    """What a service's composition root returns: servicers, background workers, cleanup."""

    registrations: list[ServiceRegistration]
    workers: list[Worker] = field(default_factory=list)
    close: Callable[[], Awaitable[None]] | None = None


@dataclass
class RunningServer:
    """A built server with the health servicer that reports its state."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    health_server: grpc.aio.Server | None = None

    async def start(self) -> None:
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()

    async def stop(self, grace: float | None) -> None:
        if self.health_server is not None:
            await self.health_server.stop(None)
        await self.server.stop(grace)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            await self.health.set(name, status)


def _server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert_file:
        return None
    if not settings.tls_key_file:
        raise SettingsError("UPM_TLS_CERT_FILE is set but UPM_TLS_KEY_FILE is not")
    key = Path(settings.tls_key_file).read_bytes()
    cert = Path(settings.tls_cert_file).read_bytes()
    ca = Path(settings.tls_ca_file).read_bytes() if settings.tls_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


async def build_server(
    settings: CommonSettings,
    registrations: Sequence[ServiceRegistration],
    *,
    port: int | None = None,
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> RunningServer:
    """An unstarted server with the servicers, health and reflection, bound to its port.

    Every method is instrumented (telemetry around error mapping) as it is registered. Extra
    interceptors, if any, sit between telemetry and error mapping, so that path keeps the two
    as interceptors; without them the server has none, which spares grpc.aio its per-call
    interceptor pipeline.
    """
    registrar: Any
    if extra_interceptors:
        server = grpc.aio.server(
            interceptors=[TelemetryInterceptor(), *extra_interceptors, ErrorMappingInterceptor()],
            options=_SERVER_OPTIONS,
        )
        registrar = server
    else:
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        registrar = InstrumentingRegistrar(server)
    for registration in registrations:
        registration.add(registration.servicer, registrar)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    names = [r.name for r in registrations]
    if settings.reflection:
        # Not enable_server_reflection: it picks the asyncio servicer by the server's type,
        # which the registrar standing in for the server does not have.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                [
                    *names,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ]
            ),
            registrar,
        )
    address = f"{settings.grpc_host}:{settings.grpc_port if port is None else port}"
    credentials = _server_credentials(settings)
    bound = (
        server.add_secure_port(address, credentials)
        if credentials
        else server.add_insecure_port(address)
    )
    if bound == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    running = RunningServer(server, bound, health_servicer, names)
    if credentials and settings.health_port:
        # Kubelet gRPC probes cannot present a client certificate: serve health alone in
        # plaintext on its own port, backed by the same health servicer.
        running.health_server = grpc.aio.server(options=_SERVER_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, running.health_server)
        running.health_server.add_insecure_port(f"{settings.grpc_host}:{settings.health_port}")
    await running.set_serving(False)
    return running


_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    # Connections are recycled every few minutes so that clients balancing round robin over
    # DNS discover new pods after a scale-up, without any connection breaking mid-call.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 30_000),
]


YOUNG_GENERATION_THRESHOLD = 10_000
"""Net allocations between two collections of the youngest generation (Python's default: 700)."""


def tune_garbage_collector() -> None:
    """Set a service process's garbage collector up for serving and batch work; called once
    its apps are built (`upm up`, `upm serve`, `upm worker`).

    - Move what start-up allocated out of the collector's full scans. The user agent parser's
      tables, SQLAlchemy, gRPC and the protobuf descriptors leave a few hundred thousand
      long-lived objects; without this, every full collection walks them all and stalls the
      event loop for 100+ ms, which shows directly in ingest's p99 acknowledgement latency.
    - Collect the young generation less often. A batch allocates thousands of objects that
      reference counting frees anyway. At the default threshold the collector ran several
      times per ingest request (about 2 µs per event, a tenth of the ingest path), and in the
      profile worker it walked each batch's thousands of live dicts over and over: the worker
      spent 15% more CPU per event.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop's event loop when uvloop is installed.

    A unary RPC costs grpc.aio a dozen event-loop turns; uvloop's loop does them for less CPU
    than the standard one (about a tenth of a health check's server CPU on a loaded host).
    """
    try:
        import uvloop
    except ImportError:  # not installed on this platform: the standard loop works the same
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def run_apps(
    settings: CommonSettings,
    apps: Sequence[tuple[CommonSettings, ServiceApp]],
    *,
    with_workers: bool = True,
    serve_rpcs: bool = True,
    on_started: Callable[[list[RunningServer]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one or several services until SIGTERM / SIGINT (or `stop`), then drain them."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    servers: list[RunningServer] = []
    for app_settings, app in apps:
        registrations = app.registrations if serve_rpcs else []
        names = [r.name for r in app.registrations]
        running = await build_server(app_settings, registrations)
        running.service_names = names
        servers.append(running)
        start_metrics_server(app_settings.metrics_port)

    for running in servers:
        await running.start()
        await running.set_serving(True)
    workers = [w for _, app in apps for w in app.workers] if with_workers else []
    async with run_workers(workers):
        if on_started:
            on_started(servers)
        log.info("started", ports=[s.port for s in servers], workers=len(workers))
        await stop.wait()
        log.info("draining", grace_seconds=settings.drain_seconds)
        for running in servers:
            await running.set_serving(False)
        await asyncio.gather(*(s.stop(settings.drain_seconds) for s in servers))
    for _, app in apps:
        if app.close is not None:
            await app.close()
    log.info("stopped")


@contextlib.asynccontextmanager
async def run_workers(workers: Sequence[Worker]) -> AsyncIterator[None]:
    """Run workers in the background while the block runs; cancel them after it."""
    tasks = [asyncio.create_task(_supervise(w), name=f"worker-{i}") for i, w in enumerate(workers)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _supervise(worker: Worker) -> None:
    """Run a worker forever; a crash is logged and the worker restarted after a pause."""
    while True:
        try:
            await worker()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker_crashed", worker=getattr(worker, "__qualname__", repr(worker)))
            await asyncio.sleep(1.0)
