"""Domain views to protobuf messages."""

from __future__ import annotations

from upm.common.v1 import consent_pb2
from upm.profile.v1 import profile_service_pb2 as pb
from upm_common.protoconv import dict_to_struct, python_to_value
from upm_profile.effects import EVENT_TYPE_VALUES, as_number, public_event_id
from upm_profile.identifiers import to_proto
from upm_profile.store.base import (
    EventView,
    IdentityGraphView,
    ProfileView,
)

PURPOSE_TO_PROTO = {
    "marketing": consent_pb2.CONSENT_PURPOSE_MARKETING,
    "transactional": consent_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
}
PURPOSE_FROM_PROTO = {v: k for k, v in PURPOSE_TO_PROTO.items()}
STATUS_TO_PROTO = {
    "subscribed": consent_pb2.CONSENT_STATUS_SUBSCRIBED,
    "unsubscribed": consent_pb2.CONSENT_STATUS_UNSUBSCRIBED,
    "unknown": consent_pb2.CONSENT_STATUS_UNKNOWN,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}
RULE_TO_PROTO = {
    "identify": pb.LINK_RULE_IDENTIFY,
    "alias": pb.LINK_RULE_ALIAS,
    "same_event": pb.LINK_RULE_SAME_EVENT,
    "manual": pb.LINK_RULE_MANUAL,
}


def profile_to_proto(view: ProfileView) -> pb.Profile:
    message = pb.Profile(
        id=view.id,
        identifiers=[to_proto(k) for k in view.identifiers],
        timezone=view.timezone or "",
        merged_profile_ids=sorted(view.merged_ids),
    )
    message.create_time.FromDatetime(view.created_time)
    message.update_time.FromDatetime(view.updated_time)
    for t in view.traits:
        trait = message.traits.add(
            name=t.name, source=t.source, event_id=public_event_id(t.event_id)
        )
        trait.value.CopyFrom(python_to_value(t.value))
        trait.update_time.FromDatetime(t.updated_time)
    for c in view.consents:
        consent = message.consents.add(
            channel=c.channel,
            purpose=PURPOSE_TO_PROTO.get(c.purpose, consent_pb2.CONSENT_PURPOSE_UNSPECIFIED),
            status=STATUS_TO_PROTO.get(c.status, consent_pb2.CONSENT_STATUS_UNSPECIFIED),
            source=c.source,
        )
        consent.update_time.FromDatetime(c.updated_time)
    aggregates = message.aggregates
    aggregates.purchase_count = view.purchase_count
    aggregates.total_revenue = view.total_revenue
    for count in view.counts:
        item = aggregates.events.add(name=count.name, count=count.count)
        item.first_time.FromDatetime(count.first_time)
        item.last_time.FromDatetime(count.last_time)
    if view.counts:
        aggregates.first_seen_time.FromDatetime(min(c.first_time for c in view.counts))
        aggregates.last_seen_time.FromDatetime(max(c.last_time for c in view.counts))
    return message


def event_to_proto(view: EventView) -> pb.ProfileEvent:
    message = pb.ProfileEvent(
        id=public_event_id(view.id),
        type=EVENT_TYPE_VALUES.get(view.type, 0),  # type: ignore[arg-type]
        name=view.name,
        properties=dict_to_struct(view.properties),
        context=dict_to_struct(view.context),
    )
    message.event_time.FromDatetime(view.event_time)
    message.receive_time.FromDatetime(view.received_time)
    return message


def purchase_to_proto(view: EventView) -> pb.Purchase:
    props = view.properties
    message = pb.Purchase(
        order_id=str(props.get("order_id") or props.get("orderId") or ""),
        event_id=public_event_id(view.id),
        revenue=as_number(props.get("revenue", props.get("total"))),
        currency=str(props.get("currency") or ""),
    )
    message.purchase_time.FromDatetime(view.event_time)
    for product in props.get("products") or []:
        if isinstance(product, dict):
            message.products.add(
                product_id=str(product.get("product_id") or ""),
                sku=str(product.get("sku") or ""),
                name=str(product.get("name") or ""),
                category=str(product.get("category") or ""),
                price=as_number(product.get("price")),
                quantity=int(as_number(product.get("quantity") or 1)),
            )
    return message


def graph_to_proto(view: IdentityGraphView) -> pb.GetIdentityGraphResponse:
    message = pb.GetIdentityGraphResponse(
        profile_id=view.profile_id, identifiers=[to_proto(k) for k in view.identifiers]
    )
    for e in view.edges:
        edge = message.edges.add(
            rule=RULE_TO_PROTO.get(e.rule, pb.LINK_RULE_UNSPECIFIED),
            event_id=public_event_id(e.event_id),
            source=e.source,
        )
        getattr(edge, "from").CopyFrom(to_proto(e.a))
        edge.to.CopyFrom(to_proto(e.b))
        edge.create_time.FromDatetime(e.created_time)
    for m in view.merges:
        record = message.merges.add(
            id=m.id,
            unmerge=m.kind == "unmerge",
            winner_profile_id=m.winner_id,
            loser_profile_id=m.loser_id,
            rule=RULE_TO_PROTO.get(m.rule, pb.LINK_RULE_UNSPECIFIED),
            event_id=public_event_id(m.event_id),
            reason=m.reason,
            identifiers=[to_proto(k) for k in m.identifiers],
        )
        record.create_time.FromDatetime(m.created_time)
    for c in view.conflicts:
        conflict = message.conflicts.add(
            identifier=to_proto(c.identifier),
            other_profile_id=c.other_profile_id or "",
            rule=c.rule,
            event_id=public_event_id(c.event_id),
        )
        conflict.create_time.FromDatetime(c.created_time)
    return message
