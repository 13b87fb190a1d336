"""Validation and normalisation of Segment-spec events.

Two doors lead here: Segment JSON from the HTTP collector (`from_segment_json`, then
`finalize`) and `upm.common.v1.Event` messages from gRPC (`normalize_proto_event`). Both end in
one normalised `Event` (for gRPC: the event's bytes plus the bytes that finalize it, see
`normalize_proto_event`), or a `FieldError` naming the offending field as a Segment JSON path
(HTTP) or a proto field path (gRPC). Both doors apply the same rules (`_check_required`,
`_final_times`).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from google.protobuf import struct_pb2

from upm.common.v1 import event_pb2, identity_pb2

TYPE_BY_NAME: dict[str, int] = {
    "identify": event_pb2.EVENT_TYPE_IDENTIFY,
    "track": event_pb2.EVENT_TYPE_TRACK,
    "page": event_pb2.EVENT_TYPE_PAGE,
    "screen": event_pb2.EVENT_TYPE_SCREEN,
    "group": event_pb2.EVENT_TYPE_GROUP,
    "alias": event_pb2.EVENT_TYPE_ALIAS,
}
NAME_BY_TYPE: dict[int, str] = {value: name for name, value in TYPE_BY_NAME.items()}

MAX_ID_LENGTH = 255
"""Longest message id, user id, anonymous id, group id or previous id."""

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, tzinfo=UTC)
_LATEST_SECONDS = int((_LATEST - _EARLIEST).total_seconds())
_NS = 1_000_000_000
_LATEST_NS = _LATEST_SECONDS * _NS
_EARLIEST_NAIVE = _EARLIEST.replace(tzinfo=None)
_MICROSECOND = timedelta(microseconds=1)


class FieldError(Exception):
    """One event is invalid: `field` names the offending field, `reason` says what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ShapeLimits:
    """Limits on the shape of one event's free-form values."""

    max_depth: int = 32
    max_string_length: int = 8192


# Proto field names of the gRPC door, keyed by the Segment JSON name used in messages.
PROTO_NAMES = {
    "type": "type",
    "messageId": "message_id",
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "event": "event",
    "name": "name",
    "groupId": "group_id",
    "previousId": "previous_id",
    "properties": "properties",
    "traits": "traits",
    "context": "context",
    "integrations": "integrations",
    "timestamp": "event_time",
    "sentAt": "sent_time",
    "originalTimestamp": "original_time",
    "context.traits": "context.traits",
    "context.extra": "context.extra",
    "identifiers": "identifiers",
}


def check_json_shape(value: Any, path: str, limits: ShapeLimits) -> None:
    """Reject values nested deeper than the limit or holding over-long strings or keys."""
    found = _json_shape_error(value, 1, limits)
    if found is not None:
        segments, reason = found
        where = path
        for segment in reversed(segments):
            if isinstance(segment, int):
                where = f"{where}[{segment}]"
            else:
                where = f"{where}.{segment}" if where else segment
        raise FieldError(where, reason)


def _json_shape_error(
    value: Any, depth: int, limits: ShapeLimits
) -> tuple[list[str | int], str] | None:
    # Recursive (bounded by max_depth) and builds the path only on failure: this runs for
    # every event, so it avoids allocating a path string per value.
    kind = type(value)
    longest = limits.max_string_length
    if kind is str:
        if len(value) > longest:
            return [], f"string longer than {longest} characters"
        return None
    if kind is float:
        return None if math.isfinite(value) else ([], "numbers must be finite")
    if kind is dict:
        if depth > limits.max_depth:
            return [], f"nested deeper than {limits.max_depth} levels"
        items: Any = value.items()
    elif kind is list:
        if depth > limits.max_depth:
            return [], f"nested deeper than {limits.max_depth} levels"
        items = enumerate(value)
    else:
        return None
    for key, child in items:
        if kind is dict and len(key) > longest:
            return [], f"key longer than {longest} characters"
        child_kind = type(child)
        if child_kind is str:
            if len(child) > longest:
                return [key], f"string longer than {longest} characters"
        elif child_kind is dict or child_kind is list or child_kind is float:
            found = _json_shape_error(child, depth + 1, limits)
            if found is not None:
                found[0].append(key)
                return found
    return None


# In a serialized google.protobuf.Struct, a nested Struct or ListValue always shows as a tag
# byte 0x2A (Value.struct_value) or 0x32 (Value.list_value), and a number as tag 0x11
# (Value.number_value) followed by its 8 little-endian bytes, whose last two hold the exponent:
# NaN and the infinities have an all-ones exponent. The same bytes may occur inside strings, so
# a match proves nothing (the full check runs), but no match proves the struct is flat and its
# numbers finite.
_NOT_FINITE_NUMBER = rb"\x11.{6}[\xf0-\xff][\x7f\xff]"
_NESTED_OR_NOT_FINITE = re.compile(rb"[\x2a\x32]|" + _NOT_FINITE_NUMBER, re.DOTALL)
_NOT_FINITE = re.compile(_NOT_FINITE_NUMBER, re.DOTALL)


def check_struct_shape(struct: struct_pb2.Struct, path: str, limits: ShapeLimits) -> None:
    """`check_json_shape` for a google.protobuf.Struct (the gRPC door)."""
    # Fast path, one C-level pass over the serialized struct: no string or key can be longer
    # than the whole struct (characters <= bytes), and see _NESTED_OR_NOT_FINITE.
    data = struct.SerializeToString()
    if len(data) <= limits.max_string_length and _NESTED_OR_NOT_FINITE.search(data) is None:
        return
    # Second fast path: a flat struct of short strings and finite numbers.
    flat = True
    for key, value in struct.fields.items():
        kind = value.WhichOneof("kind")
        if (
            kind in ("struct_value", "list_value")
            or len(key) > limits.max_string_length
            or (kind == "string_value" and len(value.string_value) > limits.max_string_length)
            or (kind == "number_value" and not math.isfinite(value.number_value))
        ):
            flat = False
            break
    if flat:
        return
    # Depth counts as in `check_json_shape`, where the event object itself is level 1.
    stack: list[tuple[Any, str, int]] = [(struct, path, 2)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, struct_pb2.Struct):
            if depth > limits.max_depth:
                raise FieldError(where, f"nested deeper than {limits.max_depth} levels")
            for key, child in item.fields.items():
                if len(key) > limits.max_string_length:
                    raise FieldError(
                        where, f"key longer than {limits.max_string_length} characters"
                    )
                stack.append((child, f"{where}.{key}", depth + 1))
        elif isinstance(item, struct_pb2.ListValue):
            if depth > limits.max_depth:
                raise FieldError(where, f"nested deeper than {limits.max_depth} levels")
            for index, child in enumerate(item.values):
                stack.append((child, f"{where}[{index}]", depth + 1))
        else:
            kind = item.WhichOneof("kind")
            if kind == "string_value":
                if len(item.string_value) > limits.max_string_length:
                    raise FieldError(
                        where, f"string longer than {limits.max_string_length} characters"
                    )
            elif kind == "number_value":
                if not math.isfinite(item.number_value):
                    raise FieldError(where, "numbers must be finite")
            elif kind == "struct_value":
                stack.append((item.struct_value, where, depth))
            elif kind == "list_value":
                stack.append((item.list_value, where, depth))


def time_ns(value: Any, field: str) -> int:
    """An ISO 8601 timestamp as nanoseconds since the epoch (no offset means UTC)."""
    if not isinstance(value, str):
        raise FieldError(field, "must be an ISO 8601 timestamp string")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise FieldError(field, f"is not an ISO 8601 timestamp: {text[:40]!r}") from None
    # Subtracting aware datetimes accounts for their offsets, so no conversion to UTC first.
    epoch = _EARLIEST if moment.tzinfo is not None else _EARLIEST_NAIVE
    nanoseconds: int = (moment - epoch) // _MICROSECOND * 1000
    if not 0 <= nanoseconds < _LATEST_NS:
        raise FieldError(field, "is outside the years 1970 to 9999")
    return nanoseconds


def _identity(value: Any, field: str) -> str:
    """Segment accepts ids as strings or numbers; numbers are kept as their decimal text."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise FieldError(field, "must be a string or a number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(field, "must be a finite number")
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        text = str(value)
    text = text.strip()
    if len(text) > MAX_ID_LENGTH:
        raise FieldError(field, f"longer than {MAX_ID_LENGTH} characters")
    return text


def _string(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError(field, "must be a string")
    return value


def _object(value: Any, field: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(field, "must be a JSON object")
    return value


def update_struct(struct: struct_pb2.Struct, values: Mapping[str, Any]) -> None:
    """`struct.update(values)`, with scalars set directly (the library's per-value dispatch is
    written in Python and dominates the cost of a flat JSON object)."""
    fields = struct.fields
    for key, value in values.items():
        kind = type(value)
        if kind is str:
            fields[key].string_value = value
        elif kind is float or kind is int:
            fields[key].number_value = value
        elif kind is bool:
            fields[key].bool_value = value
        else:
            struct.update({key: value})


_PAGE_FIELDS = ("url", "path", "referrer", "search", "title")
_CAMPAIGN_FIELDS = ("name", "source", "medium", "term", "content")
_KNOWN_CONTEXT = {
    "ip",
    "userAgent",
    "page",
    "campaign",
    "locale",
    "timezone",
    "traits",
    "library",
    "externalIds",
}


def _fill_context(context: event_pb2.Context, data: Mapping[str, Any]) -> None:
    # Runs for every event: only the fields present are touched (setting "" would be the same,
    # but slower), and a plain string is stored without a call to `_string` (each call costs
    # about as much as the assignment itself). The checks run in a fixed field order, so a bad
    # event always names the same field.
    get = data.get
    value = get("ip")
    if value is not None:
        context.ip = value if type(value) is str else _string(value, "context.ip")
    value = get("userAgent")
    if value is not None:
        context.user_agent = value if type(value) is str else _string(value, "context.userAgent")
    value = get("locale")
    if value is not None:
        context.locale = value if type(value) is str else _string(value, "context.locale")
    value = get("timezone")
    if value is not None:
        context.timezone = value if type(value) is str else _string(value, "context.timezone")
    page = get("page")
    if page is not None:
        _fill_strings(context.page, _object(page, "context.page"), _PAGE_FIELDS, "context.page.")
    campaign = get("campaign")
    if campaign is not None:
        _fill_strings(
            context.campaign,
            _object(campaign, "context.campaign"),
            _CAMPAIGN_FIELDS,
            "context.campaign.",
        )
    traits = get("traits")
    if traits is not None and _object(traits, "context.traits"):
        update_struct(context.traits, traits)
    library = get("library")
    if library is not None and _object(library, "context.library"):
        name = library.get("name")
        context.library_name = name if type(name) is str else _string(name, "context.library.name")
        version = library.get("version")
        context.library_version = (
            version
            if type(version) is str
            else str(version)
            if isinstance(version, int | float) and not isinstance(version, bool)
            else _string(version, "context.library.version")
        )
    if not data.keys() <= _KNOWN_CONTEXT:
        extra = {key: value for key, value in data.items() if key not in _KNOWN_CONTEXT}
        update_struct(context.extra, extra)


def _fill_strings(
    target: Any, values: Mapping[str, Any] | None, names: tuple[str, ...], prefix: str
) -> None:
    """Copy the string fields `names` present in `values` (context.page, context.campaign)."""
    if not values:
        return
    get = values.get
    for name in names:
        value = get(name)
        if value is not None:
            setattr(target, name, value if type(value) is str else _string(value, prefix + name))


def _external_ids(value: Any) -> list[identity_pb2.Identifier]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError("context.externalIds", "must be a list")
    identifiers = []
    for index, item in enumerate(value):
        field = f"context.externalIds[{index}]"
        if not isinstance(item, dict):
            raise FieldError(field, "must be an object with id and type")
        identifier = _identity(item.get("id"), f"{field}.id")
        namespace = _string(item.get("type"), f"{field}.type").strip()
        if not identifier or not namespace:
            raise FieldError(field, "needs a non-empty id and type")
        identifiers.append(
            identity_pb2.Identifier(
                type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, value=identifier, namespace=namespace
            )
        )
    return identifiers


ClientTimes = tuple[int | None, int | None, int | None]
"""An event's `timestamp`, `originalTimestamp` and `sentAt` as sent, in nanoseconds since the
epoch (None when absent); a plain tuple, as one is built per event."""


@dataclass(frozen=True, slots=True)
class BatchDefaults:
    """Fields a /v1/batch body may give once for all its events (Segment: sentAt, context)."""

    sent_at: Any = None
    context: Mapping[str, Any] | None = None
    integrations: Mapping[str, Any] | None = None


def _shape_ok(encoded: bytes, limits: ShapeLimits) -> bool:
    """True when JSON text certainly holds no over-long string or key and no deep nesting.

    No string or key is longer than the whole text (characters <= bytes), and nesting is at
    most the number of `{` and `[` bytes (brackets inside strings only add to the count).
    Non-finite numbers cannot occur: JSON has none and orjson refuses to parse overflowing
    ones. False only means "walk the value".
    """
    return (
        len(encoded) <= limits.max_string_length
        and encoded.count(b"{") + encoded.count(b"[") <= limits.max_depth
    )


def from_segment_json(
    data: Any,
    *,
    implied_type: str | None,
    limits: ShapeLimits,
    defaults: BatchDefaults | None = None,
    encoded: bytes | None = None,
) -> tuple[event_pb2.Event, ClientTimes]:
    """Parse one Segment JSON event; returns the event and its client times.

    The times are left out of the event: `finalize` sets them, corrected for clock skew.
    `encoded` is the JSON text `data` was parsed from, or `orjson.dumps(data)`, when the caller
    has it: it lets small, shallow events skip the walk of `check_json_shape` (see `_shape_ok`).
    """
    if not isinstance(data, dict):
        raise FieldError("", "an event must be a JSON object")
    if encoded is None or not _shape_ok(encoded, limits):
        check_json_shape(data, "", limits)
    # Runs for every event. The checks run in a fixed field order (a bad event always names the
    # same field); plain strings and ids skip the calls to `_string` and `_identity`, which
    # cost about as much as storing the value; only the fields present are touched.
    get = data.get
    event = event_pb2.Event()
    type_name = get("type", get("action"))
    if implied_type is not None:
        if type_name is not None and str(type_name).lower() != implied_type:
            raise FieldError("type", f"must be {implied_type!r} on this endpoint")
        type_name = implied_type
    kind = TYPE_BY_NAME.get(type_name.lower()) if isinstance(type_name, str) else None
    if kind is None:
        raise FieldError("type", "must be one of " + ", ".join(TYPE_BY_NAME))
    event.type = kind  # type: ignore[assignment]
    value = get("messageId")
    if value is not None:
        if not isinstance(value, str):
            raise FieldError("messageId", "must be a string")
        event.message_id = value.strip()
    # An id of at most MAX_ID_LENGTH characters stays within it once stripped.
    value = get("userId")
    if value is not None:
        event.user_id = (
            value.strip()
            if type(value) is str and len(value) <= MAX_ID_LENGTH
            else _identity(value, "userId")
        )
    value = get("anonymousId")
    if value is not None:
        event.anonymous_id = (
            value.strip()
            if type(value) is str and len(value) <= MAX_ID_LENGTH
            else _identity(value, "anonymousId")
        )
    value = get("event")
    if value is not None:
        event.event = value if type(value) is str else _string(value, "event")
    value = get("name")
    if value is not None:
        event.name = value if type(value) is str else _string(value, "name")
    value = get("groupId")
    if value is not None:
        event.group_id = _identity(value, "groupId")
    value = get("previousId")
    if value is not None:
        event.previous_id = _identity(value, "previousId")
    value = get("properties")
    if value is not None and _object(value, "properties"):
        update_struct(event.properties, value)
    if kind == event_pb2.EVENT_TYPE_PAGE:
        value = get("category")
        if value:
            event.properties["category"] = _string(value, "category")
    value = get("traits")
    if value is not None and _object(value, "traits"):
        update_struct(event.traits, value)
    context = _object(get("context"), "context") or {}
    if defaults is not None and defaults.context:
        context = {**defaults.context, **context}
    if context:
        _fill_context(event.context, context)
        external_ids = context.get("externalIds")
        if external_ids is not None:
            event.identifiers.extend(_external_ids(external_ids))
    integrations = _object(get("integrations"), "integrations")
    if integrations is None and defaults is not None and defaults.integrations:
        integrations = dict(defaults.integrations)
    if integrations:
        update_struct(event.integrations, integrations)
    value = get("timestamp")
    timestamp = time_ns(value, "timestamp") if value is not None else None
    value = get("originalTimestamp")
    original = time_ns(value, "originalTimestamp") if value is not None else None
    value = get("sentAt")
    if value is None and defaults is not None:
        value = defaults.sent_at
    sent_at = time_ns(value, "sentAt") if value is not None else None
    return event, (timestamp, original, sent_at)


_CONTEXT_STRINGS = ("ip", "user_agent", "locale", "timezone", "library_name")


def _raise_too_long(message: Any, names: tuple[str, ...], limit: int, prefix: str) -> None:
    for name in names:
        if len(getattr(message, name)) > limit:
            raise FieldError(f"{prefix}{name}", f"longer than {limit} characters")


def _proto_shape_ok(data: bytes, limits: ShapeLimits) -> bool:
    """True when a serialized event certainly passes every string-length, depth and number
    check of `normalize_proto_event` (one C-level pass over bytes the caller has anyway).

    - No string or key is longer than the whole event (characters <= bytes).
    - A Struct field (properties, traits, ...) is at depth 2, and each level nested inside it
      shows as a tag byte 0x2A (Value.struct_value) or 0x32 (Value.list_value): the depth is
      at most 2 plus the number of such bytes (the count includes unrelated bytes too, which
      only makes the bound looser).
    - Non-finite numbers: see _NESTED_OR_NOT_FINITE.
    False only means "run the field-by-field checks".
    """
    return (
        len(data) <= limits.max_string_length
        and data.count(b"\x2a") + data.count(b"\x32") + 2 <= limits.max_depth
        and _NOT_FINITE.search(data) is None
    )


def normalize_proto_event(
    event: event_pb2.Event,
    *,
    implied_type: int | None,
    limits: ShapeLimits,
    received: int,
    source_id: str,
    data: bytes,
) -> tuple[str, bytes]:
    """Validate a gRPC event; returns its message id and the bytes that finalize it.

    `data` is the event serialized. The event itself is not finalized: appending the returned
    bytes to `data` gives the serialized finalized event (a parser merges repeated fields, last
    one winning), which saves setting the fields and serializing the event a second time.
    Field names in errors are proto paths. Small, flat events skip the field-by-field shape and
    length checks (see `_proto_shape_ok`).
    """
    implied = b""
    if implied_type is not None:
        if event.type not in (event_pb2.EVENT_TYPE_UNSPECIFIED, implied_type):
            raise FieldError("type", f"must be {NAME_BY_TYPE[implied_type]} for this call")
        if event.type != implied_type:
            event.type = implied_type  # type: ignore[assignment]
            implied = _TYPE_TAG + varint(implied_type)
    if not _proto_shape_ok(data, limits):
        _check_proto_shape(event, limits)
    if (
        len(data) > MAX_ID_LENGTH
        and max(
            len(event.user_id),
            len(event.anonymous_id),
            len(event.group_id),
            len(event.previous_id),
        )
        > MAX_ID_LENGTH
    ):
        _raise_too_long(
            event, ("user_id", "anonymous_id", "group_id", "previous_id"), MAX_ID_LENGTH, ""
        )
    # Presence is looked up once (each HasField costs about as much as the checks themselves).
    timestamp = original = sent = None
    if event.HasField("event_time"):
        timestamp = _checked_stamp_ns(event.event_time, "event_time")
    if event.HasField("sent_time"):
        sent = _checked_stamp_ns(event.sent_time, "sent_time")
    if event.HasField("original_time"):
        original = _checked_stamp_ns(event.original_time, "original_time")
    message_id, generated = _check_required(event, proto_names=True)
    event_ns, _ = _final_times(timestamp, original, sent, received, proto_names=True)
    # The common case, a timestamp and no sentAt, keeps event_time as sent and only copies it.
    tail = [implied, _received_tail(received, source_id)]
    if generated:
        tail.append(_string_field(_MESSAGE_ID_TAG, message_id))
    if event_ns != timestamp:
        tail.append(_stamp_field(_EVENT_TIME_TAG, event_ns))
    if original is None and timestamp is not None:
        # original_time is a copy of event_time as sent.
        sent_stamp = event.event_time.SerializeToString()
        tail.append(_ORIGINAL_TIME_TAG + varint(len(sent_stamp)) + sent_stamp)
    return message_id, b"".join(tail)


def _check_proto_shape(event: event_pb2.Event, limits: ShapeLimits) -> None:
    """Depth, string lengths and finite numbers of every free-form and string field."""
    if event.HasField("properties"):
        check_struct_shape(event.properties, "properties", limits)
    if event.HasField("traits"):
        check_struct_shape(event.traits, "traits", limits)
    if event.HasField("integrations"):
        check_struct_shape(event.integrations, "integrations", limits)
    longest = limits.max_string_length
    if event.HasField("context"):
        context = event.context
        if context.HasField("traits"):
            check_struct_shape(context.traits, "context.traits", limits)
        if context.HasField("extra"):
            check_struct_shape(context.extra, "context.extra", limits)
        if (
            max(
                len(context.ip),
                len(context.user_agent),
                len(context.locale),
                len(context.timezone),
                len(context.library_name),
            )
            > longest
        ):
            _raise_too_long(context, _CONTEXT_STRINGS, longest, "context.")
        if context.HasField("page"):
            page = context.page
            if (
                max(len(page.url), len(page.path), len(page.referrer), len(page.search)) > longest
                or len(page.title) > longest
            ):
                _raise_too_long(page, _PAGE_FIELDS, longest, "context.page.")
    if max(len(event.event), len(event.name)) > longest:
        _raise_too_long(event, ("event", "name"), longest, "")


def _checked_stamp_ns(stamp: Any, name: str) -> int:
    seconds, nanos = stamp.seconds, stamp.nanos
    if not 0 <= nanos < _NS:
        raise FieldError(name, "is not a valid timestamp")
    if not 0 <= seconds < _LATEST_SECONDS:
        raise FieldError(name, "is outside the years 1970 to 9999")
    return int(seconds) * _NS + int(nanos)


def finalize(
    event: event_pb2.Event, times: ClientTimes, *, received: int, source_id: str
) -> event_pb2.Event:
    """Check the spec's required fields and set ids and times of a Segment JSON event, in place.

    `times` are the client's times as `from_segment_json` returns them; see `_final_times` and
    `_check_required` for the rules.
    """
    timestamp, original, sent = times
    message_id, generated = _check_required(event, proto_names=False)
    if generated:
        event.message_id = message_id
    event_ns, original_ns = _final_times(timestamp, original, sent, received, proto_names=False)
    _set_stamp(event.event_time, event_ns)
    if original_ns is not None:
        _set_stamp(event.original_time, original_ns)
    if sent is not None:
        _set_stamp(event.sent_time, sent)
    _set_stamp(event.received_time, received)
    event.source_id = source_id
    return event


def _check_required(event: event_pb2.Event, *, proto_names: bool) -> tuple[str, bool]:
    """The spec's required fields; returns the message id and whether it was assigned now.

    - messageId: kept when given (at most 255 characters); assigned when absent.
    - userId or anonymousId: one is required (alias: userId and previousId; group: groupId;
      track: event).
    """
    kind = event.type
    if kind == event_pb2.EVENT_TYPE_UNSPECIFIED:
        raise FieldError(_field_name("type", proto_names), "is required")
    message_id = event.message_id
    generated = not message_id
    if generated:
        message_id = f"upm-{uuid.uuid4()}"
    elif len(message_id) > MAX_ID_LENGTH:
        raise FieldError(
            _field_name("messageId", proto_names), f"longer than {MAX_ID_LENGTH} characters"
        )
    if kind == event_pb2.EVENT_TYPE_ALIAS:
        if not event.user_id:
            raise FieldError(_field_name("userId", proto_names), "is required for alias")
        if not event.previous_id:
            raise FieldError(_field_name("previousId", proto_names), "is required for alias")
    elif not event.user_id and not event.anonymous_id:
        raise FieldError(_field_name("userId", proto_names), "userId or anonymousId is required")
    if kind == event_pb2.EVENT_TYPE_TRACK and not event.event.strip():
        raise FieldError(_field_name("event", proto_names), "is required for track")
    if kind == event_pb2.EVENT_TYPE_GROUP and not event.group_id:
        raise FieldError(_field_name("groupId", proto_names), "is required for group")
    return message_id, generated


def _final_times(
    timestamp: int | None,
    original: int | None,
    sent_at: int | None,
    received: int,
    *,
    proto_names: bool,
) -> tuple[int, int | None]:
    """The final (event time, original time) of an event, in nanoseconds since the epoch.

    `event_time` = timestamp + (receivedAt - sentAt) when the client sent both, which corrects
    the client's clock skew; the client's own timestamp is kept as `original_time`. Without a
    timestamp the event happened when it was received (or at its originalTimestamp, corrected
    the same way).
    """
    if timestamp is not None:
        if sent_at is None:
            return timestamp, timestamp if original is None else original
        corrected = timestamp + received - sent_at
        kept = timestamp if original is None else original
    elif original is not None:
        corrected = original + (received - sent_at if sent_at is not None else 0)
        kept = original
    else:
        return received, None
    if not 0 <= corrected < _LATEST_NS:
        raise FieldError(_field_name("sentAt", proto_names), "is too far from the receive time")
    return corrected, kept


def _field_name(segment_name: str, proto_names: bool) -> str:
    return PROTO_NAMES.get(segment_name, segment_name) if proto_names else segment_name


def _set_stamp(stamp: Any, nanoseconds: int) -> None:
    stamp.seconds, stamp.nanos = divmod(nanoseconds, _NS)


# Wire format of the Event fields a finalization appends (tag = field number << 3 | wire
# type; 2 = length-delimited, 0 = varint).
_MESSAGE_ID_TAG = b"\x0a"  # 1, string
_TYPE_TAG = b"\x10"  # 2, enum
_EVENT_TIME_TAG = b"\x62"  # 12, Timestamp
_RECEIVED_TIME_TAG = b"\x72"  # 14, Timestamp
_ORIGINAL_TIME_TAG = b"\x7a"  # 15, Timestamp
_SOURCE_ID_TAG = b"\x82\x01"  # 16, string


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))
"""The varints of 0 to 127 (lengths and small numbers: most varints written here)."""


def _string_field(tag: bytes, text: str) -> bytes:
    raw = text.encode("utf-8")
    return tag + varint(len(raw)) + raw


def _stamp_field(tag: bytes, nanoseconds: int) -> bytes:
    """A Timestamp field with both its fields written even when zero: appended after a field
    the event already has, it must replace both (a parser merges messages field by field)."""
    seconds, nanos = divmod(nanoseconds, _NS)
    body = b"\x08" + varint(seconds) + b"\x10" + varint(nanos)
    return tag + varint(len(body)) + body


@lru_cache(maxsize=64)
def _received_tail(received: int, source_id: str) -> bytes:
    """received_time and source_id, the same for every event of a request (hence cached)."""
    return _stamp_field(_RECEIVED_TIME_TAG, received) + _string_field(_SOURCE_ID_TAG, source_id)


def identity_key(event: event_pb2.Event) -> str:
    """The event log key: userId, else anonymousId (events of one person stay in order)."""
    return event.user_id or event.anonymous_id
