"""The segment service's settings (UPM_* environment variables)."""

from __future__ import annotations

from pydantic import Field

from upm_common.settings import CommonSettings


class SegmentSettings(CommonSettings):
    """Settings of the segment service and its membership worker."""

    grpc_port: int = Field(default=50053, ge=0, le=65535, description="gRPC port (0: any).")
    metrics_port: int = Field(
        default=9103, ge=0, le=65535, description="Prometheus metrics port (0: off)."
    )
    segment_worker_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="Profile changes the membership worker claims."
    )
    segment_worker_lanes: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Lanes a large batch of profile changes is split into, by profile id, "
        "and handled concurrently.",
    )
    segment_lease_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="How long a claimed batch stays leased."
    )
    segment_scheduler_interval_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="How often window edges that passed are checked."
    )
    segment_refresh_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="How often the worker reloads definitions."
    )
    segment_query_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Longest a count or listing query may run."
    )
    # Default 2: each range runs in its own server backend on one core, and this deployment's
    # database host has two; more ranges than the server's cores only contend with each other
    # (and with the other services' queries). Not read from the server's parallel-worker
    # settings: those size PostgreSQL's own worker pool, which these ranges do not use.
    segment_count_ranges: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Profile-id ranges a count, preview or overlap is split into and counted "
        "concurrently on PostgreSQL, over one shared snapshot (1: a single query).",
    )
