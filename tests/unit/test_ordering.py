"""Which events keep publish order (``handlers.ordering``): lanes, and the ordered channels."""

from __future__ import annotations

from typing import Any

import pytest

from handlers import ordering, route
from schemas import EVENT_TYPES, Event
from tests.unit.test_handlers import CASES


def _laned(case: Any) -> bool:
    event = case.values[0]
    return ordering.lane_of(event.type, event.data.model_dump(by_alias=True)) is not None


@pytest.mark.parametrize(("event", "lookups", "expected"), [c for c in CASES if _laned(c)])
def test_every_laned_event_reaches_its_lanes_own_channel(
    event: Event, lookups: object, expected: Any
) -> None:
    """A chat's or an order's event always goes to its lane's channel, an ordered one, so the
    batcher keeps the lane's events in order on every other channel they share that call
    with."""
    data = event.data.model_dump(by_alias=True)
    own = ordering.lane_channel(event.type, data)
    assert own is not None and ordering.is_ordered_channel(own)
    assert own in [d.channel for d in route(event).decide(event, lookups)]


def test_every_laned_family_has_a_case() -> None:
    """The check above covers every catalogue type that has a lane."""
    laned = {t for t in EVENT_TYPES for lane in ordering.LANES if t.startswith(lane.families)}
    assert {c.values[0].type for c in CASES if _laned(c)} == laned


@pytest.mark.parametrize(
    ("event_type", "data", "lane", "channel"),
    [
        ("message.created", {"conversationId": "c1", "orderId": "o1"}, "c1", "private-chat-c1"),
        ("typing.started", {"conversationId": "c2"}, "c2", "private-chat-c2"),
        ("order.created", {"orderId": "o1", "conversationId": "c1"}, "o1", "private-order-o1"),
        ("order.status_changed", {"orderId": "o2"}, "o2", "private-order-o2"),
        ("payment.received", {"orderId": "o3"}, "o3", "private-order-o3"),
        ("user.registered", {"orderId": "o1", "conversationId": "c1"}, None, None),
        ("order.created", {"orderId": ""}, None, None),
        ("payment.received", {"orderId": 7}, None, None),
        ("order.created", ["o1"], None, None),
        (None, {"orderId": "o1"}, None, None),
    ],
)
def test_lane_of_reads_the_conversation_or_the_order(
    event_type: object, data: object, lane: str | None, channel: str | None
) -> None:
    """Chat events are laned by conversation, order and payment events by order, others not."""
    assert ordering.lane_of(event_type, data) == lane
    assert ordering.lane_channel(event_type, data) == channel


@pytest.mark.parametrize(
    ("channel", "ordered"),
    [
        ("private-chat-c1", True),
        ("private-order-o1", True),
        ("private-user-u1", False),
        ("private-seller-s1", False),
        ("private-admin", False),
        ("public", False),
    ],
)
def test_only_a_lanes_own_channel_is_ordered(channel: str, ordered: bool) -> None:
    """Personal and admin channels carry many lanes' events, so they are not ordered."""
    assert ordering.is_ordered_channel(channel) is ordered
