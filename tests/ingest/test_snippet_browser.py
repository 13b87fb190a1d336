"""The tracking snippet in real headless Chromium, against pages served on localhost."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.ingest.conftest import Running, start_ingest
from upm.common.v1 import event_pb2

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LANDING_QUERY = "?utm_source=newsletter&utm_medium=email&utm_campaign=spring-sale&gclid=G123"
SEARCH_REFERRER = "https://www.google.com/search?q=running+shoes"

PAGE = """<!doctype html>
<html><head><title>{title}</title>
<script>window.upm=window.upm||{{q:[]}};["page","track","identify"].forEach(function(m){{window.upm[m]=window.upm[m]||function(){{window.upm.q.push([m].concat([].slice.call(arguments)))}}}});</script>
<script async src="{collector}/v1/upm.js" data-write-key="{write_key}"></script>
</head><body><h1>{title}</h1>
<script>upm.track("Product Viewed", {{"sku": "SHOE-1", "price": 79.9}});</script>
<a id="next" href="/second">next</a>
</body></html>
"""


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.put_nowait(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, timeout=20)
        assert "error" not in reply, reply
        return reply.get("result", {})

    async def wait_for(self, method: str, timeout: float = 20) -> dict[str, Any]:
        async def next_matching() -> dict[str, Any]:
            while True:
                event = await self.events.get()
                if event["method"] == method:
                    return event

        return await asyncio.wait_for(next_matching(), timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def close(self) -> None:
        self._reader.cancel()
        await self._ws.close()


@pytest.fixture
async def site() -> AsyncIterator[tuple[web.AppRunner, int, dict[str, str]]]:
    """A web shop on localhost whose pages include the snippet (filled in later)."""
    settings: dict[str, str] = {}

    async def landing(request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE.format(title="Spring Sale", **settings), content_type="text/html"
        )

    async def second(request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE.format(title="Second Page", **settings), content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/landing", landing)
    app.router.add_get("/second", second)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield runner, port, settings
    await runner.cleanup()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[DevTools]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    profile = Path(tempfile.mkdtemp(prefix="upm-chromium-", dir=tmp_path))
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t["type"] == "page")
            ws = await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            tools = DevTools(ws)
            await tools.send("Page.enable")
            await tools.send("Runtime.enable")
            yield tools
            await tools.close()
    finally:
        process.terminate()
        await process.wait()


async def collect(running: Running, count: int) -> list[event_pb2.Event]:
    return await running.events(count, timeout=20)


async def test_the_snippet_sends_enriched_events_from_a_real_browser(
    sqlite_url: str, site: tuple[web.AppRunner, int, dict[str, str]], browser: DevTools
) -> None:
    _, page_port, page_settings = site
    page_origin = f"http://localhost:{page_port}"
    async for running in start_ingest(sqlite_url, cors_origins=[page_origin]):
        page_settings.update(collector=running.base_url, write_key=running.write_key)

        await browser.send(
            "Page.navigate",
            url=f"{page_origin}/landing{LANDING_QUERY}",
            referrer=SEARCH_REFERRER,
            referrerPolicy="unsafeUrl",
        )
        await browser.wait_for("Page.loadEventFired")
        first = await collect(running, 2)
        page_view = next(e for e in first if e.type == event_pb2.EVENT_TYPE_PAGE)
        viewed = next(e for e in first if e.type == event_pb2.EVENT_TYPE_TRACK)

        context = page_view.context
        assert context.page.url == f"{page_origin}/landing{LANDING_QUERY}"
        assert context.page.path == "/landing"
        assert context.page.title == "Spring Sale"
        assert context.page.referrer == SEARCH_REFERRER
        assert (context.campaign.source, context.campaign.medium, context.campaign.name) == (
            "newsletter",
            "email",
            "spring-sale",
        )
        assert context.campaign.click_ids["gclid"] == "G123" and context.campaign.paid
        assert (context.referrer.source, context.referrer.search_term) == (
            "Google",
            "running shoes",
        )
        assert context.referrer.medium == "paid"  # a click id makes the visit paid
        assert "Chrome" in context.user_agent_info.browser
        assert context.user_agent_info.device_class == "desktop"
        assert context.library_name == "upm.js"
        assert context.ip == "127.0.0.1"
        assert viewed.event == "Product Viewed" and viewed.properties["sku"] == "SHOE-1"
        anonymous_id = page_view.anonymous_id
        assert anonymous_id and viewed.anonymous_id == anonymous_id
        assert (await browser.evaluate("document.cookie")).startswith("upm_aid=")

        # Identify and track, then leave the page at once: the beacon must still deliver.
        await browser.evaluate(
            'upm.identify("user-42", {"email": "ada@example.com"});'
            'upm.track("Order Completed", {"order_id": "o-1", "revenue": 79.9});'
            'document.getElementById("next").click();'
        )
        await browser.wait_for("Page.loadEventFired")
        rest = await collect(running, 4)
        by_kind = {(e.type, e.event) for e in rest}
        assert (event_pb2.EVENT_TYPE_IDENTIFY, "") in by_kind
        assert (event_pb2.EVENT_TYPE_TRACK, "Order Completed") in by_kind
        second_view = next(
            e
            for e in rest
            if e.type == event_pb2.EVENT_TYPE_PAGE and e.context.page.path == "/second"
        )
        identify = next(e for e in rest if e.type == event_pb2.EVENT_TYPE_IDENTIFY)
        assert identify.user_id == "user-42" and identify.traits["email"] == "ada@example.com"
        assert second_view.user_id == "user-42"  # remembered across pages
        assert second_view.context.referrer.medium == "internal"
        assert {e.anonymous_id for e in rest} == {anonymous_id}
