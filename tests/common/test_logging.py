"""Log lines in production (JSON) mode: one JSON object per line, one shape for every logger."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import structlog

from upm_common.logging import configure_logging, get_logger, log_rpc


@contextmanager
def json_logging(level: str = "info") -> Iterator[None]:
    # Configured inside the test body: pytest swaps sys.stderr between setup and call.
    configure_logging("json", level)
    try:
        yield
    finally:
        configure_logging("console", "info")  # what the rest of the suite runs with


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_upm_and_library_lines_share_one_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    with json_logging():
        get_logger("upm.test").info("rpc", method="/upm.x.v1.S/M", code="OK", duration_ms=1.5)
        logging.getLogger("grpc.test").warning("channel %s closed", "c1")

    ours, theirs = _lines(capsys)
    assert ours["event"] == "rpc"
    assert ours["method"] == "/upm.x.v1.S/M" and ours["duration_ms"] == 1.5
    assert (ours["level"], ours["logger"]) == ("info", "upm.test")
    assert (theirs["event"], theirs["level"]) == ("channel c1 closed", "warning")
    assert theirs["logger"] == "grpc.test"
    assert "timestamp" in ours and "timestamp" in theirs


def test_lines_below_the_level_are_not_written(capsys: pytest.CaptureFixture[str]) -> None:
    with json_logging("warning"):
        log = get_logger("upm.test.level")
        log.info("hidden")
        log.warning("shown")
    assert [line["event"] for line in _lines(capsys)] == ["shown"]


def test_exceptions_are_logged_as_structured_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with json_logging():
        try:
            raise ValueError("boom")
        except ValueError:
            get_logger("upm.test").exception("failed")
    [line] = _lines(capsys)
    assert line["level"] == "error"
    assert line["exception"][0]["exc_type"] == "ValueError"  # type: ignore[index]


def test_the_rpc_line_has_the_shape_of_every_other_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with json_logging(), structlog.contextvars.bound_contextvars(request_id="r-1"):
        log_rpc("/upm.x.v1.S/M", "NOT_FOUND", 0.25)
        get_logger("upm.rpc").info("rpc", method="/upm.x.v1.S/M", code="OK", duration_ms=1.5)

    fast, ordinary = _lines(capsys)
    assert fast.keys() == ordinary.keys()
    assert (fast["method"], fast["code"]) == ("/upm.x.v1.S/M", "NOT_FOUND")
    assert fast["duration_ms"] == 0.25
    assert (fast["event"], fast["level"], fast["logger"]) == ("rpc", "info", "upm.rpc")
    assert fast["request_id"] == "r-1"
    assert str(fast["timestamp"]).endswith("Z")


def test_rpc_lines_follow_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    with json_logging("warning"):
        log_rpc("/upm.x.v1.S/M", "OK", 0.25)
    assert _lines(capsys) == []
