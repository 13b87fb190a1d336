"""The fatigue ledger interface: check and reserve every applicable rule in one atomic step.

The engine (upm_orchestrator.engine) turns a policy and a message into `CounterCheck`s over
per-profile counter keys; a store evaluates them and, when none objects and the caller asks,
records a reservation on every key the message counts on, all atomically per profile. Entries
are millisecond timestamps on counter keys; a reservation counts at once and stops counting when
released, or when it expires unconfirmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

RESERVED = "reserved"
CONFIRMED = "confirmed"
RELEASED = "released"
EXPIRED = "expired"


class CounterCheck(NamedTuple):
    """At most `limit - 1` entries on `key` from `since_ms` on, or the check objects.

    A named tuple: a decision makes one per rule, and a tuple is the cheapest to make.
    """

    rule_id: str
    key: str
    since_ms: int
    limit: int


@dataclass(frozen=True)
class Violation:
    """A check that objected: the count it saw, and the entry whose aging-out would lift it."""

    rule_id: str
    count: int
    blocking_ms: int


@dataclass(frozen=True)
class ReserveRequest:
    """One decision's work for the store."""

    profile_id: str
    now_ms: int
    checks: tuple[CounterCheck, ...]
    writes: tuple[str, ...]
    reserve: bool
    ttl_ms: int
    retention_ms: int
    idempotency_key: str = ""
    idempotency_ttl_ms: int = 86_400_000
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReserveResult:
    """What the store did: the reservation made (if any) and the checks that objected.

    `replayed` is true when the idempotency key was seen before: then `meta` and the rest are
    what the first call stored, and `decision` the final answer recorded with `remember`.
    """

    reservation_id: str
    expire_ms: int
    violations: tuple[Violation, ...]
    meta: dict[str, Any]
    replayed: bool = False
    decision: bytes | None = None


@dataclass(frozen=True)
class ReservationInfo:
    """A reservation's state and the metadata recorded with it."""

    reservation_id: str
    profile_id: str
    state: str
    expire_ms: int
    meta: dict[str, Any]


def reservation_profile(reservation_id: str) -> str:
    """The profile id embedded in a reservation id (`<profile_id>~<random>`)."""
    profile_id, sep, _ = reservation_id.rpartition("~")
    return profile_id if sep else ""


class FatigueStore(Protocol):
    """A fatigue ledger. Every method is atomic per profile."""

    async def reserve(self, request: ReserveRequest) -> ReserveResult:
        """Evaluate the checks and, if none objects and `request.reserve`, reserve."""
        ...

    async def reserve_many(self, requests: list[ReserveRequest]) -> list[ReserveResult]:
        """`reserve` for many requests, in order (one profile's requests in list order)."""
        ...

    async def remember(self, answers: Sequence[tuple[str, str, bytes]]) -> None:
        """Record final answers `(profile id, idempotency key, decision)` for idempotency keys
        that `reserve` first saw."""
        ...

    async def confirm(self, reservation_id: str, now_ms: int) -> ReservationInfo:
        """Mark a reservation sent. Raises NotFoundError or FailedPreconditionError."""
        ...

    async def release(self, reservation_id: str, now_ms: int) -> ReservationInfo:
        """Give a reservation back. Raises NotFoundError or FailedPreconditionError."""
        ...

    async def count(self, profile_id: str, key: str, since_ms: int, now_ms: int) -> int:
        """The entries counting on `key` from `since_ms` on (for tests and explanations)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
