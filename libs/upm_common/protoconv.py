"""Conversions between protobuf well-known types and Python values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2


def dict_to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct


def struct_to_dict(struct: struct_pb2.Struct | None) -> dict[str, Any]:
    if struct is None:
        return {}
    result: dict[str, Any] = json_format.MessageToDict(struct)
    return result


def value_to_python(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


def python_to_value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def datetime_to_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def timestamp_to_datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def optional_timestamp(message: Any, field: str) -> datetime | None:
    """The datetime of a Timestamp field, or None when the field is not set."""
    if not message.HasField(field):
        return None
    return timestamp_to_datetime(getattr(message, field))


def timedelta_to_duration(delta: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(delta)
    return duration


def duration_to_timedelta(duration: duration_pb2.Duration) -> timedelta:
    return duration.ToTimedelta()
