"""Typed settings read once from UPM_* environment variables, validated at start-up."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "UPM_"


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable and the problem."""


class CommonSettings(BaseSettings):
    """Settings every service reads. Services subclass this and add their own fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///.upm/upm.db",
        description="SQLAlchemy URL of the database every service keeps its tables in.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL; unset means no Redis (everything on SQL)."
    )
    event_log_backend: Literal["sql", "redis"] = Field(
        default="sql", description="Where the event log and change feed live."
    )
    event_log_partitions: int = Field(
        default=8, ge=1, le=1024, description="Redis Streams partitions per topic."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The lowest level logged."
    )
    grpc_host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(default=50050, ge=0, le=65535, description="gRPC port (0: any).")
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus metrics port (0: off)."
    )
    reflection: bool = Field(default=True, description="Serve gRPC server reflection.")
    drain_seconds: float = Field(
        default=10.0, ge=0, le=600, description="Grace period for in-flight RPCs on SIGTERM."
    )
    run_workers: bool = Field(
        default=True, description="Run the service's background workers inside `upm serve`."
    )
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Plaintext port serving only gRPC health, for probes when TLS is on (0: off).",
    )
    tls_cert_file: str | None = Field(default=None, description="Server certificate (PEM).")
    tls_key_file: str | None = Field(default=None, description="Server private key (PEM).")
    tls_ca_file: str | None = Field(
        default=None, description="CA bundle for mutual TLS (clients must present a cert)."
    )
    profile_consumer_group: str = Field(
        default="profile", description="Consumer group of the profile workers on the event log."
    )
    segment_consumer_group: str = Field(
        default="segment", description="Consumer group of the segment workers on the change feed."
    )
    orchestrator_consumer_group: str = Field(
        default="orchestrator-outcomes",
        description="Consumer group of the orchestrator's outcome feed on the change feed.",
    )
    profile_address: str = Field(
        default="127.0.0.1:50052", description="host:port of the profile service."
    )
    segment_address: str = Field(
        default="127.0.0.1:50053", description="host:port of the segment service."
    )
    orchestrator_address: str = Field(
        default="127.0.0.1:50054", description="host:port of the orchestrator service."
    )


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Read `cls` from the environment, or raise SettingsError naming each bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            variable = f"{ENV_PREFIX}{field.upper()}"
            problems.append(f"{variable}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
