"""The profile service's settings (UPM_* environment variables)."""

from __future__ import annotations

from pydantic import Field

from upm_common.settings import CommonSettings
from upm_profile.identifiers import DEFAULT_BLOCKED_PATTERNS, DEFAULT_BLOCKED_VALUES


class ProfileSettings(CommonSettings):
    """Settings of the profile service and its workers."""

    grpc_port: int = Field(default=50052, ge=0, le=65535, description="gRPC port (0: any).")
    metrics_port: int = Field(
        default=9102, ge=0, le=65535, description="Prometheus metrics port (0: off)."
    )
    # Each claim and acknowledgement scans the waiting deliveries, and each apply pays a fixed
    # cost of about twenty round trips: fewer, larger batches cost less per event under load
    # (bench/profile_apply.py). Under light load a claim takes what is there, so batches stay
    # small and latency low.
    profile_worker_batch_size: int = Field(
        default=4000, ge=1, le=10_000, description="Events a profile worker claims at most at once."
    )
    profile_worker_concurrency: int = Field(
        default=1, ge=1, le=64, description="Profile workers per process."
    )
    profile_lease_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="How long a claimed batch stays leased."
    )
    profile_max_user_ids: int = Field(
        default=1, ge=1, le=100, description="user_id identifiers one profile may hold."
    )
    profile_max_identifiers: int = Field(
        default=200, ge=2, le=100_000, description="Identifiers one profile may hold."
    )
    profile_blocked_values: list[str] = Field(
        default=list(DEFAULT_BLOCKED_VALUES),
        description="Identifier values never used to link profiles (JSON list).",
    )
    profile_blocked_patterns: list[str] = Field(
        default=list(DEFAULT_BLOCKED_PATTERNS),
        description="Regular expressions of identifier values never used to link (JSON list).",
    )
    profile_default_phone_region: str | None = Field(
        default=None, description="ISO region for phone numbers without a country code, e.g. US."
    )
    profile_emit_event_applied: bool = Field(
        default=True,
        description=(
            "Publish EVENT_APPLIED changes (one per profile, event name and type in each"
            " applied batch)."
        ),
    )
