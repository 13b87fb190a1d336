"""`upm profile get|export|erase`: read, export or erase a person over gRPC.

The commands talk to the profile service at UPM_PROFILE_ADDRESS (default 127.0.0.1:50052).
A person is named by a profile id or by an identifier written `<type>:<value>`, where type is
user_id, email, phone, anonymous_id, device_id or external:<namespace>, e.g.
`upm profile get email:ann@example.org`, `upm profile export 3f2a... --out ann.json`,
`upm profile erase user_id:42 --reason "ticket 1234" --yes`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from upm.common.v1 import identity_pb2
from upm.profile.v1 import profile_service_pb2 as pb
from upm.profile.v1 import profile_service_pb2_grpc as pb_grpc
from upm_common.cli import grpc_command

TIMEOUT_SECONDS = 30.0
_PROFILE_ID = re.compile(r"^[0-9a-f]{32}$")
_TYPES = {
    "user_id": identity_pb2.IDENTIFIER_TYPE_USER_ID,
    "email": identity_pb2.IDENTIFIER_TYPE_EMAIL,
    "phone": identity_pb2.IDENTIFIER_TYPE_PHONE,
    "anonymous_id": identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID,
    "device_id": identity_pb2.IDENTIFIER_TYPE_DEVICE_ID,
}


def parse_person(text: str) -> tuple[str, identity_pb2.Identifier | None]:
    """A profile id, or an identifier `<type>:<value>` (`external:<namespace>:<value>`)."""
    if _PROFILE_ID.match(text):
        return text, None
    kind, sep, value = text.partition(":")
    if kind == "external":
        namespace, sep, value = value.partition(":")
        if sep and namespace and value:
            return "", identity_pb2.Identifier(
                type=identity_pb2.IDENTIFIER_TYPE_EXTERNAL, namespace=namespace, value=value
            )
    elif sep and kind in _TYPES and value:
        return "", identity_pb2.Identifier(type=_TYPES[kind], value=value)
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a profile id nor <type>:<value> "
        "(user_id, email, phone, anonymous_id, device_id, external:<namespace>)"
    )


def register(subparsers: Any) -> None:
    """Add `upm profile ...` to the `upm` command line."""
    profile = subparsers.add_parser(
        "profile",
        help="get, export or erase a person's profile",
        description="Read, export or erase a person (profile service at UPM_PROFILE_ADDRESS).",
    )
    commands = profile.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    get = commands.add_parser("get", help="print a profile as JSON")
    get.add_argument("person", type=parse_person, help="profile id or <type>:<value>")
    get.set_defaults(handler=_run(_get))
    export = commands.add_parser("export", help="export everything held about a person (JSON)")
    export.add_argument("person", type=parse_person, help="profile id or <type>:<value>")
    export.add_argument("--out", type=Path, help="write to this file instead of stdout")
    export.add_argument("--actor", default="cli", help="who asks (kept in the audit log)")
    export.set_defaults(handler=_run(_export))
    erase = commands.add_parser(
        "erase", help="erase a person and suppress their identifiers (irreversible)"
    )
    erase.add_argument("person", type=parse_person, help="profile id or <type>:<value>")
    erase.add_argument("--reason", required=True, help="why, e.g. a ticket (kept in the audit log)")
    erase.add_argument("--actor", default="cli", help="who asks (kept in the audit log)")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    erase.set_defaults(handler=_confirm_first(_run(_erase)))


def _run(
    action: Callable[[pb_grpc.ProfileServiceStub, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    return grpc_command("profile", lambda s: s.profile_address, pb_grpc.ProfileServiceStub, action)


def _confirm_first(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def confirmed(args: argparse.Namespace) -> int:
        if not args.yes:
            answer = input("Erase this person and everything held about them? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("upm profile: not erased", file=sys.stderr)
                return 2
        return handler(args)

    return confirmed


async def _get(stub: pb_grpc.ProfileServiceStub, args: argparse.Namespace) -> None:
    profile_id, identifier = args.person
    response = await stub.GetProfile(
        pb.GetProfileRequest(profile_id=profile_id, identifier=identifier),
        timeout=TIMEOUT_SECONDS,
    )
    print(json_format.MessageToJson(response.profile, indent=2))


async def _export(stub: pb_grpc.ProfileServiceStub, args: argparse.Namespace) -> None:
    profile_id, identifier = args.person
    response = await stub.ExportPerson(
        pb.ExportPersonRequest(profile_id=profile_id, identifier=identifier, actor=args.actor),
        timeout=TIMEOUT_SECONDS,
    )
    text = json.dumps(json.loads(response.document), indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"exported profile {response.profile_id} to {args.out}")
    else:
        print(text)


async def _erase(stub: pb_grpc.ProfileServiceStub, args: argparse.Namespace) -> None:
    profile_id, identifier = args.person
    response = await stub.ErasePerson(
        pb.ErasePersonRequest(
            profile_id=profile_id, identifier=identifier, reason=args.reason, actor=args.actor
        ),
        timeout=TIMEOUT_SECONDS,
    )
    print(
        f"erased profile {response.profile_id}: {len(response.identifiers)} identifiers"
        f" suppressed, {response.erased_event_count} events deleted"
    )
