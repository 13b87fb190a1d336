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
    common: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
    else:
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


def _dumps(event: dict[str, Any], **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


class _NamedWriteLogger(structlog.WriteLogger):
    """Writes rendered lines to stderr and, like a stdlib logger, has the `name` it was got by."""

    def __init__(self, name: str = "") -> None:
        super().__init__(sys.stderr)
        self.name = name


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
