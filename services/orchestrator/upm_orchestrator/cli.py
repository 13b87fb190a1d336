"""`upm policy create|list|show|delete`: manage fatigue policies over gRPC.

The commands talk to the orchestrator at UPM_ORCHESTRATOR_ADDRESS (default 127.0.0.1:50054).
Policies are read and printed as the contract's JSON form (protobuf JSON mapping), e.g.:

    {"policyId": "default", "rules": [{"ruleId": "email-daily",
      "frequencyCap": {"count": 2, "windowKind": "WINDOW_KIND_CALENDAR_DAY",
                       "scope": {"kind": "SCOPE_KIND_CHANNEL", "value": "email"}}}]}
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from upm.orchestrator.v1 import orchestrator_service_pb2 as pb
from upm.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from upm_common.cli import grpc_command

TIMEOUT_SECONDS = 10.0


def register(subparsers: Any) -> None:
    """Add `upm policy ...` to the `upm` command line."""
    policy = subparsers.add_parser(
        "policy",
        help="create, list, show or delete fatigue policies",
        description="Manage the orchestrator's fatigue policies (at UPM_ORCHESTRATOR_ADDRESS).",
    )
    commands = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    create = commands.add_parser("create", help="create a policy from a JSON file (or - for stdin)")
    create.add_argument("file", help="the policy as JSON (protobuf JSON mapping)")
    create.add_argument(
        "--update", action="store_true", help="replace the policy if it exists (new version)"
    )
    create.set_defaults(handler=_run(_create))
    listing = commands.add_parser("list", help="list every policy")
    listing.set_defaults(handler=_run(_list))
    show = commands.add_parser("show", help="print one policy as JSON")
    show.add_argument("policy_id")
    show.add_argument("--version", type=int, default=0, help="an earlier version")
    show.set_defaults(handler=_run(_show))
    delete = commands.add_parser("delete", help="delete a policy")
    delete.add_argument("policy_id")
    delete.set_defaults(handler=_run(_delete))


def _run(
    action: Callable[[pb_grpc.OrchestratorServiceStub, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    return grpc_command(
        "policy",
        lambda s: s.orchestrator_address,
        pb_grpc.OrchestratorServiceStub,
        action,
        usage_errors=(OSError, json_format.ParseError),
    )


def _print(policy: pb.Policy) -> None:
    print(json_format.MessageToJson(policy, indent=2))


async def _create(stub: pb_grpc.OrchestratorServiceStub, args: argparse.Namespace) -> None:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()  # noqa: ASYNC240
    policy = json_format.Parse(text, pb.Policy())
    if args.update:
        updated = await stub.UpdatePolicy(
            pb.UpdatePolicyRequest(policy=policy), timeout=TIMEOUT_SECONDS
        )
        _print(updated.policy)
        return
    created = await stub.CreatePolicy(
        pb.CreatePolicyRequest(policy=policy), timeout=TIMEOUT_SECONDS
    )
    _print(created.policy)


async def _list(stub: pb_grpc.OrchestratorServiceStub, args: argparse.Namespace) -> None:
    del args
    token = ""
    print(f"{'POLICY':<32} {'VERSION':>7} {'RULES':>5}  UPDATED")
    while True:
        page = await stub.ListPolicies(
            pb.ListPoliciesRequest(page_size=200, page_token=token), timeout=TIMEOUT_SECONDS
        )
        for policy in page.policies:
            updated = policy.update_time.ToDatetime().isoformat(timespec="seconds")
            print(f"{policy.policy_id:<32} {policy.version:>7} {len(policy.rules):>5}  {updated}Z")
        token = page.next_page_token
        if not token:
            return


async def _show(stub: pb_grpc.OrchestratorServiceStub, args: argparse.Namespace) -> None:
    response = await stub.GetPolicy(
        pb.GetPolicyRequest(policy_id=args.policy_id, version=args.version),
        timeout=TIMEOUT_SECONDS,
    )
    _print(response.policy)


async def _delete(stub: pb_grpc.OrchestratorServiceStub, args: argparse.Namespace) -> None:
    await stub.DeletePolicy(
        pb.DeletePolicyRequest(policy_id=args.policy_id), timeout=TIMEOUT_SECONDS
    )
    print(f"deleted policy {args.policy_id}")
