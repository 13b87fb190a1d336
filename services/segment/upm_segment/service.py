"""The segment domain: definitions, counts, listings and one-profile checks.

Counts and listings compile the resolved definition to SQL over the profile read model; IsMember
loads one profile and evaluates it in process. Both take an evaluation time (default: now).
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from upm_common.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from upm_segment import model as m
from upm_segment.compile import IdRange, SqlCompiler, prepare_read, range_connections, summed
from upm_segment.evaluate import evaluate, event_horizons
from upm_segment.resolve import resolve
from upm_segment.store.readmodel import live_profile_id, load_profile
from upm_segment.store.sql import SegmentRecord, SqlSegmentStore, new_etag
from upm_segment.text import ParseError, parse, parse_or_invalid, to_text
from upm_segment.validate import SEGMENT_ID, check

Clock = Callable[[], datetime]
MAX_NAME = 200
MAX_DESCRIPTION = 2000


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Preview:
    count: int
    sample: list[str]
    definition: m.Condition
    text: str
    evaluation_time: datetime


@dataclass(frozen=True)
class MemberPage:
    profile_ids: list[str]
    next_page_token: str
    evaluation_time: datetime


@dataclass(frozen=True)
class Overlap:
    first: int
    second: int
    both: int
    evaluation_time: datetime


@dataclass(frozen=True)
class TextProblem:
    message: str
    line: int
    column: int
    offset: int


def encode_token(data: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode()


def decode_token(token: str) -> dict[str, str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise InvalidArgumentError.for_field("page_token", "is not a valid page token") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError.for_field("page_token", "is not a valid page token")
    return {str(k): str(v) for k, v in data.items()}


def page_size(value: int, default: int, maximum: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgumentError.for_field(field, "must not be negative")
    return min(value or default, maximum)


class SegmentDomain:
    def __init__(
        self,
        store: SqlSegmentStore,
        read_engine: AsyncEngine,
        *,
        clock: Clock = utc_now,
        query_timeout_seconds: float | None = None,
        count_ranges: int = 2,
    ) -> None:
        self.store = store
        self.read_engine = read_engine
        self.clock = clock
        self.query_timeout_seconds = query_timeout_seconds
        self.count_ranges = count_ranges

    # --- definitions --------------------------------------------------------------------------

    def definition_from(
        self, definition: m.Condition | None, text: str, *, prefix: str = "segment."
    ) -> m.Condition:
        """The tree given as a tree or as text (the tree wins when both are given); `prefix`
        is prepended to the field names in errors."""
        if definition is not None:
            check(definition, path=f"{prefix}definition")
            return definition
        if not text.strip():
            raise InvalidArgumentError.for_field(
                f"{prefix}definition", "is required (as a condition tree or as text)"
            )
        return parse_or_invalid(text, field=f"{prefix}text")

    async def _resolved(self, definition: m.Condition, self_id: str | None = None) -> m.Condition:
        if not m.referenced_segments(definition):
            return definition
        return resolve(definition, await self.store.definitions(), self_id=self_id)

    async def create(
        self,
        *,
        segment_id: str,
        name: str,
        description: str,
        definition: m.Condition | None,
        text: str,
    ) -> SegmentRecord:
        segment_id = segment_id or f"seg-{uuid.uuid4().hex[:12]}"
        if not SEGMENT_ID.match(segment_id):
            raise InvalidArgumentError.for_field(
                "segment_id", "use 1-63 lower-case letters, digits, '-' or '_'"
            )
        _check_labels(name, description)
        tree = self.definition_from(definition, text)
        await self._resolved(tree, segment_id)
        now = self.clock()
        record = SegmentRecord(
            id=segment_id,
            name=name or segment_id,
            description=description,
            definition=tree,
            text=to_text(tree),
            version=1,
            etag=new_etag(),
            create_time=now,
            update_time=now,
        )
        return await self.store.create(record)

    async def get(self, segment_id: str) -> SegmentRecord:
        return await self.store.get(segment_id)

    async def list_page(self, size: int, token: str) -> tuple[list[SegmentRecord], str]:
        limit = page_size(size, 50, 1000)
        after = decode_token(token).get("after", "") if token else ""
        records = await self.store.list_page(after=after, limit=limit + 1)
        more = len(records) > limit
        records = records[:limit]
        return records, encode_token({"after": records[-1].id}) if more else ""

    async def update(
        self,
        segment_id: str,
        *,
        fields: set[str],
        name: str,
        description: str,
        definition: m.Condition | None,
        text: str,
        etag: str,
    ) -> SegmentRecord:
        unknown = fields - {"name", "description", "definition", "text"}
        if unknown:
            raise InvalidArgumentError.for_field(
                "update_mask", f"cannot update {', '.join(sorted(unknown))}"
            )
        current = await self.store.get(segment_id)
        if etag and etag != current.etag:
            raise _aborted(segment_id)
        changes: dict[str, object] = {}
        if "name" in fields:
            changes["name"] = name or current.name
        if "description" in fields:
            changes["description"] = description
        _check_labels(str(changes.get("name", "")), str(changes.get("description", "")))
        if fields & {"definition", "text"}:
            tree = self.definition_from(
                definition if "definition" in fields else None, text if "text" in fields else ""
            )
            await self._resolved(tree, segment_id)
            changes["definition"] = tree
            changes["text"] = to_text(tree)
        record = replace(
            current,
            **changes,  # type: ignore[arg-type]
            version=current.version + 1,
            etag=new_etag(),
            update_time=self.clock(),
        )
        return await self.store.update(record, expected_etag=current.etag)

    async def delete(self, segment_id: str, etag: str) -> None:
        referrers = await self.store.referrers(segment_id)
        if referrers:
            raise FailedPreconditionError(
                f"segment {segment_id!r} is used by {', '.join(referrers)}; change those first"
            )
        await self.store.delete(segment_id, etag=etag)

    # --- evaluation ---------------------------------------------------------------------------

    def _compiler(self, now: datetime, id_range: IdRange | None = None) -> SqlCompiler:
        return SqlCompiler(self.read_engine.dialect.name, now, id_range)

    def _ranges(self) -> AbstractAsyncContextManager[list[tuple[AsyncConnection, IdRange | None]]]:
        """Connections for a count split into profile-id ranges over one snapshot."""
        return range_connections(
            self.read_engine, self.count_ranges, timeout_seconds=self.query_timeout_seconds
        )

    async def preview(
        self,
        definition: m.Condition | None,
        text: str,
        sample_size: int,
        now: datetime | None,
    ) -> Preview:
        tree = self.definition_from(definition, text, prefix="")
        size = page_size(sample_size, 10, 1000, "sample_size")
        resolved = await self._resolved(tree)
        at = now or self.clock()
        async with self._ranges() as connections:
            (count,) = await summed(
                connections, lambda part: self._compiler(at, part).count_query(resolved)
            )
            # The sample in the count's snapshot, on the first range's connection.
            members = self._compiler(at).members_query(resolved, limit=size)
            sample = [row[0] for row in await connections[0][0].execute(members)]
        return Preview(count, sample, tree, to_text(tree), at)

    async def count(self, segment_id: str, now: datetime | None) -> tuple[int, datetime]:
        record = await self.store.get(segment_id)
        resolved = await self._resolved(record.definition, segment_id)
        at = now or self.clock()
        async with self._ranges() as connections:
            (count,) = await summed(
                connections, lambda part: self._compiler(at, part).count_query(resolved)
            )
        return count, at

    async def members(
        self, segment_id: str, size: int, token: str, now: datetime | None
    ) -> MemberPage:
        limit = page_size(size, 100, 10_000)
        after = ""
        at = now or self.clock()
        if token:
            data = decode_token(token)
            if data.get("segment") != segment_id:
                raise InvalidArgumentError.for_field("page_token", "belongs to another segment")
            after = data.get("after", "")
            at = datetime.fromisoformat(data["at"]) if "at" in data else at
        record = await self.store.get(segment_id)
        resolved = await self._resolved(record.definition, segment_id)
        query = self._compiler(at).members_query(resolved, after=after or None, limit=limit + 1)
        async with self.read_engine.connect() as conn:
            await prepare_read(conn, timeout_seconds=self.query_timeout_seconds)
            ids = [row[0] for row in await conn.execute(query)]
        more = len(ids) > limit
        ids = ids[:limit]
        next_token = (
            encode_token({"segment": segment_id, "after": ids[-1], "at": at.isoformat()})
            if more
            else ""
        )
        return MemberPage(ids, next_token, at)

    async def is_member(
        self, segment_id: str, profile_id: str, now: datetime | None
    ) -> tuple[bool, str, datetime]:
        if not profile_id:
            raise InvalidArgumentError.for_field("profile_id", "is required")
        record = await self.store.get(segment_id)
        resolved = await self._resolved(record.definition, segment_id)
        at = now or self.clock()
        horizons = event_horizons([resolved], at)
        async with self.read_engine.connect() as conn:
            live = await live_profile_id(conn, profile_id)
            if live is None:
                raise NotFoundError(
                    f"profile {profile_id!r} not found",
                    resource_type="profile",
                    resource_name=profile_id,
                )
            data = await load_profile(conn, live, events=horizons)
        return evaluate(resolved, data, at), live, at

    async def overlap(self, first_id: str, second_id: str, now: datetime | None) -> Overlap:
        first = await self.store.get(first_id)
        second = await self.store.get(second_id)
        a = await self._resolved(first.definition, first_id)
        b = await self._resolved(second.definition, second_id)
        at = now or self.clock()
        async with self._ranges() as connections:
            first_count, second_count, both = await summed(
                connections, lambda part: self._compiler(at, part).overlap_query(a, b)
            )
        return Overlap(first_count, second_count, both, at)

    @staticmethod
    def parse_text(text: str) -> tuple[m.Condition | None, str, list[TextProblem]]:
        try:
            tree = parse(text)
        except ParseError as exc:
            return None, "", [TextProblem(exc.message, exc.line, exc.column, exc.offset)]
        return tree, to_text(tree), []


def _check_labels(name: str, description: str) -> None:
    if len(name) > MAX_NAME or re.search(r"[\x00-\x1f]", name):
        raise InvalidArgumentError.for_field(
            "segment.name", f"must be at most {MAX_NAME} printable characters"
        )
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgumentError.for_field(
            "segment.description", f"must be at most {MAX_DESCRIPTION} characters"
        )


def _aborted(segment_id: str) -> Exception:
    return AbortedError(f"segment {segment_id!r} changed; its etag no longer matches")
