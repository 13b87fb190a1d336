"""The orchestrator's records on SQL: policies, follow-up rules, the decision log, sends, outcomes.

Whatever the fatigue backend, these live in the service database. Decisions are logged through
a buffer flushed in bulk (by the background worker, or before any read of the log), so logging
costs the decision path one list append.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm_common.errors import (
    AbortedError,
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
)
from upm_common.logging import get_logger
from upm_common.protoconv import timestamp_to_datetime
from upm_orchestrator.store.tables import (
    decision_reasons,
    decisions,
    follow_up_rules,
    outcomes,
    policies,
    policy_versions,
    sends,
)

log = get_logger(__name__)

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50


def page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidArgumentError.for_field(field, "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(*parts: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode()


def decode_token(token: str, field: str = "page_token") -> list[object]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise InvalidArgumentError.for_field(field, "is not a token this service issued") from None
    if not isinstance(parts, list):
        raise InvalidArgumentError.for_field(field, "is not a token this service issued")
    return parts


@dataclass(frozen=True)
class Send:
    """A confirmed send."""

    reservation_id: str
    channel: str
    campaign_id: str
    intent_key: str
    variant: str
    sent_time: datetime


@dataclass(frozen=True)
class OutcomeRecord:
    """A recorded outcome."""

    type: str
    event_name: str
    channel: str
    campaign_id: str
    occur_time: datetime


class Repository:
    """Policies, follow-up rules, decisions, sends and outcomes in the service database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: list[pb.Decision] = []
        self._flush_lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self.flush_delay_seconds = 0.1
        self.max_pending = 50_000

    # Policies -------------------------------------------------------------------------------

    async def create_policy(self, policy: pb.Policy, now: datetime) -> pb.Policy:
        stored = pb.Policy()
        stored.CopyFrom(policy)
        stored.version = 1
        stored.create_time.FromDatetime(now)
        stored.update_time.FromDatetime(now)
        payload = stored.SerializeToString(deterministic=True)
        async with self._engine.begin() as conn:
            exists = await conn.execute(
                select(policies.c.policy_id).where(policies.c.policy_id == policy.policy_id)
            )
            if exists.first() is not None:
                raise AlreadyExistsError(f"policy {policy.policy_id!r} exists already")
            await conn.execute(
                delete(policy_versions).where(policy_versions.c.policy_id == policy.policy_id)
            )
            await conn.execute(
                policies.insert().values(
                    policy_id=policy.policy_id,
                    version=1,
                    payload=payload,
                    create_time=now,
                    update_time=now,
                )
            )
            await conn.execute(
                policy_versions.insert().values(
                    policy_id=policy.policy_id, version=1, payload=payload, create_time=now
                )
            )
        return stored

    async def get_policy(self, policy_id: str, version: int = 0) -> pb.Policy:
        async with self._engine.connect() as conn:
            if version:
                query = select(policy_versions.c.payload).where(
                    policy_versions.c.policy_id == policy_id,
                    policy_versions.c.version == version,
                )
                exists = await conn.execute(
                    select(policies.c.policy_id).where(policies.c.policy_id == policy_id)
                )
                if exists.first() is None:
                    raise _policy_not_found(policy_id)
            else:
                query = select(policies.c.payload).where(policies.c.policy_id == policy_id)
            row = (await conn.execute(query)).first()
        if row is None:
            if version:
                raise NotFoundError(
                    f"policy {policy_id!r} has no version {version}",
                    resource_type="policy",
                    resource_name=f"{policy_id}@{version}",
                )
            raise _policy_not_found(policy_id)
        return pb.Policy.FromString(row.payload)

    async def list_policies(self, size: int, token: str) -> tuple[list[pb.Policy], str]:
        size = page_size(size)
        query = select(policies.c.policy_id, policies.c.payload).order_by(policies.c.policy_id)
        if token:
            after = decode_token(token)
            query = query.where(policies.c.policy_id > str(after[0]))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(size + 1))).all()
        items = [pb.Policy.FromString(row.payload) for row in rows[:size]]
        next_token = encode_token(rows[size - 1].policy_id) if len(rows) > size else ""
        return items, next_token

    async def update_policy(
        self, policy: pb.Policy, expected_version: int, now: datetime
    ) -> pb.Policy:
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    select(policies.c.version, policies.c.create_time)
                    .where(policies.c.policy_id == policy.policy_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise _policy_not_found(policy.policy_id)
            if expected_version and expected_version != row.version:
                raise AbortedError(
                    f"policy {policy.policy_id!r} is at version {row.version}, "
                    f"not {expected_version}",
                    reason="POLICY_VERSION_MISMATCH",
                )
            stored = pb.Policy()
            stored.CopyFrom(policy)
            stored.version = row.version + 1
            stored.create_time.FromDatetime(row.create_time)
            stored.update_time.FromDatetime(now)
            payload = stored.SerializeToString(deterministic=True)
            result = await conn.execute(
                update(policies)
                .where(policies.c.policy_id == policy.policy_id, policies.c.version == row.version)
                .values(version=stored.version, payload=payload, update_time=now)
            )
            if result.rowcount != 1:
                raise AbortedError(
                    f"policy {policy.policy_id!r} changed concurrently; retry",
                    reason="POLICY_VERSION_MISMATCH",
                )
            await conn.execute(
                policy_versions.insert().values(
                    policy_id=policy.policy_id,
                    version=stored.version,
                    payload=payload,
                    create_time=now,
                )
            )
        return stored

    async def delete_policy(self, policy_id: str) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(policies).where(policies.c.policy_id == policy_id))
            if result.rowcount == 0:
                raise _policy_not_found(policy_id)

    # Follow-up rules ------------------------------------------------------------------------

    async def create_follow_up_rule(self, rule: pb.FollowUpRule, now: datetime) -> None:
        async with self._engine.begin() as conn:
            exists = await conn.execute(
                select(follow_up_rules.c.rule_id).where(follow_up_rules.c.rule_id == rule.rule_id)
            )
            if exists.first() is not None:
                raise AlreadyExistsError(f"follow-up rule {rule.rule_id!r} exists already")
            await conn.execute(
                follow_up_rules.insert().values(
                    rule_id=rule.rule_id, payload=rule.SerializeToString(), create_time=now
                )
            )

    async def list_follow_up_rules(
        self, size: int = MAX_PAGE_SIZE, token: str = ""
    ) -> tuple[list[pb.FollowUpRule], str]:
        size = page_size(size)
        query = select(follow_up_rules.c.rule_id, follow_up_rules.c.payload).order_by(
            follow_up_rules.c.rule_id
        )
        if token:
            query = query.where(follow_up_rules.c.rule_id > str(decode_token(token)[0]))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(size + 1))).all()
        items = [pb.FollowUpRule.FromString(row.payload) for row in rows[:size]]
        next_token = encode_token(rows[size - 1].rule_id) if len(rows) > size else ""
        return items, next_token

    async def delete_follow_up_rule(self, rule_id: str) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(follow_up_rules).where(follow_up_rules.c.rule_id == rule_id)
            )
        if result.rowcount == 0:
            raise NotFoundError(
                f"follow-up rule {rule_id!r} not found",
                resource_type="follow_up_rule",
                resource_name=rule_id,
            )

    # Decision log ---------------------------------------------------------------------------

    async def log(self, batch: Sequence[pb.Decision]) -> None:
        """Queue decisions for the log; a background flush writes them in bulk a moment later.

        The queue is bounded: when it holds `max_pending` decisions (the database is slow or
        down), the caller waits for a flush, so memory stays bounded and an answered decision
        is never dropped; a failed flush puts its decisions back in the queue.
        """
        self._pending.extend(batch)
        if len(self._pending) >= self.max_pending:
            await self.flush()
        elif self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.flush_delay_seconds)
        try:
            await self.flush()
        except Exception:
            log.exception("decision log flush failed; will retry with the next decision")

    async def close(self) -> None:
        """Write what is queued and stop the pending flush."""
        if self._flush_task is not None and not self._flush_task.done():
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        await self.flush()

    async def flush(self) -> int:
        """Write every queued decision; returns how many were written."""
        async with self._flush_lock:
            batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                await self._insert_log(batch)
            except Exception:
                self._pending[:0] = batch
                raise
            return len(batch)

    async def _insert_log(self, batch: list[pb.Decision]) -> None:
        # The log is the hot write path: rows are built as tuples and go straight to the
        # driver's executemany, which skips SQLAlchemy's per-row parameter processing (several
        # times faster in bulk). A batch's decisions mostly share one decide time: each
        # distinct time is converted once.
        async with self._engine.begin() as conn:
            dialect = conn.dialect.name
            times: dict[tuple[int, int], object] = {}
            rows: list[tuple[object, ...]] = []
            reason_rows: list[tuple[object, ...]] = []
            for decision in batch:
                stamp = decision.decide_time
                moment = (stamp.seconds, stamp.nanos)
                decide_time = times.get(moment)
                if decide_time is None:
                    decide_time = times[moment] = _driver_value(
                        timestamp_to_datetime(stamp), dialect == "sqlite"
                    )
                outcome = _OUTCOMES[decision.outcome]
                rows.append(
                    (
                        decision.decision_id,
                        decision.profile_id,
                        decide_time,
                        decision.policy_id,
                        outcome,
                        decision.channel,
                        decision.message.campaign_id,
                        decision.SerializeToString(),
                    )
                )
                for seq, reason in enumerate(decision.reasons):
                    reason_rows.append(
                        (
                            decision.decision_id,
                            seq,
                            decision.policy_id,
                            reason.rule_id,
                            _REASON_CODES[reason.code],
                            outcome,
                            decide_time,
                        )
                    )
            tables = (
                (decisions, _LOG_COLUMNS, rows),
                (decision_reasons, _REASON_COLUMNS, reason_rows),
            )
            if dialect not in ("sqlite", "postgresql"):
                for table, columns, values in tables:
                    if values:
                        await conn.execute(
                            table.insert(), [dict(zip(columns, v, strict=True)) for v in values]
                        )
                return
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            for table, columns, values in tables:
                if not values:
                    continue
                marks = ", ".join(
                    "?" if dialect == "sqlite" else f"${i + 1}" for i in range(len(columns))
                )
                sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
                await driver.executemany(sql, values)

    async def list_decisions(
        self, profile_id: str, size: int, token: str
    ) -> tuple[list[pb.Decision], str]:
        await self.flush()
        size = page_size(size)
        query = (
            select(decisions.c.decision_id, decisions.c.decide_time, decisions.c.payload)
            .where(decisions.c.profile_id == profile_id)
            .order_by(decisions.c.decide_time.desc(), decisions.c.decision_id.desc())
        )
        if token:
            parts = decode_token(token)
            try:
                before = datetime.fromisoformat(str(parts[0]))
                before_id = str(parts[1])
            except (IndexError, ValueError):
                raise InvalidArgumentError.for_field(
                    "page_token", "is not a token this service issued"
                ) from None
            query = query.where(
                or_(
                    decisions.c.decide_time < before,
                    and_(decisions.c.decide_time == before, decisions.c.decision_id < before_id),
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.limit(size + 1))).all()
        items = [pb.Decision.FromString(row.payload) for row in rows[:size]]
        next_token = ""
        if len(rows) > size:
            last = rows[size - 1]
            next_token = encode_token(last.decide_time.isoformat(), last.decision_id)
        return items, next_token

    async def get_decision(self, decision_id: str) -> pb.Decision:
        await self.flush()
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(decisions.c.payload).where(decisions.c.decision_id == decision_id)
                )
            ).first()
        if row is None:
            raise NotFoundError(
                f"decision {decision_id!r} not found",
                resource_type="decision",
                resource_name=decision_id,
            )
        return pb.Decision.FromString(row.payload)

    async def rule_stats(
        self, policy_id: str, start: datetime | None, end: datetime | None
    ) -> tuple[list[pb.RuleStat], int]:
        await self.flush()
        conditions = []
        count_conditions = []
        if policy_id:
            conditions.append(decision_reasons.c.policy_id == policy_id)
            count_conditions.append(decisions.c.policy_id == policy_id)
        if start is not None:
            conditions.append(decision_reasons.c.decide_time >= start)
            count_conditions.append(decisions.c.decide_time >= start)
        if end is not None:
            conditions.append(decision_reasons.c.decide_time < end)
            count_conditions.append(decisions.c.decide_time < end)
        query = (
            select(
                decision_reasons.c.policy_id,
                decision_reasons.c.rule_id,
                decision_reasons.c.code,
                decision_reasons.c.outcome,
                func.count(),
            )
            .where(*conditions)
            .group_by(
                decision_reasons.c.policy_id,
                decision_reasons.c.rule_id,
                decision_reasons.c.code,
                decision_reasons.c.outcome,
            )
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            total = (
                await conn.execute(
                    select(func.count()).select_from(decisions).where(*count_conditions)
                )
            ).scalar_one()
        stats: dict[tuple[str, str, str], pb.RuleStat] = {}
        for policy, rule, code, outcome, count in rows:
            stat = stats.get((policy, rule, code))
            if stat is None:
                stat = pb.RuleStat(
                    policy_id=policy, rule_id=rule, code=pb.ReasonCode.Value(f"REASON_CODE_{code}")
                )
                stats[(policy, rule, code)] = stat
            if outcome == "DENY":
                stat.denied_count += count
            elif outcome == "DEFER":
                stat.deferred_count += count
        return [stats[key] for key in sorted(stats)], int(total)

    # Sends and outcomes ---------------------------------------------------------------------

    async def record_send(self, profile_id: str, send: Send) -> None:
        async with self._engine.begin() as conn:
            exists = await conn.execute(
                select(sends.c.reservation_id).where(sends.c.reservation_id == send.reservation_id)
            )
            if exists.first() is None:
                await conn.execute(
                    sends.insert().values(
                        reservation_id=send.reservation_id,
                        profile_id=profile_id,
                        channel=send.channel,
                        campaign_id=send.campaign_id,
                        intent_key=send.intent_key,
                        variant=send.variant,
                        sent_time=send.sent_time,
                    )
                )

    async def sends_for(self, profile_id: str, since: datetime) -> list[Send]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(sends)
                .where(sends.c.profile_id == profile_id, sends.c.sent_time >= since)
                .order_by(sends.c.sent_time)
            )
            return [
                Send(
                    row.reservation_id,
                    row.channel,
                    row.campaign_id,
                    row.intent_key,
                    row.variant,
                    row.sent_time,
                )
                for row in rows
            ]

    async def record_outcome(
        self, profile_id: str, reservation_id: str, record: OutcomeRecord
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                outcomes.insert().values(
                    profile_id=profile_id,
                    reservation_id=reservation_id,
                    channel=record.channel,
                    campaign_id=record.campaign_id,
                    type=record.type,
                    event_name=record.event_name,
                    occur_time=record.occur_time,
                )
            )

    async def outcomes_for(self, profile_id: str, since: datetime) -> Sequence[OutcomeRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(outcomes)
                .where(outcomes.c.profile_id == profile_id, outcomes.c.occur_time >= since)
                .order_by(outcomes.c.occur_time)
            )
            return [
                OutcomeRecord(
                    row.type, row.event_name, row.channel, row.campaign_id, row.occur_time
                )
                for row in rows
            ]


_LOG_COLUMNS = (
    "decision_id",
    "profile_id",
    "decide_time",
    "policy_id",
    "outcome",
    "channel",
    "campaign_id",
    "payload",
)
_REASON_COLUMNS = ("decision_id", "seq", "policy_id", "rule_id", "code", "outcome", "decide_time")
_OUTCOMES = {value: name.removeprefix("OUTCOME_") for name, value in pb.Outcome.items()}
_REASON_CODES = {value: name.removeprefix("REASON_CODE_") for name, value in pb.ReasonCode.items()}


def _driver_value(value: object, sqlite: bool) -> object:
    """A value as the raw driver takes it (UtcDateTime's SQLite form: naive UTC text)."""
    if sqlite and isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _policy_not_found(policy_id: str) -> NotFoundError:
    return NotFoundError(
        f"policy {policy_id!r} not found", resource_type="policy", resource_name=policy_id
    )
