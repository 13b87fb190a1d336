"""gRPC client channels to peer services, created in composition roots and injected.

Retries happen only on UNAVAILABLE, through the channel's service config; callers mark which
RPCs are idempotent by passing `wait_for_ready` / deadlines, and always pass `timeout=`.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc

from upm_common.settings import CommonSettings

_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def create_channel(address: str, settings: CommonSettings | None = None) -> grpc.aio.Channel:
    """A channel to `address` (host:port; `dns:///name:port` balances over every pod)."""
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if settings is not None and settings.tls_ca_file:
        ca = Path(settings.tls_ca_file).read_bytes()
        key = Path(settings.tls_key_file).read_bytes() if settings.tls_key_file else None
        cert = Path(settings.tls_cert_file).read_bytes() if settings.tls_cert_file else None
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)
