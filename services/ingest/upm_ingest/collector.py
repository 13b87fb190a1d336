"""The HTTP collector: Segment's HTTP Tracking API in front of the ingest pipeline.

POST /v1/{identify,track,page,screen,group,alias,batch} and the short forms /v1/{i,t,p,s,g,a}
take Segment JSON; the write key comes as the HTTP Basic username (empty password) or as
`writeKey` in the body. Bodies may be gzip-compressed and are parsed as JSON whatever their
Content-Type (browsers send text/plain to avoid a CORS preflight). Success is HTTP 200 with a
JSON body; errors are JSON {code, message[, field]} with 400, 401, 429 or 503 (+ Retry-After).
GET /v1/upm.js serves the tracking snippet.
"""

from __future__ import annotations

import base64
import binascii
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from upm_common.errors import ResourceExhaustedError, UnavailableError, UpmError
from upm_ingest.events import BatchDefaults, FieldError, ShapeLimits, finalize, from_segment_json
from upm_ingest.pipeline import (
    ACCEPTED,
    DUPLICATE,
    STATUS_NAMES,
    SUPPRESSED,
    Candidate,
    Ingestor,
    received_now,
)
from upm_ingest.sources import Source, SourceRegistry

log = structlog.get_logger(__name__)

SNIPPET_PATH = Path(__file__).parent / "static" / "upm.js"

TYPES = {
    "identify": "identify",
    "i": "identify",
    "track": "track",
    "t": "track",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "group": "group",
    "g": "group",
    "alias": "alias",
    "a": "alias",
}

_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}


@dataclass(frozen=True)
class CollectorConfig:
    """Limits and policies of the collector that do not vary per source."""

    max_compressed_bytes: int = 500 * 1024
    max_decompressed_bytes: int = 500 * 1024
    shape: ShapeLimits = field(default_factory=ShapeLimits)
    cors_origins: tuple[str, ...] = ("*",)
    trust_forwarded_for: bool = False


class HttpError(Exception):
    """An error answered as JSON {code, message[, field]}."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


@cache
def _snippet_bytes() -> bytes:
    """The tracking snippet, read from disk on first use only."""
    return SNIPPET_PATH.read_bytes()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _error_response(error: HttpError) -> web.Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(error.retry_after + 0.999)))
    return _json(error.status, body, headers)


def _from_upm(error: UpmError) -> HttpError:
    code_name = error.code.name
    status = _STATUS_CODES.get(code_name, 500)
    retry_after = None
    if isinstance(error, ResourceExhaustedError | UnavailableError):
        retry_after = error.retry_after_seconds or 1.0
    return HttpError(status, code_name, error.message, retry_after=retry_after)


def _message_id_of(item: Any) -> str:
    """The messageId of an event that could not be parsed, when it has a usable one."""
    message_id = item.get("messageId") if isinstance(item, dict) else None
    return message_id if isinstance(message_id, str) else ""


class Collector:
    """Request handlers of the collector, bound to one pipeline and source registry."""

    def __init__(self, ingestor: Ingestor, registry: SourceRegistry, config: CollectorConfig):
        self._ingestor = ingestor
        self._registry = registry
        self._config = config
        self._allow_any_origin = "*" in config.cors_origins
        self._origins = frozenset(config.cors_origins)

    def app(self) -> web.Application:
        """The aiohttp application (run it with `auto_decompress=False`, see `start`)."""
        app = web.Application(
            middlewares=[self._log_middleware, self._cors_middleware],
            client_max_size=self._config.max_compressed_bytes + 1,
        )
        app.router.add_post("/v1/batch", self._batch)
        app.router.add_post("/v1/import", self._batch)
        app.router.add_post("/v1/{kind}", self._single)
        app.router.add_route("OPTIONS", "/v1/{tail:.*}", self._preflight)
        app.router.add_get("/v1/upm.js", self._snippet)
        app.router.add_get("/healthz", self._health)
        return app

    # -- logging and CORS ---------------------------------------------------------------------

    @web.middleware
    async def _log_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        # One line per request, like the gRPC interceptor's one line per RPC; no payloads.
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            log.info(
                "http",
                method=request.method,
                path=request.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    def _origin_allowed(self, origin: str) -> bool:
        return self._allow_any_origin or origin in self._origins

    @web.middleware
    async def _cors_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and request.method == "POST" and not self._origin_allowed(origin):
            # Simple (text/plain) requests skip the preflight, so the allow-list is enforced
            # here too; server-side libraries send no Origin and are not affected.
            return _json(403, {"code": "PERMISSION_DENIED", "message": "origin not allowed"})
        response = await handler(request)
        if origin and self._origin_allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    async def _preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin", "")
        if not origin or not self._origin_allowed(origin):
            return _json(403, {"code": "PERMISSION_DENIED", "message": "origin not allowed"})
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Authorization, Content-Encoding",
                "Access-Control-Max-Age": "86400",
            },
        )

    # -- small endpoints ----------------------------------------------------------------------

    async def _snippet(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_snippet_bytes(),
            content_type="application/javascript",
            charset="utf-8",
            headers={"Cache-Control": "public, max-age=300"},
        )

    async def _health(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    # -- request reading ----------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._config.max_compressed_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(400, "INVALID_ARGUMENT", f"request body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise HttpError(400, "INVALID_ARGUMENT", f"request body exceeds {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("Content-Encoding", "").lower().strip()
        if encoding in ("gzip", "deflate") or body[:2] == b"\x1f\x8b":
            body = self._decompress(body)
        elif encoding not in ("", "identity"):
            raise HttpError(400, "INVALID_ARGUMENT", f"unsupported Content-Encoding {encoding}")
        return body

    def _decompress(self, body: bytes) -> bytes:
        cap = self._config.max_decompressed_bytes
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, detected from the header
        try:
            out = inflater.decompress(body, cap + 1)
        except zlib.error:
            raise HttpError(400, "INVALID_ARGUMENT", "the body is not valid gzip") from None
        if len(out) > cap or inflater.unconsumed_tail:
            raise HttpError(400, "INVALID_ARGUMENT", f"the decompressed body exceeds {cap} bytes")
        return out

    def _parse(self, body: bytes) -> dict[str, Any]:
        if not body.strip():
            raise HttpError(400, "INVALID_ARGUMENT", "the body is empty")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(
                400, "INVALID_ARGUMENT", f"the body is not valid UTF-8 JSON: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise HttpError(400, "INVALID_ARGUMENT", "the body must be a JSON object")
        return data

    async def _authenticate(self, request: web.Request, data: dict[str, Any]) -> Source:
        write_key = ""
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise HttpError(
                    401, "UNAUTHENTICATED", "malformed Basic authorization header"
                ) from None
            write_key = decoded.split(":", 1)[0]
        elif header[:7].lower() == "bearer ":
            write_key = header[7:].strip()
        if not write_key:
            body_key = data.get("writeKey")
            write_key = body_key if isinstance(body_key, str) else ""
        if not write_key:
            raise HttpError(
                401,
                "UNAUTHENTICATED",
                "a write key is required (Basic username or `writeKey` in the body)",
            )
        return await self._registry.authenticate(write_key)

    def _client_ip(self, request: web.Request) -> str:
        if self._config.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.split(",")[0].strip()
        return request.remote or ""

    def _candidate(
        self,
        item: Any,
        *,
        implied_type: str,
        source: Source,
        request: web.Request,
        received: int,
    ) -> Candidate:
        """The one event of a single-event call (a /v1/batch body: `_batch_candidates`)."""
        try:
            event, times = from_segment_json(
                item, implied_type=implied_type, limits=self._config.shape
            )
            context = event.context
            if not context.user_agent:
                context.user_agent = request.headers.get("User-Agent", "")[:1024]
            finalize(event, times, received=received, source_id=source.source_id)
        except FieldError as error:
            return Candidate(None, error, _message_id_of(item))
        return Candidate(
            event,
            message_id=event.message_id,
            client_ip=self._client_ip(request),
            payload=event.SerializeToString(),
        )

    def _batch_candidates(
        self,
        items: list[Any],
        *,
        source: Source,
        defaults: BatchDefaults,
        received: int,
        user_agent: str,
        client_ip: str,
    ) -> list[Candidate]:
        """`_candidate` for every event of a batch, in one loop.

        The batch's hot path (it runs for every event): what is the same for all events is
        looked up once, and no call per event takes keyword arguments it does not need.
        """
        limits = self._config.shape
        source_id = source.source_id
        max_bytes = source.limits.max_event_bytes
        too_big = f"the event exceeds {max_bytes} bytes"
        dumps = orjson.dumps
        candidates: list[Candidate] = []
        append = candidates.append
        for item in items:
            encoded = dumps(item)
            try:
                if len(encoded) > max_bytes:
                    raise FieldError("", too_big)
                event, times = from_segment_json(
                    item, implied_type=None, limits=limits, defaults=defaults, encoded=encoded
                )
                context = event.context
                if not context.user_agent:
                    context.user_agent = user_agent
                finalize(event, times, received=received, source_id=source_id)
            except FieldError as error:
                append(Candidate(None, error, _message_id_of(item)))
                continue
            append(Candidate(event, None, event.message_id, client_ip, event.SerializeToString()))
        return candidates

    # -- handlers -----------------------------------------------------------------------------

    async def _handle(self, work: Callable[[], Awaitable[web.Response]]) -> web.Response:
        try:
            return await work()
        except HttpError as error:
            return _error_response(error)
        except UpmError as error:
            return _error_response(_from_upm(error))

    async def _single(self, request: web.Request) -> web.Response:
        kind = TYPES.get(request.match_info["kind"])
        if kind is None:
            return _json(404, {"code": "NOT_FOUND", "message": "unknown endpoint"})

        async def work() -> web.Response:
            received = received_now()
            body = await self._read_body(request)
            data = self._parse(body)
            source = await self._authenticate(request, data)
            if len(body) > source.limits.max_event_bytes:
                raise HttpError(
                    400,
                    "INVALID_ARGUMENT",
                    f"the event exceeds {source.limits.max_event_bytes} bytes",
                )
            candidate = self._candidate(
                data, implied_type=kind, source=source, request=request, received=received
            )
            if candidate.event is None:
                assert candidate.error is not None
                raise HttpError(
                    400, "INVALID_ARGUMENT", str(candidate.error), field=candidate.error.field
                )
            self._ingestor.check_rate(source, 1)
            [result] = await self._ingestor.submit(source, [candidate], door="http")
            return _json(
                200,
                {
                    "success": True,
                    "messageId": result.message_id,
                    "status": STATUS_NAMES.get(result.status, "rejected"),
                },
            )

        return await self._handle(work)

    async def _batch(self, request: web.Request) -> web.Response:
        async def work() -> web.Response:
            received = received_now()
            body = await self._read_body(request)
            data = self._parse(body)
            source = await self._authenticate(request, data)
            if len(body) > source.limits.max_batch_bytes:
                raise HttpError(
                    400,
                    "INVALID_ARGUMENT",
                    f"the batch exceeds {source.limits.max_batch_bytes} bytes",
                )
            items = data.get("batch")
            if not isinstance(items, list):
                raise HttpError(
                    400, "INVALID_ARGUMENT", "`batch` must be a list of events", field="batch"
                )
            if len(items) > source.limits.max_batch_events:
                raise HttpError(
                    400,
                    "INVALID_ARGUMENT",
                    f"{len(items)} events exceed the batch limit of "
                    f"{source.limits.max_batch_events}",
                    field="batch",
                )
            context = data.get("context")
            integrations = data.get("integrations")
            defaults = BatchDefaults(
                sent_at=data.get("sentAt"),
                context=context if isinstance(context, dict) else None,
                integrations=integrations if isinstance(integrations, dict) else None,
            )
            candidates = self._batch_candidates(
                items,
                source=source,
                defaults=defaults,
                received=received,
                user_agent=request.headers.get("User-Agent", "")[:1024],
                client_ip=self._client_ip(request),
            )
            self._ingestor.check_rate(source, len(items))
            results = await self._ingestor.submit(source, candidates, door="http")
            counts: dict[int, int] = {ACCEPTED: 0, DUPLICATE: 0, SUPPRESSED: 0}
            rejected = []
            for result in results:
                if result.status in counts:
                    counts[result.status] += 1
                else:
                    rejected.append(
                        {
                            "index": result.index,
                            "messageId": result.message_id,
                            "reason": result.reason,
                            "field": result.field,
                        }
                    )
            return _json(
                200,
                {
                    "success": True,
                    "accepted": counts[ACCEPTED],
                    "duplicates": counts[DUPLICATE],
                    "suppressed": counts[SUPPRESSED],
                    "rejected": rejected,
                },
            )

        return await self._handle(work)


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving `app`; returns the runner (for cleanup) and the bound port."""
    # The collector decompresses bodies itself, under a size cap (a gzip bomb gets 400).
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
