"""`upm segment preview|create|list|show|count|members`: segments over gRPC.

The commands talk to the segment service at UPM_SEGMENT_ADDRESS (default 127.0.0.1:50053), e.g.
`upm segment preview 'trait(newsletter) = true and consent(sms, marketing) = subscribed'`,
`upm segment create vip 'sum("Order Completed", revenue).within(90d) >= 500' --name VIPs`,
`upm segment count vip`, `upm segment members vip --limit 20`.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from upm.segment.v1 import segment_service_pb2 as pb
from upm.segment.v1 import segment_service_pb2_grpc as pb_grpc
from upm_common.cli import grpc_command

TIMEOUT_SECONDS = 60.0


def register(subparsers: Any) -> None:
    """Add `upm segment ...` to the `upm` command line."""
    segment = subparsers.add_parser(
        "segment",
        help="preview, create, list, show, count segments and list members",
        description="Segments (segment service at UPM_SEGMENT_ADDRESS).",
    )
    commands = segment.add_subparsers(dest="segment_command", metavar="ACTION", required=True)
    preview = commands.add_parser("preview", help="count an unsaved definition, with a sample")
    preview.add_argument("text", help="the definition in the text form")
    preview.add_argument("--sample", type=int, default=10, help="how many member ids to show")
    preview.set_defaults(handler=_run(_preview))
    create = commands.add_parser("create", help="save a segment")
    create.add_argument("id", help="the segment id (lower-case letters, digits, - and _)")
    create.add_argument("text", help="the definition in the text form")
    create.add_argument("--name", default="", help="a display name")
    create.add_argument("--description", default="", help="a longer description")
    create.set_defaults(handler=_run(_create))
    listing = commands.add_parser("list", help="list saved segments")
    listing.set_defaults(handler=_run(_list))
    show = commands.add_parser("show", help="print one segment")
    show.add_argument("id", help="the segment id")
    show.set_defaults(handler=_run(_show))
    count = commands.add_parser("count", help="count a segment's members now")
    count.add_argument("id", help="the segment id")
    count.set_defaults(handler=_run(_count))
    members = commands.add_parser("members", help="list a segment's member profile ids")
    members.add_argument("id", help="the segment id")
    members.add_argument("--limit", type=int, default=0, help="stop after this many (0: all)")
    members.add_argument("--page-size", type=int, default=1000, help="ids fetched per call")
    members.set_defaults(handler=_run(_members))


def _run(
    action: Callable[[pb_grpc.SegmentServiceStub, argparse.Namespace], Awaitable[None]],
) -> Callable[[argparse.Namespace], int]:
    return grpc_command("segment", lambda s: s.segment_address, pb_grpc.SegmentServiceStub, action)


def _print_segment(segment: pb.Segment) -> None:
    print(f"id:          {segment.id}")
    print(f"name:        {segment.name}")
    if segment.description:
        print(f"description: {segment.description}")
    print(f"version:     {segment.version}")
    print(f"updated:     {segment.update_time.ToJsonString()}")
    print(f"definition:  {segment.text}")


async def _preview(stub: pb_grpc.SegmentServiceStub, args: argparse.Namespace) -> None:
    response = await stub.PreviewSegment(
        pb.PreviewSegmentRequest(text=args.text, sample_size=args.sample),
        timeout=TIMEOUT_SECONDS,
    )
    print(f"count: {response.count}")
    print(f"definition: {response.text}")
    if response.sample_profile_ids:
        print("sample:")
        for profile_id in response.sample_profile_ids:
            print(f"  {profile_id}")


async def _create(stub: pb_grpc.SegmentServiceStub, args: argparse.Namespace) -> None:
    response = await stub.CreateSegment(
        pb.CreateSegmentRequest(
            segment_id=args.id,
            segment=pb.Segment(name=args.name, description=args.description, text=args.text),
        ),
        timeout=TIMEOUT_SECONDS,
    )
    _print_segment(response.segment)


async def _list(stub: pb_grpc.SegmentServiceStub, args: argparse.Namespace) -> None:
    token = ""
    while True:
        response = await stub.ListSegments(
            pb.ListSegmentsRequest(page_size=200, page_token=token), timeout=TIMEOUT_SECONDS
        )
        for segment in response.segments:
            print(f"{segment.id}\t{segment.name}\t{segment.text}")
        token = response.next_page_token
        if not token:
            return


async def _show(stub: pb_grpc.SegmentServiceStub, args: argparse.Namespace) -> None:
    response = await stub.GetSegment(
        pb.GetSegmentRequest(segment_id=args.id), timeout=TIMEOUT_SECONDS
    )
    _print_segment(response.segment)


async def _count(stub: pb_grpc.SegmentServiceStub, args: argparse.Namespace) -> None:
    response = await stub.CountSegment(
        pb.CountSegmentRequest(segment_id=args.id), timeout=TIMEOUT_SECONDS
    )
    print(response.count)


async def _members(stub: pb_grpc.SegmentServiceStub, args: argparse.Namespace) -> None:
    token = ""
    printed = 0
    while True:
        response = await stub.ListSegmentMembers(
            pb.ListSegmentMembersRequest(
                segment_id=args.id, page_size=args.page_size, page_token=token
            ),
            timeout=TIMEOUT_SECONDS,
        )
        for profile_id in response.profile_ids:
            if args.limit and printed >= args.limit:
                return
            print(profile_id)
            printed += 1
        token = response.next_page_token
        if not token:
            return
