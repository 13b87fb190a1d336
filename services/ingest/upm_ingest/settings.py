"""Typed settings of the ingest service (UPM_* environment variables)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from upm_common.settings import CommonSettings


class IngestSettings(CommonSettings):
    """Settings of the ingest service and its HTTP collector.

    The HTTP collector runs inside the same process as the gRPC server (see server.py); both
    share the pipeline, the rate limiter and the stores.
    """

    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0: any).")
    metrics_port: int = Field(
        default=9101, ge=0, le=65535, description="Prometheus metrics port (0: off)."
    )
    http_host: str | None = Field(
        default=None, description="Address the HTTP collector binds (default: UPM_GRPC_HOST)."
    )
    http_port: int = Field(
        default=8088, ge=0, le=65535, description="HTTP collector port (0: any)."
    )
    http_enabled: bool = Field(default=True, description="Run the HTTP collector.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the collector from browsers: comma-separated or a "
        "JSON list, e.g. https://shop.example.com,https://www.example.com (* = any).",
    )
    dedup_window_seconds: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a message id is remembered."
    )
    dedup_pending_seconds: int = Field(
        default=60,
        ge=1,
        description="How long a message id is held while its append is in flight.",
    )
    dedup_key_prefix: str = Field(
        default="upm:ingest:dedup", description="Prefix of the Redis dedup keys."
    )
    ip_privacy: Literal["keep", "truncate", "drop"] = Field(
        default="truncate",
        description="keep the client IP, truncate it (IPv4 /24, IPv6 /48), or drop it.",
    )
    trust_forwarded_for: bool = Field(
        default=False,
        description="Take the client IP from X-Forwarded-For (behind a trusted proxy).",
    )
    grpc_require_write_key: bool = Field(
        default=False,
        description="Require a write key on gRPC calls; otherwise key-less calls are `internal`.",
    )
    max_event_bytes: int = Field(default=32 * 1024, ge=256, description="Largest event (JSON).")
    max_batch_bytes: int = Field(
        default=500 * 1024, ge=1024, description="Largest batch request body (decompressed)."
    )
    max_batch_events: int = Field(default=2500, ge=1, description="Most events per batch.")
    max_compressed_bytes: int = Field(
        default=500 * 1024, ge=1024, description="Largest request body as sent (compressed)."
    )
    max_json_depth: int = Field(default=32, ge=2, le=256, description="Deepest JSON nesting.")
    max_string_length: int = Field(
        default=8192, ge=64, description="Longest string value or key, in characters."
    )
    rate_per_second: float = Field(
        default=2000.0, gt=0, description="Default sustained events/s per write key."
    )
    rate_burst: int = Field(default=10000, ge=1, description="Default burst per write key.")
    enrichment_dir: str | None = Field(
        default=None,
        description="Folder with referrers.json and campaigns.json (default: built-in tables).",
    )
    suppression_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long suppression lookups are cached."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value
