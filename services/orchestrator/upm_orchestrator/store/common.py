"""Helpers every fatigue store backend shares."""

from __future__ import annotations

import os

from upm_common.errors import FailedPreconditionError
from upm_orchestrator.store.base import CONFIRMED, EXPIRED, RELEASED, ReservationInfo


def new_reservation_id(profile_id: str) -> str:
    """A fresh reservation id; it embeds the profile id, which locates the ledger."""
    return f"{profile_id}~{new_id()}"


def new_id() -> str:
    """128 random bits as 32 hex digits (like a uuid4's hex, without building a UUID)."""
    return os.urandom(16).hex()


def new_ids(count: int) -> list[str]:
    """`count` ids like `new_id`'s, from one read of the random source."""
    raw = os.urandom(16 * count).hex()
    return [raw[i : i + 32] for i in range(0, 32 * count, 32)]


def check_transition(info: ReservationInfo, target: str) -> None:
    """Raise unless a reservation now in `info.state` satisfies a move to `target`.

    Confirming twice and releasing twice are harmless repeats; releasing an expired reservation
    is accepted (it no longer counts either way). Anything else is a failed precondition.
    """
    if info.state == target:
        return
    if target == RELEASED and info.state == EXPIRED:
        return
    if target == CONFIRMED and info.state == EXPIRED:
        raise FailedPreconditionError(
            f"reservation {info.reservation_id!r} expired before it was confirmed",
            reason="RESERVATION_EXPIRED",
        )
    raise FailedPreconditionError(
        f"reservation {info.reservation_id!r} is {info.state}, it cannot become {target}",
        reason="RESERVATION_STATE",
    )
