"""Helpers every fatigue store backend shares."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from upm_common.errors import FailedPreconditionError
from upm_orchestrator.store.base import CONFIRMED, EXPIRED, RELEASED, ReservationInfo

T = TypeVar("T")
R = TypeVar("R")


def new_reservation_id(profile_id: str) -> str:
    """A fresh reservation id; it embeds the profile id, which locates the ledger."""
    return f"{profile_id}~{new_id()}"


def new_id() -> str:
    """128 random bits as 32 hex digits (like a uuid4's hex, without building a UUID)."""
    return os.urandom(16).hex()


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


class Coalescer(Generic[T, R]):
    """Single calls made in the same event-loop turn run as one batch.

    Under load, concurrent single decisions then share one Redis pipeline or one SQL
    transaction instead of paying a round trip (or a transaction) each; alone, a call waits
    for nothing but the current loop turn.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._run = run
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
