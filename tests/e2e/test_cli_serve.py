"""Each service started with `upm serve` answers health and reflection, and drains on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.e2e.conftest import UPM, distinct_free_ports, running, wait_serving

pytestmark = pytest.mark.e2e

SERVICE_NAMES = {
    "ingest": "upm.ingest.v1.IngestService",
    "profile": "upm.profile.v1.ProfileService",
    "segment": "upm.segment.v1.SegmentService",
    "orchestrator": "upm.orchestrator.v1.OrchestratorService",
}


async def reflected_services(port: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        return [s.name async for r in replies for s in r.list_services_response.service]


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
async def test_upm_serve_reports_serving_lists_itself_and_drains(
    service: str, upm_env: dict[str, str], tmp_path: Path
) -> None:
    port, metrics_port, http_port = distinct_free_ports(3)
    env = dict(upm_env, UPM_GRPC_PORT=str(port), UPM_METRICS_PORT=str(metrics_port))
    env["UPM_HTTP_PORT"] = str(http_port)
    with running(["serve", service], env, tmp_path) as process:
        await wait_serving(port, SERVICE_NAMES[service])
        assert SERVICE_NAMES[service] in await reflected_services(port)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert b"grpc_server_handled_total" in metrics.read()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        logs = process.stderr.read() if process.stderr else ""
    events = [json.loads(line)["event"] for line in logs.splitlines()]  # every line is JSON
    assert "draining" in events and "stopped" in events


def test_a_bad_setting_stops_start_up_naming_the_variable(
    upm_env: dict[str, str], tmp_path: Path
) -> None:
    env = dict(upm_env, UPM_GRPC_PORT="fifty")
    result = subprocess.run(
        [UPM, "serve", "profile"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "UPM_GRPC_PORT" in result.stderr and "fifty" in result.stderr


def test_upm_migrate_creates_every_component(upm_env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [UPM, "migrate"], env=upm_env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for component in ("eventlog", "ingest", "profile", "segment", "orchestrator"):
        assert component in result.stdout
    again = subprocess.run(
        [UPM, "migrate"], env=upm_env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr


def test_upm_help_explains_each_command() -> None:
    result = subprocess.run([UPM, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("up", "serve", "worker", "migrate"):
        assert f"upm {command}" in result.stdout
