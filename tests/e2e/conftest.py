"""Helpers to run the `upm` command as a user would: real processes on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

UPM = str(Path(sys.executable).with_name("upm"))


def free_port() -> int:
    return distinct_free_ports(1)[0]


def _bound(stack: contextlib.ExitStack, port: int) -> int:
    """Bind a socket held until `stack` closes to `port` (0: one the kernel picks); its port."""
    sock = stack.enter_context(contextlib.closing(socket.socket()))
    sock.bind(("127.0.0.1", port))
    return int(sock.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """`count` ports free now and different from each other: the sockets are held together
    while the kernel picks them (one at a time, it may hand out the same port twice, and a
    service given one port for two listeners cannot start)."""
    with contextlib.ExitStack() as stack:
        return [_bound(stack, 0) for _ in range(count)]


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are all free now (`upm up --base-port`)."""
    while True:
        base = free_port()
        if base + count > 65536:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base + 1, base + count):
                    _bound(stack, port)
            except OSError:
                continue
        return base


@pytest.fixture
def upm_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment for `upm`: its own SQLite file, no UPM_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPM_")}
    env.update(
        UPM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/upm.db",
        UPM_LOG_FORMAT="json",
        UPM_DRAIN_SECONDS="2",
    )
    return env


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """Start `upm args...`; terminate it (SIGTERM, then SIGKILL) when the block ends."""
    process = subprocess.Popen(
        [UPM, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    except BaseException as exc:
        # What the service said is the first thing a failure here needs (it is not printed).
        _stop(process)
        _, stderr = process.communicate()
        exc.add_note(
            f"upm {' '.join(args)} exited with {process.returncode}; the end of its stderr:\n"
            + (stderr or "")[-_STDERR_SHOWN:]
        )
        raise
    finally:
        _stop(process)


_STDERR_SHOWN = 4000


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_serving(port: int, service: str = "", timeout: float = 30.0) -> None:
    """Poll the standard health service until it answers SERVING."""
    deadline = asyncio.get_running_loop().time() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"port {port} never reported SERVING for {service!r}")
            await asyncio.sleep(0.2)
