"""What the profile domain needs from storage, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from upm_profile.identifiers import IdentifierKey

if TYPE_CHECKING:
    from upm_profile.effects import EventEffects


@dataclass(frozen=True, slots=True)
class TraitView:
    name: str
    value: Any
    updated_time: datetime
    source: str
    event_id: str


@dataclass(frozen=True, slots=True)
class ConsentView:
    channel: str
    purpose: str
    status: str
    updated_time: datetime
    source: str


@dataclass(frozen=True, slots=True)
class CountView:
    name: str
    count: int
    first_time: datetime
    last_time: datetime


@dataclass
class ProfileView:
    """A live profile with everything GetProfile returns."""

    id: str
    created_time: datetime
    updated_time: datetime
    timezone: str | None
    identifiers: list[IdentifierKey] = field(default_factory=list)
    traits: list[TraitView] = field(default_factory=list)
    consents: list[ConsentView] = field(default_factory=list)
    counts: list[CountView] = field(default_factory=list)
    purchase_count: int = 0
    total_revenue: float = 0.0
    merged_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EventView:
    id: str
    type: str
    name: str
    event_time: datetime
    received_time: datetime
    properties: dict[str, Any]
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventFilter:
    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class EdgeView:
    a: IdentifierKey
    b: IdentifierKey
    rule: str
    event_id: str
    source: str
    created_time: datetime


@dataclass(frozen=True, slots=True)
class MergeView:
    id: str
    kind: str
    winner_id: str
    loser_id: str
    rule: str
    event_id: str
    reason: str
    identifiers: list[IdentifierKey]
    created_time: datetime


@dataclass(frozen=True, slots=True)
class ConflictView:
    identifier: IdentifierKey
    other_profile_id: str | None
    rule: str
    event_id: str
    created_time: datetime


@dataclass
class IdentityGraphView:
    profile_id: str
    identifiers: list[IdentifierKey]
    edges: list[EdgeView]
    merges: list[MergeView]
    conflicts: list[ConflictView]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one apply call did: events applied, skipped as already applied or suppressed, and
    (asked not to wait for other transactions' locks) the events left for later (`busy`)."""

    applied: int
    duplicates: int
    suppressed: int
    dropped: int
    profile_ids: dict[str, str]
    merges: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)
    busy: list[EventEffects] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ErasureResult:
    profile_id: str
    identifiers: list[IdentifierKey]
    event_count: int
