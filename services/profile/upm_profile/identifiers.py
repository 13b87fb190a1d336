"""Typed identifiers: normalisation, strength order, the blocked-value guard and proto mapping."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import phonenumbers

from upm.common.v1 import identity_pb2
from upm_common.errors import InvalidArgumentError

USER_ID = "user_id"
EMAIL = "email"
PHONE = "phone"
ANONYMOUS_ID = "anonymous_id"
DEVICE_ID = "device_id"
EXTERNAL_PREFIX = "external:"

# Which identifier decides the target profile when an event carries several: the strongest.
_STRENGTH = {USER_ID: 0, EMAIL: 1, PHONE: 2, DEVICE_ID: 4, ANONYMOUS_ID: 5}
_EXTERNAL_STRENGTH = 3

TYPE_FROM_PROTO = {
    identity_pb2.IDENTIFIER_TYPE_USER_ID: USER_ID,
    identity_pb2.IDENTIFIER_TYPE_EMAIL: EMAIL,
    identity_pb2.IDENTIFIER_TYPE_PHONE: PHONE,
    identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID: ANONYMOUS_ID,
    identity_pb2.IDENTIFIER_TYPE_DEVICE_ID: DEVICE_ID,
}
_TYPE_TO_PROTO = {v: k for k, v in TYPE_FROM_PROTO.items()}
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_VALUE_LENGTH = 512

DEFAULT_BLOCKED_VALUES = (
    "",
    "null",
    "none",
    "nil",
    "undefined",
    "nan",
    "0",
    "-1",
    "unknown",
    "anonymous",
    "test",
    "test@test.com",
    "test@example.com",
    "user@example.com",
    "email@example.com",
    "noreply@example.com",
    "00000000-0000-0000-0000-000000000000",
)
# Placeholder addresses forms and test scripts send; real people at example.com are left alone.
DEFAULT_BLOCKED_PATTERNS = (
    r"^(test|tester|testing|noreply|no-reply|donotreply|do-not-reply|null|none|undefined|"
    r"email|user|foo|asdf)@",
    r"^0+$",
)


class IdentifierKey(NamedTuple):
    """A normalised identifier: `type` is user_id, email, phone, anonymous_id, device_id or
    `external:<namespace>`.

    A named tuple: a batch hashes, compares and sorts thousands of them, and a tuple does that
    in C (ordered by type, then value)."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"

    @property
    def strength(self) -> int:
        if self.type.startswith(EXTERNAL_PREFIX):
            return _EXTERNAL_STRENGTH
        return _STRENGTH.get(self.type, 9)

    def sort_key(self) -> tuple[int, str, str]:
        return (self.strength, self.type, self.value)

    def lock_id(self) -> int:
        """A signed 64-bit number for pg_advisory_xact_lock, stable across processes."""
        digest = hashlib.blake2b(str(self).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def suppression_hash(self) -> str:
        """The SHA-256 hex of `type:value`, as kept on the suppression list."""
        return suppression_hash(self.type, self.value)

    @classmethod
    def parse(cls, text: str) -> IdentifierKey:
        if text.startswith(EXTERNAL_PREFIX):
            namespace, _, value = text[len(EXTERNAL_PREFIX) :].partition(":")
            return cls(EXTERNAL_PREFIX + namespace, value)
        kind, _, value = text.partition(":")
        return cls(kind, value)


def suppression_hash(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def strongest(keys: Iterable[IdentifierKey]) -> IdentifierKey:
    return min(keys, key=IdentifierKey.sort_key)


def normalise(kind: str, value: str, *, default_region: str | None = None) -> IdentifierKey | None:
    """The normalised key, or None when the value cannot be an identifier of that type."""
    value = value.strip()
    if not value or len(value) > MAX_VALUE_LENGTH:
        return None
    if kind == EMAIL:
        value = value.lower()
        return IdentifierKey(EMAIL, value) if _EMAIL_RE.match(value) else None
    if kind == PHONE:
        try:
            number = phonenumbers.parse(value, default_region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_possible_number(number):
            return None
        return IdentifierKey(
            PHONE, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        )
    if kind in (USER_ID, ANONYMOUS_ID, DEVICE_ID) or kind.startswith(EXTERNAL_PREFIX):
        return IdentifierKey(kind, value)
    return None


class BlockList:
    """The guard against junk identifiers (`null`, `0`, test addresses, configured patterns)."""

    def __init__(
        self,
        values: Sequence[str] = DEFAULT_BLOCKED_VALUES,
        patterns: Sequence[str] = DEFAULT_BLOCKED_PATTERNS,
    ) -> None:
        self._values = frozenset(v.strip().lower() for v in values)
        # One alternation: a single regex search per identifier, whatever the pattern count.
        self._pattern = (
            re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None
        )

    def is_blocked(self, key: IdentifierKey) -> bool:
        if key.value.lower() in self._values:
            return True
        return self._pattern is not None and self._pattern.search(key.value) is not None


def from_proto(
    identifier: identity_pb2.Identifier, field: str, *, default_region: str | None = None
) -> IdentifierKey:
    """Validate and normalise an Identifier of a request; errors name `field`."""
    if identifier.type == identity_pb2.IDENTIFIER_TYPE_EXTERNAL:
        if not _NAMESPACE_RE.match(identifier.namespace):
            raise InvalidArgumentError.for_field(
                f"{field}.namespace",
                "must be a lower-case name (letters, digits, _ . -) for an external identifier",
            )
        kind = EXTERNAL_PREFIX + identifier.namespace
    elif identifier.type in TYPE_FROM_PROTO:
        kind = TYPE_FROM_PROTO[identifier.type]
    else:
        raise InvalidArgumentError.for_field(f"{field}.type", "must be set")
    if not identifier.value.strip():
        raise InvalidArgumentError.for_field(f"{field}.value", "must not be empty")
    key = normalise(kind, identifier.value, default_region=default_region)
    if key is None:
        raise InvalidArgumentError.for_field(
            f"{field}.value", f"is not a valid {kind.removeprefix(EXTERNAL_PREFIX)} identifier"
        )
    return key


def to_proto(key: IdentifierKey) -> identity_pb2.Identifier:
    if key.type.startswith(EXTERNAL_PREFIX):
        return identity_pb2.Identifier(
            type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL,
            value=key.value,
            namespace=key.type[len(EXTERNAL_PREFIX) :],
        )
    return identity_pb2.Identifier(
        type=_TYPE_TO_PROTO.get(key.type, identity_pb2.IDENTIFIER_TYPE_UNSPECIFIED),
        value=key.value,
    )
