"""Operator sub-commands that call a service over gRPC, shared by every service's `cli.py`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from upm_common.clients import create_channel
from upm_common.settings import CommonSettings, load_settings

Stub = TypeVar("Stub")


def grpc_command(
    command: str,
    address: Callable[[CommonSettings], str],
    stub: Callable[[grpc.aio.Channel], Stub],
    action: Callable[[Stub, argparse.Namespace], Awaitable[None]],
    *,
    usage_errors: tuple[type[Exception], ...] = (OSError,),
) -> Callable[[argparse.Namespace], int]:
    """An argparse handler that runs `action` with a stub on a channel to the service.

    Exit codes: 0 done, 1 the service refused (its status is printed), 2 a local problem such
    as an unreadable file (`usage_errors`).
    """

    def handler(args: argparse.Namespace) -> int:
        async def call() -> None:
            settings = load_settings(CommonSettings)
            channel = create_channel(address(settings), settings)
            try:
                await action(stub(channel), args)
            finally:
                await channel.close()

        try:
            asyncio.run(call())
        except grpc.aio.AioRpcError as exc:
            print(f"upm {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except usage_errors as exc:
            print(f"upm {command}: {exc}", file=sys.stderr)
            return 2
        return 0

    return handler
