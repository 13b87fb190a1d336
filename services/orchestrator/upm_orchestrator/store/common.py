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


class Coalescer(Generic[T, R]):
    """Single calls made in the same event-loop turn run as one batch.

    Under load, concurrent single decisions then share one Redis pipeline or one SQL
    transaction instead of paying a round trip (or a transaction) each; alone, a call waits
    for nothing but the current loop turn. At most `max_running` batches run at once: calls
    that arrive meanwhile gather into the next batch, so batches grow with the load instead of
    the number of round trips (and of open transactions) growing with it.
    """

    def __init__(
        self, run: Callable[[list[T]], Awaitable[list[R]]], *, max_running: int = 4
    ) -> None:
        self._run = run
        self._max_running = max_running
        self._running = 0
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._scheduled or self._running >= self._max_running or not self._queue:
            return
        self._scheduled = True
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        self._scheduled = False
        batch, self._queue = self._queue, []
        self._running += 1
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._running -= 1
            self._schedule()
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
