"""Mutual TLS between services, and the plaintext health port that probes use beside it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import distinct_free_ports
from upm_common.clients import create_channel
from upm_common.server import build_server
from upm_common.settings import CommonSettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA with a server certificate for localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=upm-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    for name, san in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        extra = ["-extfile", f"{name}.ext"] if san else []
        if san:
            (d / f"{name}.ext").write_text(san + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)  # fmt: skip
    return d


async def _check(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def test_only_clients_with_a_certificate_get_in_and_probes_use_the_health_port(
    pki: Path,
) -> None:
    port, health_port = distinct_free_ports(2)
    server_settings = CommonSettings(
        grpc_port=port,
        health_port=health_port,
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_ca_file=str(pki / "ca.pem"),
    )
    running = await build_server(server_settings, [])
    await running.start()
    await running.set_serving(True)
    try:
        client_settings = CommonSettings(
            tls_cert_file=str(pki / "client.pem"),
            tls_key_file=str(pki / "client.key"),
            tls_ca_file=str(pki / "ca.pem"),
        )
        async with create_channel(f"localhost:{port}", client_settings) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING

        anonymous = grpc.aio.secure_channel(
            f"localhost:{port}",
            grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes()),
        )
        async with anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _check(anonymous)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plaintext:
            with pytest.raises(grpc.aio.AioRpcError):
                await _check(plaintext)

        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as probe:
            assert await _check(probe) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(None)
