"""Typed settings of the orchestrator service (UPM_* environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from upm_common.settings import CommonSettings


class OrchestratorSettings(CommonSettings):
    """Settings of the orchestrator; peers come from UPM_PROFILE_ADDRESS / UPM_SEGMENT_ADDRESS."""

    grpc_port: int = Field(default=50054, ge=0, le=65535, description="gRPC port (0: any).")
    metrics_port: int = Field(
        default=9104, ge=0, le=65535, description="Prometheus metrics port (0: off)."
    )
    fatigue_backend: Literal["sql", "redis"] = Field(
        default="sql",
        description="Where the fatigue ledger lives; redis needs UPM_REDIS_URL.",
    )
    reservation_ttl_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="How long an unconfirmed reservation counts before it expires.",
    )
    idempotency_ttl_seconds: float = Field(
        default=86_400.0, gt=0, description="How long an idempotency key answers the same."
    )
    policy_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a replica may decide on a cached policy."
    )
    profile_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long a person's consent, time zone and suppression are reused "
        "without asking the profile service again (0: ask every time).",
    )
    peer_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Deadline of calls to the profile and segment services."
    )
