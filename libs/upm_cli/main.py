"""`upm`: start services, apply migrations, and reach each service's operator commands."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence

from upm_cli.services import COMMAND_MODULES, SERVICES, ServiceEntry
from upm_common.logging import configure_logging
from upm_common.migrations import upgrade_all
from upm_common.server import RunningServer, run_apps, run_event_loop, tune_garbage_collector
from upm_common.settings import CommonSettings, SettingsError, load_settings

DESCRIPTION = """\
upm — universal profile management.

  upm up                 every service on localhost (SQLite by default, no servers needed)
  upm serve SERVICE      one service: ingest, profile, segment or orchestrator
  upm worker SERVICE     one service's background workers only (with a health endpoint)
  upm migrate            create or upgrade every table in UPM_DATABASE_URL

Configuration comes from UPM_* environment variables (see README.md).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upm", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="start every service and worker on localhost and print each endpoint",
        description="Apply migrations, then run ingest, profile, segment and orchestrator in "
        "one process, each on its default port (50051-50054; the HTTP collector on 8088). "
        "Ctrl-C drains and stops them.",
    )
    up.add_argument("--no-migrate", action="store_true", help="do not apply migrations first")
    up.add_argument(
        "--base-port",
        type=int,
        default=50051,
        help="gRPC port of ingest; profile, segment and orchestrator take the next three",
    )
    up.add_argument("--http-port", type=int, help="port of the HTTP collector (default 8088)")

    serve = commands.add_parser(
        "serve",
        help="start one service (its gRPC server, and its workers unless UPM_RUN_WORKERS=false)",
        description="Start one service on UPM_GRPC_HOST:UPM_GRPC_PORT and run until SIGTERM, "
        "then drain: health turns NOT_SERVING and in-flight RPCs get UPM_DRAIN_SECONDS.",
    )
    serve.add_argument("service", choices=sorted(SERVICES))

    worker = commands.add_parser(
        "worker",
        help="run one service's background workers, with a gRPC health endpoint for probes",
        description="Run the service's workers (profile: applies events; segment: keeps "
        "memberships current) without serving its RPCs. The health service answers on "
        "UPM_GRPC_PORT so orchestrators can probe the process.",
    )
    worker.add_argument("service", choices=sorted(s for s, e in SERVICES.items() if e.has_workers))

    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade every service's tables in UPM_DATABASE_URL",
        description="Apply every component's Alembic migrations up to head. Safe to run again.",
    )
    migrate.add_argument("--database-url", help="instead of UPM_DATABASE_URL")

    for name, module_path in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_path)
        except ImportError:
            continue
        module.register(commands)
        del name
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        common = load_settings(CommonSettings)
        if args.command in {"up", "serve", "worker", "migrate"}:
            configure_logging(common.log_format, common.log_level)
        if args.command == "up":
            return run_event_loop(
                _up(
                    common,
                    migrate=not args.no_migrate,
                    base_port=args.base_port,
                    http_port=args.http_port,
                )
            )
        if args.command == "serve":
            return run_event_loop(_serve(SERVICES[args.service], workers_only=False))
        if args.command == "worker":
            return run_event_loop(_serve(SERVICES[args.service], workers_only=True))
        if args.command == "migrate":
            url = args.database_url or common.database_url
            done = asyncio.run(upgrade_all(url))
            print(f"migrated {', '.join(done)} in {_safe_url(url)}")
            return 0
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.error(f"{args.command}: missing sub-command")
        result: int = handler(args)
        return result
    except SettingsError as exc:
        print(f"upm: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _serve(entry: ServiceEntry, *, workers_only: bool) -> int:
    settings = load_settings(entry.settings_class())
    if not workers_only and settings.database_url.startswith("sqlite"):
        await upgrade_all(settings.database_url)
    app = await entry.build_app()(settings)
    tune_garbage_collector()
    await run_apps(
        settings,
        [(settings, app)],
        with_workers=workers_only or settings.run_workers,
        serve_rpcs=not workers_only,
    )
    return 0


async def _up(
    common: CommonSettings, *, migrate: bool, base_port: int, http_port: int | None
) -> int:
    if migrate:
        await upgrade_all(common.database_url)
    # One process runs every service: each gets its own port, and each knows where its peers are.
    ports = {name: base_port + offset for offset, name in enumerate(SERVICES)}
    peers = {
        "profile_address": f"127.0.0.1:{ports['profile']}",
        "segment_address": f"127.0.0.1:{ports['segment']}",
        "orchestrator_address": f"127.0.0.1:{ports['orchestrator']}",
    }
    apps = []
    for name, entry in SERVICES.items():
        update: dict[str, object] = {"grpc_port": ports[name], "metrics_port": 0, **peers}
        if name == "ingest" and http_port is not None:
            update["http_port"] = http_port
        settings = load_settings(entry.settings_class()).model_copy(update=update)
        apps.append((settings, await entry.build_app()(settings)))

    def announce(servers: list[RunningServer]) -> None:
        print(f"upm is up — database {_safe_url(common.database_url)}")
        for (settings, _app), server, name in zip(apps, servers, SERVICES, strict=True):
            line = f"  {name:<13} grpc {settings.grpc_host}:{server.port}"
            http_port = getattr(settings, "http_port", None)
            if http_port:
                line += f"   http http://{settings.grpc_host}:{http_port}"
            print(line)
        print("Ctrl-C stops every service.", flush=True)

    tune_garbage_collector()
    await run_apps(common, apps, on_started=announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
