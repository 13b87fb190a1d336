"""A caller that finds the joiner idle runs its own call; callers that come while it is busy are
joined (CallJoiner with `inline_when_idle`, as the Redis fatigue store uses it)."""

from __future__ import annotations

import asyncio
import contextlib

from upm_common.joining import CallJoiner


class Recorder:
    """An operation that holds each call until released, recording who ran it with what."""

    def __init__(self) -> None:
        self.calls: list[tuple[asyncio.Task[object] | None, list[int]]] = []
        self.release = asyncio.Event()

    async def __call__(self, group: str, items: list[int]) -> list[int]:
        self.calls.append((asyncio.current_task(), items))
        await self.release.wait()
        return [10 * i for i in items]


async def test_an_idle_caller_runs_its_call_in_its_own_task() -> None:
    recorder = Recorder()
    recorder.release.set()
    joiner: CallJoiner[str, int, int] = CallJoiner(recorder, max_running=2, inline_when_idle=True)

    async def caller(items: list[int]) -> tuple[list[int], asyncio.Task[object] | None]:
        return await joiner("g", items), asyncio.current_task()

    results, task = await caller([1, 2])
    assert results == [10, 20]
    assert recorder.calls == [(task, [1, 2])]


async def test_callers_beyond_the_running_calls_are_joined_into_one() -> None:
    recorder = Recorder()
    joiner: CallJoiner[str, int, int] = CallJoiner(recorder, max_running=2, inline_when_idle=True)
    running = [asyncio.ensure_future(joiner("g", [n])) for n in (1, 2)]
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(joiner("g", [n])) for n in (3, 4, 5)]
    await asyncio.sleep(0)
    assert [items for _, items in recorder.calls] == [[1], [2]]
    recorder.release.set()
    assert await asyncio.gather(*running, *waiting) == [[10], [20], [30], [40], [50]]
    assert [items for _, items in recorder.calls] == [[1], [2], [3, 4, 5]]
    assert await joiner("g", [6]) == [60]


async def test_a_cancelled_idle_caller_fails_nobody_else() -> None:
    recorder = Recorder()
    joiner: CallJoiner[str, int, int] = CallJoiner(recorder, max_running=1, inline_when_idle=True)
    alone = asyncio.ensure_future(joiner("g", [1]))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(joiner("g", [n])) for n in (2, 3)]
    await asyncio.sleep(0)
    alone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await alone
    recorder.release.set()
    assert await asyncio.gather(*later) == [[20], [30]]
    assert [items for _, items in recorder.calls] == [[1], [2, 3]]
