"""The profile domain API: validation, lookups with redirects, and the operations of the RPCs.

Errors name the request field they are about (`profile_id`, `identifier.value`, ...).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from upm.common.v1 import identity_pb2
from upm_common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from upm_profile.effects import ConsentUpdate, consent_call_effects
from upm_profile.identifiers import IdentifierKey, from_proto, strongest
from upm_profile.store.base import (
    ErasureResult,
    EventFilter,
    EventView,
    IdentityGraphView,
    ProfileView,
)
from upm_profile.store.sql import SqlProfileStore, decode_cursor, encode_cursor

_PROFILE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_BATCH = 1000


def _check_profile_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgumentError.for_field(field, "must be set")
    if not _PROFILE_ID_RE.match(value):
        raise InvalidArgumentError.for_field(field, "must be 32 lower-case hex characters")
    return value


def page_size_of(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgumentError.for_field(field, "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class BatchEntry:
    """One answer of `batch_get`: the profile, or none and whether the person was erased."""

    profile: ProfileView | None
    erased: bool = False


class ProfileDomain:
    """What the servicer and the CLI call."""

    def __init__(self, store: SqlProfileStore, *, default_region: str | None = None) -> None:
        self.store = store
        self.default_region = default_region

    def identifier(self, message: identity_pb2.Identifier, field: str) -> IdentifierKey:
        return from_proto(message, field, default_region=self.default_region)

    async def locate(
        self, profile_id: str, identifier: identity_pb2.Identifier | None
    ) -> tuple[str, str]:
        """The live profile id for exactly one of an id or an identifier, and the id it was
        redirected from (empty when none)."""
        if profile_id and identifier is not None:
            raise InvalidArgumentError.for_field(
                "identifier", "set either profile_id or identifier, not both"
            )
        if identifier is not None:
            key = self.identifier(identifier, "identifier")
            owner = await self.store.owner_of(key)
            if owner is None:
                raise NotFoundError(
                    f"identifier: no profile holds this {key.type} identifier",
                    resource_type="profile",
                    resource_name=key.type,
                )
            return owner, ""
        _check_profile_id(profile_id, "profile_id")
        live = await self.store.resolve(profile_id)
        if live is None:
            raise NotFoundError(
                f"profile_id: profile {profile_id} not found",
                resource_type="profile",
                resource_name=profile_id,
            )
        return live, "" if live == profile_id else profile_id

    async def get_profile(
        self, profile_id: str, identifier: identity_pb2.Identifier | None
    ) -> tuple[ProfileView, str]:
        pid, redirected = await self.locate(profile_id, identifier)
        views = await self.store.load_profiles([pid])
        if pid not in views:
            raise NotFoundError(
                f"profile {pid} not found", resource_type="profile", resource_name=pid
            )
        return views[pid], redirected

    async def batch_get(
        self, profile_ids: Sequence[str], identifiers: Sequence[identity_pb2.Identifier]
    ) -> list[BatchEntry]:
        if len(profile_ids) + len(identifiers) > MAX_BATCH:
            raise InvalidArgumentError.for_field(
                "profile_ids", f"at most {MAX_BATCH} ids and identifiers together"
            )
        keys = [
            self.identifier(message, f"identifiers[{index}]")
            for index, message in enumerate(identifiers)
        ]
        # A malformed id cannot exist: it is reported as not found, like any unknown id.
        live_ids = await self.store.resolve_many(p for p in profile_ids if _PROFILE_ID_RE.match(p))
        owners = await self.store.owners_of(keys)
        wanted: list[str | None] = [live_ids.get(pid) for pid in profile_ids]
        wanted += [owners.get(key) for key in keys]
        views = await self.store.load_profiles([w for w in wanted if w])
        # Callers such as the orchestrator must tell an erased person (never contact them) from
        # one that never existed, so the misses are checked against what erasure left behind.
        missing_ids = [
            pid
            for pid, live in zip(profile_ids, wanted, strict=False)
            if live is None and _PROFILE_ID_RE.match(pid)
        ]
        missing_keys = [
            k for k, live in zip(keys, wanted[len(profile_ids) :], strict=True) if not live
        ]
        erased_ids = await self.store.erased_ids(missing_ids)
        suppressed = await self.store.is_suppressed(missing_keys) if missing_keys else set()
        asked: list[str | IdentifierKey] = [*profile_ids, *keys]
        return [
            BatchEntry(views[w])
            if w and w in views
            else BatchEntry(None, erased=a in erased_ids or a in suppressed)
            for a, w in zip(asked, wanted, strict=True)
        ]

    async def list_events(
        self,
        profile_id: str,
        *,
        page_size: int,
        page_token: str,
        filters: EventFilter,
    ) -> tuple[list[EventView], str]:
        pid, _ = await self.locate(profile_id, None)
        size = page_size_of(page_size)
        cursor = None
        if page_token:
            cursor = decode_cursor(page_token)
            if cursor is None:
                raise InvalidArgumentError.for_field("page_token", "is not a token this API issued")
        if filters.start_time and filters.end_time and filters.start_time >= filters.end_time:
            raise InvalidArgumentError.for_field("end_time", "must be after start_time")
        page, following = await self.store.list_events(pid, filters, size, cursor)
        return page, encode_cursor(following) if following else ""

    async def identity_graph(
        self, profile_id: str, identifier: identity_pb2.Identifier | None
    ) -> IdentityGraphView:
        pid, _ = await self.locate(profile_id, identifier)
        return await self.store.identity_graph(pid)

    async def merge(
        self, target: str, source: str, *, reason: str, override_guards: bool
    ) -> ProfileView:
        _check_profile_id(target, "target_profile_id")
        _check_profile_id(source, "source_profile_id")
        if not reason.strip():
            raise InvalidArgumentError.for_field("reason", "must say why the profiles are merged")
        pid = await self.store.merge_profiles(
            target, source, reason=reason, override_guards=override_guards
        )
        return (await self.store.load_profiles([pid]))[pid]

    async def unmerge(
        self, identifier: identity_pb2.Identifier | None, *, reason: str
    ) -> tuple[ProfileView, list[ProfileView]]:
        if identifier is None:
            raise InvalidArgumentError.for_field("identifier", "must be set")
        key = self.identifier(identifier, "identifier")
        owner, split = await self.store.unmerge(key, reason=reason)
        views = await self.store.load_profiles([owner, *split])
        return views[owner], [views[p] for p in split if p in views]

    async def update_consent(
        self,
        profile_id: str,
        identifier: identity_pb2.Identifier | None,
        *,
        channel: str,
        purpose: str,
        status: str,
        update_time: datetime | None,
        source: str,
    ) -> ProfileView:
        if not profile_id and identifier is None:
            raise InvalidArgumentError.for_field("profile_id", "set profile_id or identifier")
        if profile_id and identifier is not None:
            raise InvalidArgumentError.for_field(
                "identifier", "set either profile_id or identifier, not both"
            )
        channel = channel.strip().lower()
        if not _CHANNEL_RE.match(channel):
            raise InvalidArgumentError.for_field(
                "channel", "must be a lower-case name such as email, sms, push, web or in_app"
            )
        if purpose not in ("marketing", "transactional"):
            raise InvalidArgumentError.for_field("purpose", "must be MARKETING or TRANSACTIONAL")
        if status not in ("subscribed", "unsubscribed", "unknown"):
            raise InvalidArgumentError.for_field("status", "must be set")
        update = ConsentUpdate(
            channel, purpose, status, update_time or datetime.now(UTC), source or "api"
        )
        key = self.identifier(identifier, "identifier") if identifier is not None else None
        target: str | None = None
        if profile_id:
            target, _ = await self.locate(profile_id, None)
            views = await self.store.load_profiles([target])
            if views[target].identifiers:
                key, target = strongest(views[target].identifiers), None
        effects = consent_call_effects(
            f"consent-{uuid.uuid4().hex}", identifier=key, profile_id=target, update=update
        )
        result = await self.store.apply([effects])
        pid = result.profile_ids.get(effects.id)
        if pid is None:
            raise FailedPreconditionError(
                "identifier: the person was erased; their identifiers are suppressed",
                reason="SUPPRESSED",
            )
        return (await self.store.load_profiles([pid]))[pid]

    async def erase(
        self,
        profile_id: str,
        identifier: identity_pb2.Identifier | None,
        *,
        actor: str,
        reason: str,
    ) -> ErasureResult:
        pid, _ = await self.locate(profile_id, identifier)
        return await self.store.erase(pid, actor=actor, reason=reason)

    async def export(
        self, profile_id: str, identifier: identity_pb2.Identifier | None, *, actor: str
    ) -> tuple[str, dict[str, Any]]:
        pid, _ = await self.locate(profile_id, identifier)
        document = await self.store.export(pid)
        await self.store.record_export(pid, actor)
        return pid, document
