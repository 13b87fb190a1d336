"""The event's JSON parts as the store keeps them: the fast Struct reading must give exactly
what the protobuf library's own JSON conversion gives, for any JSON value."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from upm.common.v1 import event_pb2
from upm_profile.effects import effects_of_event
from upm_profile.identifiers import BlockList

_scalars = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _json, max_size=6))
def test_properties_read_as_the_protobuf_json_conversion_reads_them(data: dict[str, Any]) -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Seen", user_id="u1")
    event.properties.update(data)
    expected = json_format.MessageToDict(event.properties)
    assert effects_of_event(event, BlockList()).properties == expected


def test_zero_empty_and_false_values_are_kept() -> None:
    event = event_pb2.Event(type=event_pb2.EVENT_TYPE_TRACK, event="Seen", user_id="u1")
    event.properties.update({"n": 0, "s": "", "b": False, "z": None, "l": [], "o": {}})
    properties = effects_of_event(event, BlockList()).properties
    assert properties == {"n": 0.0, "s": "", "b": False, "z": None, "l": [], "o": {}}
