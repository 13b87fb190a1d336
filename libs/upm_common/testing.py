"""Helpers for tests: run a service app on a free port and talk to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from upm_common.server import RunningServer, ServiceApp, build_server, run_workers
from upm_common.settings import CommonSettings


@dataclass
class ServedApp:
    """A started app: its server, port and an insecure channel to it."""

    running: RunningServer
    channel: grpc.aio.Channel

    @property
    def port(self) -> int:
        return self.running.port


@contextlib.asynccontextmanager
async def serve_app(
    settings: CommonSettings, app: ServiceApp, *, with_workers: bool = True
) -> AsyncIterator[ServedApp]:
    """Start `app` on 127.0.0.1 with a free port (and its workers); stop everything after."""
    running = await build_server(settings, app.registrations, port=0)
    await running.start()
    await running.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    async with run_workers(app.workers if with_workers else []):
        try:
            yield ServedApp(running, channel)
        finally:
            await channel.close()
            await running.stop(None)
            if app.close is not None:
                await app.close()
