"""Identity resolution over one batch of events, in memory, with the guards.

The store loads the owners of the batch's identifiers (under locks), runs the resolver event by
event, then writes what it decided in bulk. For each event:

- none of its identifiers is known -> a new profile holds them all;
- one profile holds some -> the others are attached to it;
- several profiles hold some -> they are merged into the target profile,

where the target is the profile of the event's user_id, else the profile holding the strongest
identifier (user_id > email > phone > external > device_id > anonymous_id) that can take the
event's user_id. A merge or an attachment is refused and reported (a conflict) when it would give
a profile more identifiers of a type than its limit (default: one user_id), more identifiers than
the cap, or re-link identifiers an operator unmerged.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from upm_profile.effects import EventEffects
from upm_profile.identifiers import IdentifierKey

UnmergedCheck = Callable[[set[str], set[str]], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Guards:
    """Over-merge guards: identifiers per type and per profile."""

    type_limits: Mapping[str, int] = field(default_factory=lambda: {"user_id": 1})
    max_identifiers: int = 200


@dataclass(frozen=True, slots=True)
class MergeOp:
    winner: str
    loser: str
    rule: str
    event_id: str
    source: str
    time: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class Edge:
    a: IdentifierKey
    b: IdentifierKey
    rule: str
    event_id: str
    source: str
    time: datetime


@dataclass(frozen=True, slots=True)
class Conflict:
    profile_id: str
    other_profile_id: str | None
    identifier: IdentifierKey
    rule: str
    event_id: str


_NOTHING_HELD: dict[str, set[str]] = {}
_NO_VALUES: frozenset[str] = frozenset()


def new_profile_id() -> str:
    return uuid.uuid4().hex


class Resolver:
    """Resolution state of one batch: loaded owners plus the decisions made so far."""

    def __init__(
        self,
        guards: Guards,
        owners: dict[IdentifierKey, str],
        limited: dict[str, dict[str, set[str]]],
        counts: dict[str, int],
        unmerged: UnmergedCheck,
    ) -> None:
        self.guards = guards
        self.owner = owners
        self.limited = limited
        self.counts = counts
        self._unmerged = unmerged
        self._alias: dict[str, str] = {}
        self.originals: dict[str, set[str]] = {}
        self.new_profiles: list[str] = []
        self.merges: list[MergeOp] = []
        self.attachments: list[tuple[IdentifierKey, str]] = []
        self.edges: list[Edge] = []
        self.conflicts: list[Conflict] = []

    def find(self, profile_id: str) -> str:
        while profile_id in self._alias:
            profile_id = self._alias[profile_id]
        return profile_id

    def _limited_of(self, pid: str) -> dict[str, set[str]]:
        return self.limited.setdefault(pid, {})

    def _fits(self, pid: str, keys: list[IdentifierKey], extra_count: int) -> str | None:
        """None when `pid` can take `keys` (plus `extra_count` identifiers), else the guard."""
        held = self.limited.get(pid, _NOTHING_HELD)
        for kind, limit in self.guards.type_limits.items():
            values = held.get(kind, _NO_VALUES)
            if keys:
                values = values | {k.value for k in keys if k.type == kind}
            if len(values) > limit:
                return f"{kind}_limit"
        if self.counts.get(pid, 0) + extra_count > self.guards.max_identifiers:
            return "identifier_cap"
        return None

    def _can_merge(self, target: str, other: str) -> str | None:
        held = self._limited_of(other)
        keys = [IdentifierKey(kind, v) for kind, values in held.items() for v in values]
        return self._fits(target, keys, self.counts.get(other, 0))

    def _new_profile(self) -> str:
        pid = new_profile_id()
        self.new_profiles.append(pid)
        self.counts[pid] = 0
        self.originals[pid] = {pid}
        return pid

    def _merge(self, winner: str, loser: str, effects: EventEffects, reason: str) -> None:
        self._alias[loser] = winner
        self.counts[winner] = self.counts.get(winner, 0) + self.counts.pop(loser, 0)
        held = self._limited_of(winner)
        for kind, values in self.limited.pop(loser, {}).items():
            held.setdefault(kind, set()).update(values)
        self.originals.setdefault(winner, {winner}).update(self.originals.pop(loser, {loser}))
        self.merges.append(
            MergeOp(
                winner, loser, effects.link_rule, effects.id, effects.source, effects.time, reason
            )
        )

    def _attach(self, key: IdentifierKey, pid: str) -> None:
        self.owner[key] = pid
        self.counts[pid] = self.counts.get(pid, 0) + 1
        if key.type in self.guards.type_limits:
            self._limited_of(pid).setdefault(key.type, set()).add(key.value)
        self.attachments.append((key, pid))

    def _attach_or_refuse(self, key: IdentifierKey, target: str, effects: EventEffects) -> None:
        refusal = self._fits(target, [key], 1)
        if refusal is None:
            self._attach(key, target)
        else:
            self.conflicts.append(Conflict(target, None, key, refusal, effects.id))

    def settled_target(self, effects: EventEffects) -> str | None:
        """The profile of an event that needs no decision, else None (then `resolve`): a call
        addressed by profile id, or (most events) one identifier, already held. Same decision
        as `resolve`: its profile is the target when it is a user_id or the profile fits the
        guards; nothing to attach, merge or link. Not a coroutine: the batch calls it per
        event, and only the other events pay for an await."""
        if effects.profile_id is not None:
            return self.find(effects.profile_id)
        identifiers = effects.identifiers
        if len(identifiers) == 1:
            key = identifiers[0]
            owner = self.owner.get(key)
            if owner is not None:
                held = self.find(owner)
                if key.type == "user_id" or self._fits(held, [], 0) is None:
                    return held
        return None

    async def resolve(self, effects: EventEffects) -> str:
        """The profile the event applies to, recording merges, attachments, edges, conflicts:
        for an event `settled_target` left undecided (the batch asks it first)."""
        keys = sorted(effects.identifiers, key=IdentifierKey.sort_key)
        owned = {k: self.find(self.owner[k]) for k in keys if k in self.owner}
        owners: list[str] = []
        for k in keys:
            if k in owned and owned[k] not in owners:
                owners.append(owned[k])
        limited_keys = [k for k in keys if k.type in self.guards.type_limits]
        user_keys = [k for k in keys if k.type == "user_id"]
        target: str | None = None
        if user_keys and user_keys[0] in owned:
            target = owned[user_keys[0]]
        else:
            for pid in owners:
                if self._fits(pid, [k for k in limited_keys if k not in owned], 0) is None:
                    target = pid
                    break
        if target is None:
            target = self._new_profile()
        # The event's own user_id (and other limited identifiers) belong to the target first,
        # so that the merges below are checked against them.
        for k in limited_keys:
            if k not in self.owner:
                self._attach_or_refuse(k, target, effects)
        for owner in owners:
            other = self.find(owner)
            if other == target:
                continue
            refusal = self._can_merge(target, other)
            if refusal is None and await self._unmerged(
                self.originals.get(target, {target}), self.originals.get(other, {other})
            ):
                refusal = "unmerged"
            if refusal is None:
                shared = ", ".join(str(k) for k in keys if owned.get(k) == other)
                self._merge(
                    target,
                    other,
                    effects,
                    f"{shared} seen with {keys[0]} on {effects.type or effects.kind}"
                    f" event {effects.id}",
                )
            else:
                for k in keys:
                    if owned.get(k) == other:
                        self.conflicts.append(Conflict(target, other, k, refusal, effects.id))
        for k in keys:
            if k not in self.owner:
                self._attach_or_refuse(k, target, effects)
        linked = [k for k in keys if k in self.owner and self.find(self.owner[k]) == target]
        if len(linked) > 1:
            primary = linked[0]
            for k in linked[1:]:
                a, b = sorted((primary, k))
                self.edges.append(
                    Edge(a, b, effects.link_rule, effects.id, effects.source, effects.time)
                )
        return target
