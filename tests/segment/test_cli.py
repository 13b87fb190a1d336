"""`upm segment ...` against a real segment server (run on its own event loop thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.segment.readmodel import insert_profiles
from tests.segment.test_issue_segment import population
from upm_common.migrations import upgrade
from upm_common.server import RunningServer, build_server
from upm_segment.server import SegmentRuntime, build_segment
from upm_segment.settings import SegmentSettings

T = TypeVar("T")


class Background:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path}/upm.db"
    background = Background()

    async def start() -> tuple[RunningServer, SegmentRuntime]:
        settings = SegmentSettings(database_url=url, grpc_port=0, metrics_port=0)
        for component in ("eventlog", "profile", "segment"):
            await upgrade(url, component)
        runtime = await build_segment(settings)
        await insert_profiles(runtime.store.engine, population()[0])
        server = await build_server(settings, runtime.service_app.registrations, port=0)
        await server.start()
        return server, runtime

    async def stop(server: RunningServer, runtime: SegmentRuntime) -> None:
        await server.stop(None)
        assert runtime.service_app.close is not None
        await runtime.service_app.close()

    server, runtime = background.call(start())
    address = f"127.0.0.1:{server.port}"
    monkeypatch.setenv("UPM_SEGMENT_ADDRESS", address)
    try:
        yield address
    finally:
        background.call(stop(server, runtime))
        background.stop()


def test_preview_create_list_show_count_members(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from upm_cli.main import main

    assert main(["segment", "preview", "trait(newsletter)=true", "--sample", "2"]) == 0
    out = capsys.readouterr().out
    assert "count: 12" in out
    assert "definition: trait(newsletter) = true" in out
    assert "  a-member\n  b-member-tz\n" in out

    assert main(["segment", "create", "news", "trait(newsletter) = true", "--name", "News"]) == 0
    assert "id:          news" in capsys.readouterr().out
    assert main(["segment", "list"]) == 0
    assert capsys.readouterr().out == "news\tNews\ttrait(newsletter) = true\n"
    assert main(["segment", "show", "news"]) == 0
    assert "definition:  trait(newsletter) = true" in capsys.readouterr().out
    assert main(["segment", "count", "news"]) == 0
    assert capsys.readouterr().out == "12\n"
    assert main(["segment", "members", "news", "--limit", "3", "--page-size", "2"]) == 0
    assert capsys.readouterr().out.split() == ["a-member", "b-member-tz", "c-member-edge"]


def test_errors_are_reported_with_the_position(
    server_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from upm_cli.main import main

    assert main(["segment", "preview", "trait(x) = "]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and "line 1, column 12" in err
    assert main(["segment", "show", "missing"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
