"""structlog set up once per process: JSON in production, console on a terminal.

Standard-library loggers (grpc, sqlalchemy, alembic, aiohttp) are rendered by the same processors
so every line has one shape. Nothing here logs request payloads: upm handles personal data, and
logs carry ids, codes and timings only.

The two modes take different routes on purpose. In JSON mode (production) upm's own loggers are
structlog-native: a level below the threshold costs one method call, and a line is rendered with
orjson and written straight to stderr (about a tenth of the stdlib bridge's cost, which matters
for the one line per RPC on hot services). In console mode (a developer's terminal, the tests)
upm's loggers go through the standard library, so `caplog` and any stdlib handler see them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import orjson
import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(log_format: LogFormat = "auto", level: str = "info") -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    numeric_level = logging.getLevelName(level.upper())
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    common: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        stamper,
    ]
    foreign_chain: list[structlog.types.Processor] = [*common, structlog.stdlib.ExtraAdder()]
    renderer: structlog.types.Processor
    if use_json:
        foreign_chain.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        structlog.configure(
            processors=[*common, structlog.processors.dict_tracebacks, renderer],
            logger_factory=_NamedWriteLogger,
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            cache_logger_on_first_use=True,
        )
        _rpc_line.use_json(stamper, enabled=numeric_level <= logging.INFO)
    else:
        _rpc_line.use_structlog()
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        structlog.configure(
            processors=[*foreign_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for noisy in ("sqlalchemy.engine", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _dumps(event: structlog.typing.EventDict, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


class _NamedWriteLogger(structlog.WriteLogger):
    """Writes rendered lines to stderr and, like a stdlib logger, has the `name` it was got by."""

    def __init__(self, name: str = "") -> None:
        super().__init__(sys.stderr)
        self.name = name


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class _RpcLine:
    """Writes the one line per RPC (event "rpc", logger "upm.rpc", level info).

    It is the only line written on every call, so in JSON mode it skips structlog's bound
    logger and processor chain: the same context merge and timestamp processors fill the same
    keys, and the line goes to stderr in one write. That halves its cost, which adds up at
    thousands of RPCs per second. Elsewhere (console mode, or logging never configured) it is
    an ordinary structlog call, so stdlib handlers and `caplog` see it.
    """

    def __init__(self) -> None:
        self.use_structlog()

    def use_structlog(self) -> None:
        self.write = self._via_structlog

    def use_json(self, stamper: structlog.processors.TimeStamper, *, enabled: bool) -> None:
        self._stamper = stamper
        self.write = self._as_json if enabled else self._disabled

    def _via_structlog(self, method: str, code: str, duration_ms: float) -> None:
        get_logger(RPC_LOGGER).info("rpc", method=method, code=code, duration_ms=duration_ms)

    def _as_json(self, method: str, code: str, duration_ms: float) -> None:
        event: structlog.typing.EventDict = {
            "method": method,
            "code": code,
            "duration_ms": duration_ms,
            "event": "rpc",
        }
        event = structlog.contextvars.merge_contextvars(None, "info", event)
        event["level"] = "info"
        event["logger"] = RPC_LOGGER
        event = self._stamper(None, "info", event)
        sys.stderr.write(_dumps(event) + "\n")
        sys.stderr.flush()

    def _disabled(self, method: str, code: str, duration_ms: float) -> None:
        pass


RPC_LOGGER = "upm.rpc"
_rpc_line = _RpcLine()


def log_rpc(method: str, code: str, duration_ms: float) -> None:
    """The line logged for each RPC: its full method name, status code name and duration."""
    _rpc_line.write(method, code, duration_ms)
