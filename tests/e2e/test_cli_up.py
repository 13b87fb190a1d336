"""`upm up` brings up all four services on the embedded default, as `make run` does."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, free_ports, running, wait_serving
from tests.e2e.test_cli_serve import SERVICE_NAMES

pytestmark = pytest.mark.e2e


async def test_upm_up_starts_every_service_and_prints_its_endpoints(
    upm_env: dict[str, str], tmp_path: Path
) -> None:
    base = free_ports(len(SERVICE_NAMES))
    http_port = free_port()
    while base <= http_port < base + len(SERVICE_NAMES):
        http_port = free_port()
    env = dict(upm_env, UPM_LOG_FORMAT="json")
    args = ["up", "--base-port", str(base), "--http-port", str(http_port)]
    with running(args, env, tmp_path) as process:
        for offset, service in enumerate(SERVICE_NAMES):
            await wait_serving(base + offset, SERVICE_NAMES[service], timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        printed = process.stdout.read() if process.stdout else ""
    for offset, service in enumerate(SERVICE_NAMES):
        assert f"{service}" in printed and f":{base + offset}" in printed
    assert f"http://127.0.0.1:{http_port}" in printed
