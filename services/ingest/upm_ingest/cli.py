"""`upm source create|list|revoke`: manage the sources (write keys) events come through.

The commands work on the database in UPM_DATABASE_URL directly, so they need no running
service; running collectors notice a revoked key within a few seconds (their key cache).
`upm source create "Web shop" --rate 500 --burst 2000` prints the new write key once: it is
stored only as a SHA-256 hash and cannot be shown again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from upm_common.db import create_engine
from upm_common.errors import UpmError
from upm_common.migrations import upgrade
from upm_common.settings import SettingsError, load_settings
from upm_ingest.server import default_limits
from upm_ingest.settings import IngestSettings
from upm_ingest.sources import SourceRegistry
from upm_ingest.store import SourceLimitOverrides, SourceRecord
from upm_ingest.store.sql import SqlSourceStore


def register(subparsers: Any) -> None:
    """Add `upm source ...` to the `upm` command line."""
    source = subparsers.add_parser(
        "source",
        help="create, list or revoke sources (write keys for ingestion)",
        description="Manage the sources whose write keys may send events (UPM_DATABASE_URL).",
    )
    commands = source.add_subparsers(dest="source_command", metavar="ACTION", required=True)
    create = commands.add_parser("create", help="register a source and print its write key once")
    create.add_argument("name", help="a human-readable name, e.g. 'Web shop (production)'")
    create.add_argument("--rate", type=float, default=0.0, help="events/s (default: service's)")
    create.add_argument("--burst", type=int, default=0, help="burst in events (default: service's)")
    create.add_argument("--max-event-bytes", type=int, default=0, help="largest event")
    create.add_argument("--max-batch-bytes", type=int, default=0, help="largest batch request")
    create.add_argument("--max-batch-events", type=int, default=0, help="most events per batch")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(handler=_run(_create))
    listing = commands.add_parser("list", help="list sources, oldest first")
    listing.add_argument("--all", action="store_true", help="include revoked sources")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_run(_list))
    revoke = commands.add_parser("revoke", help="revoke a source's write key")
    revoke.add_argument("source_id", help="the source id, e.g. src_0123...")
    revoke.set_defaults(handler=_run(_revoke))


def _describe(record: SourceRecord) -> dict[str, Any]:
    limits = record.limits
    return {
        "source_id": record.source_id,
        "display_name": record.display_name,
        "write_key_prefix": record.write_key_prefix,
        "created_time": record.created_time.isoformat(),
        "revoked_time": record.revoked_time.isoformat() if record.revoked_time else None,
        "limits": {
            "rate_per_second": limits.rate_per_second,
            "burst": limits.burst,
            "max_event_bytes": limits.max_event_bytes,
            "max_batch_bytes": limits.max_batch_bytes,
            "max_batch_events": limits.max_batch_events,
        },
    }


async def _create(registry: SourceRegistry, args: argparse.Namespace) -> None:
    record, write_key = await registry.create(
        args.name,
        SourceLimitOverrides(
            max_event_bytes=args.max_event_bytes,
            max_batch_bytes=args.max_batch_bytes,
            max_batch_events=args.max_batch_events,
            rate_per_second=args.rate,
            burst=args.burst,
        ),
    )
    if args.json:
        print(json.dumps({**_describe(record), "write_key": write_key}, indent=2))
        return
    print(f"created source {record.source_id} ({record.display_name})")
    print(f"write key: {write_key}")
    print("Keep it now: it is stored only as a hash and cannot be shown again.")


async def _list(registry: SourceRegistry, args: argparse.Namespace) -> None:
    records: list[SourceRecord] = []
    token = ""
    while True:
        page, token = await registry.list(page_size=1000, page_token=token, show_revoked=args.all)
        records.extend(page)
        if not token:
            break
    if args.json:
        print(json.dumps([_describe(r) for r in records], indent=2))
        return
    for record in records:
        state = f"revoked {record.revoked_time:%Y-%m-%d}" if record.revoked_time else "active"
        print(f"{record.source_id}  {record.write_key_prefix}…  {state:<18} {record.display_name}")


async def _revoke(registry: SourceRegistry, args: argparse.Namespace) -> None:
    record = await registry.revoke(args.source_id)
    print(f"revoked source {record.source_id} ({record.display_name})")


def _run(
    action: Callable[[SourceRegistry, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        async def call() -> None:
            settings = load_settings(IngestSettings)
            await upgrade(settings.database_url, "ingest")
            engine = create_engine(settings.database_url)
            try:
                await action(SourceRegistry(SqlSourceStore(engine), default_limits(settings)), args)
            finally:
                await engine.dispose()

        try:
            asyncio.run(call())
        except (UpmError, SettingsError) as exc:
            print(f"upm source: {exc}", file=sys.stderr)
            return 1
        return 0

    return handler
