"""What one event does to a profile, computed from the event alone (no I/O).

The store applies these effects in bulk; an unmerge replays them from the stored payloads, so
this function must stay deterministic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import descriptor, json_format, struct_pb2

from upm.common.v1 import event_pb2, identity_pb2
from upm_profile.identifiers import (
    ANONYMOUS_ID,
    EMAIL,
    EXTERNAL_PREFIX,
    PHONE,
    TYPE_FROM_PROTO,
    USER_ID,
    BlockList,
    IdentifierKey,
    normalise,
)
from upm_profile.traits import TraitOp, ops_from_traits

EVENT_TYPE_NAMES = {
    event_pb2.EVENT_TYPE_IDENTIFY: "identify",
    event_pb2.EVENT_TYPE_TRACK: "track",
    event_pb2.EVENT_TYPE_PAGE: "page",
    event_pb2.EVENT_TYPE_SCREEN: "screen",
    event_pb2.EVENT_TYPE_GROUP: "group",
    event_pb2.EVENT_TYPE_ALIAS: "alias",
}
EVENT_TYPE_VALUES = {v: k for k, v in EVENT_TYPE_NAMES.items()}
ORDER_COMPLETED = "Order Completed"
CONSENT_CHANNELS = ("email", "sms", "push", "web", "in_app")
SMS_STOP_KEYWORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout"})
SMS_START_KEYWORDS = frozenset({"start", "yes", "unstop", "subscribe", "optin"})
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ConsentUpdate:
    """A consent decision for one channel and purpose."""

    channel: str
    purpose: str
    status: str
    time: datetime
    source: str


@dataclass(slots=True)
class EventEffects:
    """Everything one event (or one UpdateConsent call) contributes to a profile."""

    id: str
    kind: str  # event | consent
    identifiers: list[IdentifierKey]
    blocked: list[IdentifierKey]
    link_rule: str  # identify | alias | same_event | manual
    source: str
    time: datetime
    received_time: datetime
    payload: bytes
    type: str = ""
    name: str = ""
    properties: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    trait_ops: list[TraitOp] = field(default_factory=list)
    consents: list[ConsentUpdate] = field(default_factory=list)
    timezone: str | None = None
    revenue: float = 0.0
    aggregate: bool = False
    profile_id: str | None = None  # an UpdateConsent call addressed by profile id

    @property
    def day(self) -> date:
        moment = self.time
        # An event's time is built in UTC already (no conversion per aggregated event).
        return moment.date() if moment.tzinfo is UTC else moment.astimezone(UTC).date()


def event_storage_id(event: event_pb2.Event) -> str:
    """The event's id on the profile: `<source id>:<message id>` (the message id scoped by its
    source; a source id never holds a colon)."""
    return f"{event.source_id.replace(':', '_')}:{event.message_id}"


def public_event_id(storage_id: str) -> str:
    """The message id the API shows for a stored event id (other ids are returned as they are:
    operation ids of RPCs hold no colon)."""
    source, colon, message_id = storage_id.partition(":")
    return message_id if colon else source


def _message(message: Any) -> dict[str, Any]:
    fast = _plain_message(message)
    if fast is not None:
        return fast
    data: dict[str, Any] = json_format.MessageToDict(message)
    return data


_STRING = descriptor.FieldDescriptor.TYPE_STRING
_BOOL = descriptor.FieldDescriptor.TYPE_BOOL
_MESSAGE = descriptor.FieldDescriptor.TYPE_MESSAGE


def _plain_message(message: Any) -> dict[str, Any] | None:
    """`json_format.MessageToDict` for messages of strings, booleans, string maps and nested
    such messages (an event's context, on the hot path); None for anything else."""
    out: dict[str, Any] = {}
    for spec, value in message.ListFields():
        kind = _FIELD_KINDS.get(spec)
        if kind is None:
            kind = _FIELD_KINDS[spec] = _field_kind(spec)
        if kind is _SCALAR:
            out[spec.json_name] = value
        elif kind is _STRING_MAP:
            out[spec.json_name] = dict(value)
        elif kind is _NESTED:
            nested = _plain_message(value)
            if nested is None:
                return None
            out[spec.json_name] = nested
        else:
            return None
    return out


_SCALAR, _STRING_MAP, _NESTED, _OTHER = "scalar", "string_map", "nested", "other"
# How `_plain_message` converts each field, decided once per field descriptor (the checks read
# descriptor options, which costs more than the conversion itself).
_FIELD_KINDS: dict[Any, str] = {}


def _field_kind(spec: Any) -> str:
    if spec.is_repeated:
        entry = spec.message_type
        if (
            entry is None
            or not entry.GetOptions().map_entry
            or entry.fields_by_name["value"].type != _STRING
        ):
            return _OTHER
        return _STRING_MAP
    if spec.type in {_STRING, _BOOL}:
        return _SCALAR
    if spec.type == _MESSAGE and not spec.message_type.full_name.startswith("google.protobuf."):
        return _NESTED
    return _OTHER


def _struct(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict (as json_format would give, without its per-field overhead)."""
    # Keys then lookups: the map's items() is the generic Mapping one, slower per field.
    fields = message.fields
    return {key: _plain(fields[key]) for key in fields}


_VALUE_FIELDS = struct_pb2.Value.DESCRIPTOR.fields_by_name
_STRUCT_VALUE = _VALUE_FIELDS["struct_value"]
_LIST_VALUE = _VALUE_FIELDS["list_value"]
_NULL_VALUE = _VALUE_FIELDS["null_value"]


def _plain(value: struct_pb2.Value) -> Any:
    # ListFields gives the oneof member that is set and its value in one call (a set member
    # is listed even when it holds 0, "" or false).
    fields = value.ListFields()
    if not fields:
        return None
    spec, held = fields[0]
    if spec is _STRUCT_VALUE:
        return _struct(held)
    if spec is _LIST_VALUE:
        return [_plain(item) for item in held.values]
    if spec is _NULL_VALUE:
        return None
    return held


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _datetime(
    stamp: Any, _epoch: datetime = _EPOCH, _delta: type[timedelta] = timedelta
) -> datetime:
    """`Timestamp.ToDatetime(tzinfo=UTC)` without its per-call overhead (positional
    timedelta(days, seconds, microseconds), names bound at definition)."""
    return _epoch + _delta(0, stamp.seconds, stamp.nanos // 1000)


def _time(event: event_pb2.Event) -> datetime:
    if event.HasField("event_time"):
        return _datetime(event.event_time)
    if event.HasField("original_time"):
        return _datetime(event.original_time)
    if event.HasField("received_time"):
        return _datetime(event.received_time)
    return _EPOCH


# Traits that carry identifiers, in the order they are taken.
_CONTACT_FIELDS = (("email", EMAIL), ("phone", PHONE))
# How an event links its identifiers, by event kind.
_LINK_RULES = {"identify": "identify", "alias": "alias"}


def effects_of_event(
    event: event_pb2.Event,
    blocklist: BlockList,
    *,
    default_region: str | None = None,
    payload: bytes | None = None,
) -> EventEffects:
    """The effects of an event from the log (payload kept for replay: `payload` when given, the
    serialized event it was parsed from, else the event serialized again)."""
    kind = EVENT_TYPE_NAMES.get(event.type, "track")
    time = _time(event)
    received = _datetime(event.received_time) if event.HasField("received_time") else time
    source = event.source_id or "unknown"
    event_id = event_storage_id(event)
    traits = _struct(event.traits) if event.HasField("traits") else {}
    properties = _struct(event.properties) if event.HasField("properties") else {}
    # The context message read once (each attribute access of a sub-message costs a lookup).
    context_message = event.context
    has_context = event.HasField("context")
    context = _message(context_message) if has_context else {}
    context_traits = (
        _struct(context_message.traits)
        if has_context and context_message.HasField("traits")
        else {}
    )

    candidates: list[tuple[str, str]] = []
    if event.user_id:
        candidates.append((USER_ID, event.user_id))
    if event.anonymous_id:
        candidates.append((ANONYMOUS_ID, event.anonymous_id))
    if kind == "alias" and event.previous_id:
        # Segment's previousId is the anonymous id (or an older user id) now known as userId.
        candidates.append((ANONYMOUS_ID, event.previous_id))
    for bag in (traits if kind == "identify" else None, context_traits):
        if bag:
            for field_name, id_type in _CONTACT_FIELDS:
                value = bag.get(field_name)
                if isinstance(value, str):
                    candidates.append((id_type, value))
    for extra in event.identifiers:
        type_name = TYPE_FROM_PROTO.get(extra.type)
        if extra.type == identity_pb2.IDENTIFIER_TYPE_EXTERNAL and extra.namespace:
            type_name = EXTERNAL_PREFIX + extra.namespace.lower()
        if type_name:
            candidates.append((type_name, extra.value))

    identifiers: list[IdentifierKey] = []
    blocked: list[IdentifierKey] = []
    for id_type, raw in candidates:
        key = normalise(id_type, raw, default_region=default_region)
        if key is None:
            continue
        if blocklist.is_blocked(key):
            blocked.append(key)
        elif key not in identifiers:
            identifiers.append(key)

    trait_ops: list[TraitOp] = []
    if kind == "identify":
        trait_ops = ops_from_traits(traits, time=time, event_id=event_id, source=source)
    if context_traits:
        named = {t.name for t in trait_ops}
        trait_ops += [
            op
            for op in ops_from_traits(context_traits, time=time, event_id=event_id, source=source)
            if op.name not in named
        ]

    name = ""
    if kind == "track":
        name = event.event
    elif kind in ("page", "screen"):
        name = event.name
    consents = consents_from_traits(traits, time, source) if kind == "identify" and traits else []
    if kind == "track":
        consents += consents_from_track(name, properties, time, source)

    revenue = 0.0
    if kind == "track" and name == ORDER_COMPLETED:
        revenue = as_number(properties.get("revenue", properties.get("total")))
    return EventEffects(
        id=event_id,
        kind="event",
        identifiers=identifiers,
        blocked=blocked,
        link_rule=_LINK_RULES.get(kind, "same_event"),
        source=source,
        time=time,
        received_time=received,
        payload=event.SerializeToString() if payload is None else payload,
        type=kind,
        name=name,
        properties=traits if kind == "identify" else properties,
        context=context,
        trait_ops=trait_ops,
        consents=consents,
        timezone=context_message.timezone or None,
        revenue=revenue,
        aggregate=kind in ("track", "page", "screen"),
    )


def as_number(value: Any) -> float:
    """A property as a number, as revenue and prices are read: numbers and numeric strings;
    0 for anything else, booleans included (the aggregates and the purchase list agree)."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def _status(value: Any) -> str | None:
    if isinstance(value, bool):
        return SUBSCRIBED if value else UNSUBSCRIBED
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("subscribed", "opted_in", "opt_in", "yes", "true", "granted"):
            return SUBSCRIBED
        if lowered in ("unsubscribed", "opted_out", "opt_out", "no", "false", "denied"):
            return UNSUBSCRIBED
        if lowered == UNKNOWN:
            return UNKNOWN
    return None


# The marketing flags of each channel, `<channel>_opt_in` then `<channel>_subscribed`.
_CHANNEL_FLAGS = tuple(
    (channel, channel + suffix)
    for channel in CONSENT_CHANNELS
    for suffix in ("_opt_in", "_subscribed")
)


def consents_from_traits(
    traits: dict[str, Any], time: datetime, source: str
) -> list[ConsentUpdate]:
    """Consent from identify traits.

    Recognised: `consent: {<channel>: <status> | {marketing|transactional: <status>}}`,
    `<channel>_opt_in` / `<channel>_subscribed` booleans (marketing), and `unsubscribed: true`
    (email marketing, the common email-tool convention). A status is a boolean or one of
    subscribed / unsubscribed / unknown.
    """
    updates: list[ConsentUpdate] = []
    consent = traits.get("consent")
    if isinstance(consent, dict):
        for channel, spec in consent.items():
            channel_name = str(channel).strip().lower()
            if not channel_name:
                continue
            if isinstance(spec, dict):
                for purpose, value in spec.items():
                    status = _status(value)
                    if status and purpose in ("marketing", "transactional"):
                        updates.append(ConsentUpdate(channel_name, purpose, status, time, source))
            else:
                status = _status(spec)
                if status:
                    updates.append(ConsentUpdate(channel_name, "marketing", status, time, source))
    for channel, flag in _CHANNEL_FLAGS:
        value = traits.get(flag)
        if value is not None:
            status = _status(value)
            if status:
                updates.append(ConsentUpdate(channel, "marketing", status, time, source))
    if traits.get("unsubscribed") is True:
        updates.append(ConsentUpdate("email", "marketing", UNSUBSCRIBED, time, source))
    return updates


_UNSUBSCRIBE_NAMES = ("unsubscribed", "email unsubscribed", "sms unsubscribed", "push unsubscribed")
_SUBSCRIBE_NAMES = ("subscribed", "email subscribed", "sms subscribed", "push subscribed")
_SMS_INBOUND_NAMES = ("sms received", "sms inbound", "sms replied")
_CONSENT_EVENT_NAMES = frozenset(_UNSUBSCRIBE_NAMES + _SUBSCRIBE_NAMES + _SMS_INBOUND_NAMES)


def consents_from_track(
    name: str, properties: dict[str, Any], time: datetime, source: str
) -> list[ConsentUpdate]:
    """Consent from behaviour: `Unsubscribed` / `Subscribed` events (property `channel`,
    default email; `purpose`, default marketing), `Email Unsubscribed`, and inbound SMS keywords
    (`SMS Received` / `SMS Inbound` with the text in `body`, `text` or `keyword`)."""
    lowered = name.strip().lower()
    if lowered not in _CONSENT_EVENT_NAMES:
        # Most tracks: decided by the name alone, before reading any property.
        return []
    channel = str(properties.get("channel") or "email").strip().lower()
    purpose = str(properties.get("purpose") or "marketing").strip().lower()
    if purpose not in ("marketing", "transactional"):
        purpose = "marketing"
    event_source = f"event:{name}"
    if lowered in _UNSUBSCRIBE_NAMES:
        if lowered != "unsubscribed":
            channel = lowered.split()[0]
        return [ConsentUpdate(channel, purpose, UNSUBSCRIBED, time, event_source)]
    if lowered in _SUBSCRIBE_NAMES:
        if lowered != "subscribed":
            channel = lowered.split()[0]
        return [ConsentUpdate(channel, purpose, SUBSCRIBED, time, event_source)]
    if lowered in _SMS_INBOUND_NAMES:
        text = properties.get("body") or properties.get("text") or properties.get("keyword")
        if isinstance(text, str):
            word = text.strip().lower()
            if word in SMS_STOP_KEYWORDS:
                return [ConsentUpdate("sms", "marketing", UNSUBSCRIBED, time, event_source)]
            if word in SMS_START_KEYWORDS:
                return [ConsentUpdate("sms", "marketing", SUBSCRIBED, time, event_source)]
    return []


def consent_call_effects(
    operation_id: str,
    *,
    identifier: IdentifierKey | None,
    profile_id: str | None,
    update: ConsentUpdate,
) -> EventEffects:
    """The effects of an UpdateConsent call, stored and replayed like an event."""
    payload = json.dumps(
        {
            "channel": update.channel,
            "purpose": update.purpose,
            "status": update.status,
            "time": update.time.isoformat(),
            "source": update.source,
            "identifier": str(identifier) if identifier else None,
            "profile_id": profile_id,
        }
    ).encode()
    return EventEffects(
        id=operation_id,
        kind="consent",
        identifiers=[identifier] if identifier else [],
        blocked=[],
        link_rule="manual",
        source=update.source,
        time=update.time,
        received_time=datetime.now(UTC),
        payload=payload,
        consents=[update],
        profile_id=profile_id,
    )


def replay_effects(
    kind: str,
    payload: bytes,
    identifiers: list[IdentifierKey],
    blocklist: BlockList,
    *,
    default_region: str | None = None,
) -> EventEffects:
    """Recompute the effects of a stored event or consent call (for unmerge)."""
    if kind == "consent":
        data = json.loads(payload)
        update = ConsentUpdate(
            data["channel"],
            data["purpose"],
            data["status"],
            datetime.fromisoformat(data["time"]),
            data["source"],
        )
        effects = consent_call_effects(
            "", identifier=None, profile_id=data.get("profile_id"), update=update
        )
        effects.identifiers = identifiers
        effects.payload = payload
        return effects
    event = event_pb2.Event()
    event.ParseFromString(payload)
    return effects_of_event(event, blocklist, default_region=default_region)
