"""ProfileService over gRPC with its worker: the event path, reads, errors naming the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.profile.conftest import make_event
from upm.common.v1 import consent_pb2, event_pb2, identity_pb2
from upm.profile.v1 import profile_service_pb2 as pb
from upm.profile.v1 import profile_service_pb2_grpc as pb_grpc
from upm_common.eventlog import EVENTS, LogRecord
from upm_common.migrations import upgrade
from upm_common.testing import serve_app
from upm_profile.cli import parse_person
from upm_profile.server import build_profile
from upm_profile.settings import ProfileSettings
from upm_profile.worker import GROUP

EMAIL = identity_pb2.IDENTIFIER_TYPE_EMAIL
USER_ID = identity_pb2.IDENTIFIER_TYPE_USER_ID


@pytest.fixture
async def served(db_url: str) -> AsyncIterator[tuple[pb_grpc.ProfileServiceStub, object]]:
    await upgrade(db_url, "eventlog")
    await upgrade(db_url, "profile")
    settings = ProfileSettings(database_url=db_url, grpc_port=0, metrics_port=0)
    runtime = await build_profile(settings)
    await runtime.event_log.ensure_group(EVENTS, GROUP)
    async with serve_app(settings, runtime.service_app) as app:
        yield pb_grpc.ProfileServiceStub(app.channel), runtime.event_log


async def _wait_for(stub: pb_grpc.ProfileServiceStub, request: pb.GetProfileRequest) -> pb.Profile:
    for _ in range(200):
        try:
            return (await stub.GetProfile(request, timeout=5)).profile
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        await asyncio.sleep(0.05)
    raise AssertionError("the profile never appeared")


async def test_events_from_the_log_become_a_profile(served) -> None:  # type: ignore[no-untyped-def]
    stub, log = served
    sent = [
        make_event("page", anonymous_id="svc-a", name="Home"),
        make_event(
            "identify",
            user_id="svc-u",
            anonymous_id="svc-a",
            traits={"email": "Svc@Corp.io"},
            minutes=1,
        ),
        make_event(
            "track",
            user_id="svc-u",
            event="Order Completed",
            minutes=2,
            properties={
                "order_id": "o-1",
                "revenue": 42.5,
                "currency": "EUR",
                "products": [{"sku": "sku-1", "price": 42.5, "quantity": 1}],
            },
        ),
    ]
    await log.append(EVENTS, [LogRecord(key="svc-a", payload=e.SerializeToString()) for e in sent])
    watch = stub.WatchProfileChanges(pb.WatchProfileChangesRequest())
    profile = await _wait_for(
        stub,
        pb.GetProfileRequest(identifier=identity_pb2.Identifier(type=EMAIL, value=" SVC@corp.io")),
    )
    for _ in range(100):
        if profile.aggregates.purchase_count == 1:
            break
        await asyncio.sleep(0.05)
        profile = (
            await stub.GetProfile(pb.GetProfileRequest(profile_id=profile.id), timeout=5)
        ).profile
    assert {(i.type, i.value) for i in profile.identifiers} == {
        (USER_ID, "svc-u"),
        (EMAIL, "svc@corp.io"),
        (identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID, "svc-a"),
    }
    assert profile.aggregates.total_revenue == 42.5
    email_trait = next(t for t in profile.traits if t.name == "email")
    assert email_trait.event_id.endswith(sent[1].message_id)

    listed = await stub.ListProfileEvents(
        pb.ListProfileEventsRequest(profile_id=profile.id, page_size=2), timeout=5
    )
    assert [e.name for e in listed.events] == ["Order Completed", ""]
    rest = await stub.ListProfileEvents(
        pb.ListProfileEventsRequest(
            profile_id=profile.id, page_size=2, page_token=listed.next_page_token
        ),
        timeout=5,
    )
    assert [e.type for e in rest.events] == [event_pb2.EVENT_TYPE_PAGE]
    assert not rest.next_page_token
    only_pages = await stub.ListProfileEvents(
        pb.ListProfileEventsRequest(profile_id=profile.id, types=[event_pb2.EVENT_TYPE_PAGE]),
        timeout=5,
    )
    assert [e.name for e in only_pages.events] == ["Home"]
    purchases = await stub.ListPurchases(pb.ListPurchasesRequest(profile_id=profile.id), timeout=5)
    assert [(p.order_id, p.revenue, p.currency) for p in purchases.purchases] == [
        ("o-1", 42.5, "EUR")
    ]
    assert purchases.purchases[0].products[0].sku == "sku-1"

    consent = await stub.UpdateConsent(
        pb.UpdateConsentRequest(
            profile_id=profile.id,
            channel="sms",
            purpose=consent_pb2.CONSENT_PURPOSE_MARKETING,
            status=consent_pb2.CONSENT_STATUS_SUBSCRIBED,
        ),
        timeout=5,
    )
    assert [(c.channel, c.status) for c in consent.profile.consents] == [
        ("sms", consent_pb2.CONSENT_STATUS_SUBSCRIBED)
    ]
    graph = await stub.GetIdentityGraph(
        pb.GetIdentityGraphRequest(profile_id=profile.id), timeout=5
    )
    assert graph.edges and graph.edges[0].rule == pb.LINK_RULE_IDENTIFY

    exported = await stub.ExportPerson(pb.ExportPersonRequest(profile_id=profile.id), timeout=5)
    assert len(json.loads(exported.document)["events"]) == 3

    seen = []
    async for item in watch:
        seen.append(item.change.type)
        if pb.PROFILE_CHANGE_TYPE_CONSENT_CHANGED in seen:
            break
    watch.cancel()
    assert pb.PROFILE_CHANGE_TYPE_EVENT_APPLIED in seen

    erased = await stub.ErasePerson(
        pb.ErasePersonRequest(
            identifier=identity_pb2.Identifier(type=USER_ID, value="svc-u"),
            reason="test",
            actor="t",
        ),
        timeout=5,
    )
    assert erased.profile_id == profile.id
    assert len(erased.identifiers) == 3
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetProfile(pb.GetProfileRequest(profile_id=profile.id), timeout=5)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_errors_name_the_field(served) -> None:  # type: ignore[no-untyped-def]
    stub, _ = served
    cases = [
        (pb.GetProfileRequest(profile_id="nope"), grpc.StatusCode.INVALID_ARGUMENT, "profile_id"),
        (pb.GetProfileRequest(), grpc.StatusCode.INVALID_ARGUMENT, "profile_id"),
        (pb.GetProfileRequest(profile_id="0" * 32), grpc.StatusCode.NOT_FOUND, "profile_id"),
        (
            pb.GetProfileRequest(
                identifier=identity_pb2.Identifier(type=EMAIL, value="not-an-email")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "identifier.value",
        ),
        (
            pb.GetProfileRequest(identifier=identity_pb2.Identifier(value="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "identifier.type",
        ),
        (
            pb.GetProfileRequest(identifier=identity_pb2.Identifier(type=USER_ID, value="nobody")),
            grpc.StatusCode.NOT_FOUND,
            "identifier",
        ),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetProfile(request, timeout=5)
        assert caught.value.code() == code, request
        assert field in (caught.value.details() or ""), (request, caught.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListProfileEvents(
            pb.ListProfileEventsRequest(profile_id="0" * 32, page_size=-1), timeout=5
        )
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpdateConsent(
            pb.UpdateConsentRequest(
                identifier=identity_pb2.Identifier(type=USER_ID, value="u"),
                channel="SMS!",
                purpose=consent_pb2.CONSENT_PURPOSE_MARKETING,
                status=consent_pb2.CONSENT_STATUS_SUBSCRIBED,
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "channel" in (caught.value.details() or "")


def test_cli_parses_people() -> None:
    assert parse_person("a" * 32) == ("a" * 32, None)
    _, identifier = parse_person("external:crm_id:C-1")
    assert identifier is not None
    assert (identifier.namespace, identifier.value) == ("crm_id", "C-1")
    with pytest.raises(Exception, match="neither"):
        parse_person("fax:123")


async def test_merge_unmerge_batch_and_redirect_over_grpc(served) -> None:  # type: ignore[no-untyped-def]
    stub, log = served
    sent = [
        make_event("identify", anonymous_id="g-a", traits={"email": "g1@corp.io"}),
        make_event("identify", anonymous_id="g-b", traits={"email": "g2@corp.io"}, minutes=1),
    ]
    await log.append(EVENTS, [LogRecord(key="g", payload=e.SerializeToString()) for e in sent])
    first = await _wait_for(
        stub,
        pb.GetProfileRequest(identifier=identity_pb2.Identifier(type=EMAIL, value="g1@corp.io")),
    )
    second = await _wait_for(
        stub,
        pb.GetProfileRequest(identifier=identity_pb2.Identifier(type=EMAIL, value="g2@corp.io")),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.MergeProfiles(
            pb.MergeProfilesRequest(target_profile_id=first.id, source_profile_id=second.id),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reason" in (caught.value.details() or "")
    merged = await stub.MergeProfiles(
        pb.MergeProfilesRequest(
            target_profile_id=first.id, source_profile_id=second.id, reason="same person"
        ),
        timeout=5,
    )
    assert merged.profile.merged_profile_ids == [second.id]
    redirected = await stub.GetProfile(pb.GetProfileRequest(profile_id=second.id), timeout=5)
    assert (redirected.profile.id, redirected.redirected_from) == (first.id, second.id)
    batch = await stub.BatchGetProfiles(
        pb.BatchGetProfilesRequest(
            profile_ids=[second.id, "f" * 32],
            identifiers=[identity_pb2.Identifier(type=EMAIL, value="g2@corp.io")],
        ),
        timeout=5,
    )
    assert [(r.found, r.profile.id) for r in batch.results] == [
        (True, first.id),
        (False, ""),
        (True, first.id),
    ]
    graph = await stub.GetIdentityGraph(pb.GetIdentityGraphRequest(profile_id=first.id), timeout=5)
    assert [m.rule for m in graph.merges] == [pb.LINK_RULE_MANUAL]
    split = await stub.UnmergeIdentifier(
        pb.UnmergeIdentifierRequest(
            identifier=identity_pb2.Identifier(type=EMAIL, value="g2@corp.io"), reason="wrong"
        ),
        timeout=5,
    )
    assert split.profile.id == first.id
    assert {(i.type, i.value) for i in split.profile.identifiers} == {
        (EMAIL, "g1@corp.io"),
        (identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID, "g-a"),
    }
    # The split identifier stands alone (listed first); the rest of the profile merged away
    # earlier gets its old id back.
    assert [[i.value for i in p.identifiers] for p in split.split_profiles] == [
        ["g2@corp.io"],
        ["g-b"],
    ]
    assert split.split_profiles[1].id == second.id


async def test_batch_get_tells_erased_people_from_unknown_ones(served) -> None:  # type: ignore[no-untyped-def]
    stub, log = served
    sent = [
        make_event("identify", anonymous_id="x-a", traits={"email": "x1@corp.io"}),
        make_event("identify", anonymous_id="x-b", traits={"email": "x2@corp.io"}, minutes=1),
        make_event("identify", anonymous_id="x-c", traits={"email": "x3@corp.io"}, minutes=2),
    ]
    await log.append(EVENTS, [LogRecord(key="x", payload=e.SerializeToString()) for e in sent])
    people = [
        await _wait_for(
            stub,
            pb.GetProfileRequest(identifier=identity_pb2.Identifier(type=EMAIL, value=email)),
        )
        for email in ("x1@corp.io", "x2@corp.io", "x3@corp.io")
    ]
    erased, merged_away, kept = people
    await stub.MergeProfiles(
        pb.MergeProfilesRequest(
            target_profile_id=erased.id, source_profile_id=merged_away.id, reason="same person"
        ),
        timeout=5,
    )
    await stub.ErasePerson(pb.ErasePersonRequest(profile_id=erased.id, reason="t-9"), timeout=5)

    batch = await stub.BatchGetProfiles(
        pb.BatchGetProfilesRequest(
            profile_ids=[erased.id, merged_away.id, "f" * 32, kept.id, "not-an-id"],
            identifiers=[
                identity_pb2.Identifier(type=EMAIL, value="x2@corp.io"),
                identity_pb2.Identifier(type=EMAIL, value="nobody@corp.io"),
            ],
        ),
        timeout=5,
    )
    assert [(r.found, r.erased, r.profile.id) for r in batch.results] == [
        (False, True, ""),
        (False, True, ""),
        (False, False, ""),
        (True, False, kept.id),
        (False, False, ""),
        (False, True, ""),
        (False, False, ""),
    ]
