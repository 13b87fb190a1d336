"""The membership worker's reads and writes on PostgreSQL, one array statement per table.

The worker handles thousands of profile changes a second, so its hot path talks to the driver
(asyncpg) directly: each statement takes the batch's ids as one array parameter (prepared once,
whatever the batch size) and rows come back as driver records, with no per-row ORM or type
processing. Reads are narrowed to what the segments being evaluated refer to: their traits,
consents and identifier types (`Needs`), and their event names from each name's horizon on.
Results are what `readmodel.load_profiles` builds, restricted to those, so both evaluators
still see the same data.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from upm_segment import model as m
from upm_segment.evaluate import EventRecord, ProfileData, TraitValue
from upm_segment.store.readmodel import typed_value
from upm_segment.store.sql import MembershipRow

# Which profiles are live, with their traits (the JSON text only for the types without a typed
# column, as `trait_value`), consents and identifier types, in one round trip; a branch whose
# array (or flag) is empty reads nothing.
_ATTRIBUTES = (
    "SELECT 0, id, NULL::text, NULL::text, NULL::text, NULL::float8, NULL::boolean,"
    " NULL::timestamptz FROM profile_profiles"
    " WHERE id = ANY($1::text[]) AND merged_into IS NULL"
    " UNION ALL SELECT 1, profile_id, name, value_type,"
    " CASE WHEN value_type = 'string' THEN text_value"
    " WHEN value_type IN ('number', 'boolean', 'timestamp') THEN NULL ELSE value::text END,"
    " num_value, bool_value, time_value FROM profile_traits"
    " WHERE profile_id = ANY($1::text[]) AND name = ANY($2::text[])"
    " UNION ALL SELECT 2, profile_id, channel, purpose, status, NULL, NULL, NULL"
    " FROM profile_consents WHERE $4::boolean AND profile_id = ANY($1::text[])"
    " UNION ALL SELECT DISTINCT 3, profile_id, type, NULL, NULL, NULL::float8, NULL::boolean,"
    " NULL::timestamptz FROM profile_identifiers"
    " WHERE profile_id = ANY($1::text[]) AND type = ANY($3::text[])"
)
# Each wanted name from its horizon on (a NULL horizon: every event of the name).
_EVENTS = (
    "SELECT e.profile_id, e.name, e.type, e.event_time, e.properties::text"
    " FROM profile_events AS e"
    " JOIN unnest($2::text[], $3::timestamptz[]) AS h(name, since) ON e.name = h.name"
    " WHERE e.profile_id = ANY($1::text[]) AND (h.since IS NULL OR e.event_time >= h.since)"
)
_MEMBERSHIPS = (
    "SELECT segment_id, profile_id, member, segment_version, next_check_time"
    " FROM segment_memberships WHERE profile_id = ANY($1::text[])"
)
# Rows of members and of pairs with a pending edge are upserted, the others deleted, in one
# statement (a batch never holds the same pair twice, so the two sets are disjoint).
_SAVE = (
    "WITH dropped AS (DELETE FROM segment_memberships AS s"
    " USING unnest($1::text[], $2::text[]) AS d(segment_id, profile_id)"
    " WHERE s.segment_id = d.segment_id AND s.profile_id = d.profile_id)"
    " INSERT INTO segment_memberships"
    " (segment_id, profile_id, member, segment_version, changed_time, next_check_time)"
    " SELECT k.segment_id, k.profile_id, k.member, k.segment_version, $7, k.next_check_time"
    " FROM unnest($3::text[], $4::text[], $5::boolean[], $6::bigint[], $8::timestamptz[])"
    " AS k(segment_id, profile_id, member, segment_version, next_check_time)"
    " ON CONFLICT (segment_id, profile_id) DO UPDATE SET member = excluded.member,"
    " segment_version = excluded.segment_version, changed_time = excluded.changed_time,"
    " next_check_time = excluded.next_check_time"
)


@dataclass(frozen=True)
class Needs:
    """What evaluating some segments reads of a profile besides its events."""

    traits: tuple[str, ...]
    consents: bool
    identifier_types: tuple[str, ...]


def needs_of(conditions: Iterable[m.Condition]) -> Needs:
    traits: set[str] = set()
    identifier_types: set[str] = set()
    consents = False
    for node in (node for tree in conditions for node in m.walk(tree)):
        if isinstance(node, m.TraitCondition):
            traits.add(node.name)
        elif isinstance(node, m.IdentifierCondition):
            identifier_types.add(node.type)
        elif isinstance(node, m.ConsentCondition):
            consents = True
    return Needs(tuple(sorted(traits)), consents, tuple(sorted(identifier_types)))


async def load_live(
    driver: Any, profile_ids: Collection[str], needs: Needs
) -> dict[str, ProfileData]:
    """The evaluator's view, without events, of those of `profile_ids` that exist and are not
    merged away: the traits, consents and identifier types `needs` refers to."""
    ids = sorted(profile_ids)
    if not ids:
        return {}
    found = {pid: ProfileData(pid) for pid in ids}
    live: set[str] = set()
    rows = await driver.fetch(
        _ATTRIBUTES,
        ids,
        list(needs.traits),
        list(needs.identifier_types),
        needs.consents,
    )
    for kind, pid, a, b, c, number, flag, moment in rows:
        if kind == 0:
            live.add(pid)
        elif kind == 1:
            found[pid].traits[a] = TraitValue(
                b, typed_value(b, c, number, flag, moment, json_text=c)
            )
        elif kind == 2:
            found[pid].consents[(a, b)] = c
        else:
            found[pid].identifier_types.add(a)
    return {pid: found[pid] for pid in ids if pid in live}


async def load_events(
    driver: Any, profiles: Mapping[str, ProfileData], horizons: Mapping[str, datetime | None]
) -> None:
    """Add to each profile its events of the names in `horizons`, each from its horizon on."""
    if not profiles or not horizons:
        return
    names = sorted(horizons)
    rows = await driver.fetch(_EVENTS, sorted(profiles), names, [horizons[name] for name in names])
    loads = orjson.loads
    for pid, name, kind, moment, text in rows:
        properties = loads(text) if text else None
        profiles[pid].events.append(EventRecord(name, kind, moment, properties or {}))


async def stored_rows(
    driver: Any, profile_ids: Collection[str]
) -> dict[tuple[str, str], MembershipRow]:
    """The stored membership rows of the profiles, by (segment id, profile id)."""
    if not profile_ids:
        return {}
    rows = await driver.fetch(_MEMBERSHIPS, sorted(profile_ids))
    return {(r[0], r[1]): MembershipRow(r[0], r[1], r[2], r[3], r[4]) for r in rows}


async def save_rows(driver: Any, rows: Sequence[MembershipRow], now: datetime) -> None:
    """`SqlSegmentStore.save_memberships` in one statement."""
    if not rows:
        return
    dropped = [r for r in rows if not r.member and r.next_check_time is None]
    kept = [r for r in rows if r.member or r.next_check_time is not None]
    await driver.execute(
        _SAVE,
        [r.segment_id for r in dropped],
        [r.profile_id for r in dropped],
        [r.segment_id for r in kept],
        [r.profile_id for r in kept],
        [r.member for r in kept],
        [r.segment_version for r in kept],
        now,
        [r.next_check_time for r in kept],
    )


def merge_groups(
    groups: Mapping[tuple[str, ...], list[str]], limit: int
) -> dict[tuple[str, ...], list[str]]:
    """At most `limit` groups of profiles keyed by the event names they need: the largest
    groups as they are, the others merged into one needing all their names (reading more than
    a profile needs is harmless, only slower)."""
    if len(groups) <= limit:
        return dict(groups)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    kept = dict(ordered[: limit - 1])
    rest = ordered[limit - 1 :]
    union = tuple(sorted({name for key, _ in rest for name in key}))
    merged = [pid for _, pids in rest for pid in pids]
    kept[union] = kept.get(union, []) + merged
    return kept
