"""What the orchestrator reads from its peers: people (profile service) and segments.

`ProfileDirectory` gives consent, time zone and suppression, and withdraws consent when a
person unsubscribes or complains; `SegmentDirectory` lists a segment's members. Each has an
in-memory implementation (tests, benchmarks) and a gRPC client of the peer service.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import grpc

from upm.common.v1 import consent_pb2
from upm_common.errors import NotFoundError, UnavailableError
from upm_common.joining import CallJoiner
from upm_orchestrator.engine import ProfileInfo

UNSUBSCRIBED = consent_pb2.CONSENT_STATUS_UNSUBSCRIBED


class ProfileDirectory(Protocol):
    """People as the profile service knows them."""

    async def get_profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileInfo]:
        """The profiles found among `profile_ids` (absent ids are not in the result)."""
        ...

    async def withdraw_consent(
        self, profile_id: str, channel: str, purpose: int, when: datetime, source: str
    ) -> None:
        """Record that the person unsubscribed from `channel` for `purpose`."""
        ...


class SegmentDirectory(Protocol):
    """Segments as the segment service knows them."""

    def members(self, segment_id: str) -> AsyncIterator[str]:
        """Every member's profile id; raises NotFoundError for an unknown segment."""
        ...


class InMemoryProfileDirectory:
    """A ProfileDirectory over a dict, for tests and benchmarks."""

    def __init__(self, profiles: Sequence[ProfileInfo] = ()) -> None:
        self.profiles: dict[str, ProfileInfo] = {p.profile_id: p for p in profiles}

    def put(self, profile: ProfileInfo) -> None:
        self.profiles[profile.profile_id] = profile

    async def get_profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileInfo]:
        return {pid: self.profiles[pid] for pid in profile_ids if pid in self.profiles}

    async def withdraw_consent(
        self, profile_id: str, channel: str, purpose: int, when: datetime, source: str
    ) -> None:
        del when, source
        profile = self.profiles[profile_id]
        consents = dict(profile.consents or {})
        consents[(channel, purpose)] = UNSUBSCRIBED
        self.profiles[profile_id] = ProfileInfo(
            profile.profile_id, profile.timezone, profile.suppressed, consents
        )


class InMemorySegmentDirectory:
    """A SegmentDirectory over a dict, for tests and benchmarks."""

    def __init__(self, segments: Mapping[str, Sequence[str]] | None = None) -> None:
        self.segments: dict[str, list[str]] = {k: list(v) for k, v in (segments or {}).items()}

    async def members(self, segment_id: str) -> AsyncIterator[str]:
        if segment_id not in self.segments:
            raise NotFoundError(
                f"segment {segment_id!r} not found",
                resource_type="segment",
                resource_name=segment_id,
            )
        for profile_id in self.segments[segment_id]:
            yield profile_id


class CachedProfileDirectory:
    """A ProfileDirectory that remembers people for `ttl_seconds` and batches lookups.

    Single decisions that arrive in the same event-loop turn share one lookup of the peer
    (one BatchGetProfiles, not one call each), and a person asked about again within the time
    to live costs no call at all. A withdrawal through this directory forgets the person at
    once; a change made at the profile service directly is seen within the time to live.
    """

    def __init__(
        self, inner: ProfileDirectory, *, ttl_seconds: float = 1.0, max_entries: int = 100_000
    ) -> None:
        self._inner = inner
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, ProfileInfo | None]] = {}
        self._lookups: CallJoiner[None, str, ProfileInfo | None] = CallJoiner(self._fetch)

    async def get_profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileInfo]:
        now = time.monotonic()
        found: dict[str, ProfileInfo] = {}
        missing: list[str] = []
        for profile_id in profile_ids:
            entry = self._entries.get(profile_id)
            if entry is not None and now - entry[0] < self._ttl:
                if entry[1] is not None:
                    found[profile_id] = entry[1]
            else:
                missing.append(profile_id)
        if missing:
            fetched = await self._lookups(None, missing)
            found.update(
                (p, info) for p, info in zip(missing, fetched, strict=True) if info is not None
            )
        return found

    async def _fetch(self, _: None, asked: list[str]) -> list[ProfileInfo | None]:
        wanted = list(dict.fromkeys(asked))
        found = await self._inner.get_profiles(wanted)
        now = time.monotonic()
        if len(self._entries) + len(wanted) > self._max_entries:
            self._entries.clear()
        for profile_id in wanted:
            # Absent people are remembered too: a sender retrying an unknown id costs no call.
            self._entries[profile_id] = (now, found.get(profile_id))
        return [found.get(profile_id) for profile_id in asked]

    async def withdraw_consent(
        self, profile_id: str, channel: str, purpose: int, when: datetime, source: str
    ) -> None:
        self._entries.pop(profile_id, None)
        await self._inner.withdraw_consent(profile_id, channel, purpose, when, source)
        self._entries.pop(profile_id, None)


def _peer_error(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(f"{what} not found: {exc.details()}")
    return UnavailableError(f"{what}: peer answered {exc.code().name}", retry_after_seconds=1.0)


class GrpcProfileDirectory:
    """A ProfileDirectory backed by upm.profile.v1.ProfileService."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 2.0) -> None:
        from upm.profile.v1 import profile_service_pb2, profile_service_pb2_grpc

        self._pb: Any = profile_service_pb2
        self._stub: Any = profile_service_pb2_grpc.ProfileServiceStub(channel)
        self._timeout = timeout_seconds

    async def get_profiles(self, profile_ids: Sequence[str]) -> dict[str, ProfileInfo]:
        found: dict[str, ProfileInfo] = {}
        unique = list(dict.fromkeys(profile_ids))
        for start in range(0, len(unique), 1000):
            chunk = unique[start : start + 1000]
            try:
                response = await self._stub.BatchGetProfiles(
                    self._pb.BatchGetProfilesRequest(profile_ids=chunk), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as exc:
                raise _peer_error(exc, "profiles") from exc
            for asked, result in zip(chunk, response.results, strict=False):
                if result.erased:
                    # An erased person has no profile left, yet must never be contacted again:
                    # a suppressed stand-in makes the decision DENY rather than NOT_FOUND.
                    found[asked] = ProfileInfo(asked, suppressed=True)
                    continue
                if not result.found:
                    continue
                profile = result.profile
                consents = {(c.channel, c.purpose): c.status for c in profile.consents}
                found[asked] = ProfileInfo(asked, profile.timezone, False, consents)
        return found

    async def withdraw_consent(
        self, profile_id: str, channel: str, purpose: int, when: datetime, source: str
    ) -> None:
        request = self._pb.UpdateConsentRequest(
            profile_id=profile_id,
            channel=channel,
            purpose=purpose,
            status=UNSUBSCRIBED,
            source=source,
        )
        request.update_time.FromDatetime(when)
        try:
            await self._stub.UpdateConsent(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _peer_error(exc, f"profile {profile_id!r}") from exc


class GrpcSegmentDirectory:
    """A SegmentDirectory backed by upm.segment.v1.SegmentService."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 10.0) -> None:
        from upm.segment.v1 import segment_service_pb2, segment_service_pb2_grpc

        self._pb: Any = segment_service_pb2
        self._stub: Any = segment_service_pb2_grpc.SegmentServiceStub(channel)
        self._timeout = timeout_seconds

    async def members(self, segment_id: str) -> AsyncIterator[str]:
        token = ""
        while True:
            try:
                response = await self._stub.ListSegmentMembers(
                    self._pb.ListSegmentMembersRequest(
                        segment_id=segment_id, page_size=1000, page_token=token
                    ),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as exc:
                raise _peer_error(exc, f"segment {segment_id!r}") from exc
            for profile_id in response.profile_ids:
                yield profile_id
            token = response.next_page_token
            if not token:
                return
