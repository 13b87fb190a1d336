"""Domain errors that carry their gRPC status code and google.rpc details.

Domain code raises these; the error-mapping interceptor (upm_common.interceptors) turns them
into a status with details. Servicers never call `context.set_code` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

ERROR_DOMAIN = "upm.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `events[3].message_id`) and what is wrong."""

    field: str
    description: str


class UpmError(Exception):
    """Base of every error a client may see; `code` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgumentError(UpmError):
    """The request is malformed; `violations` name each offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = list(violations)

    @classmethod
    def for_field(cls, field: str, description: str) -> InvalidArgumentError:
        """One violation whose message is `<field>: <description>`."""
        return cls(f"{field}: {description}", violations=[FieldViolation(field, description)])


class NotFoundError(UpmError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"

    def __init__(
        self,
        message: str,
        *,
        resource_type: str = "",
        resource_name: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExistsError(UpmError):
    """The resource to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPreconditionError(UpmError):
    """The system is not in a state that allows the request (e.g. a stale etag)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class AbortedError(UpmError):
    """A concurrency conflict; the client may retry the whole operation."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhaustedError(UpmError):
    """A quota or rate is exceeded; retry after `retry_after_seconds`."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        subject: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds
        self.subject = subject


class UnavailableError(UpmError):
    """A dependency is down; retry after `retry_after_seconds`."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds


class UnauthenticatedError(UpmError):
    """No valid credentials (write key or server key)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDeniedError(UpmError):
    """Valid credentials that may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"
