"""Which events must keep publish order, and on which channels that order shows.

An event's *lane* is the key of the events that must reach subscribers in the order they
were published: a conversation's (``message.*`` and ``typing.*`` carry
``data.conversationId``) and an order's (``order.*`` and ``payment.*`` carry
``data.orderId``). Events without a lane may be delivered in any order. The worker orders
numbering and hand-over to Soketi per lane (``worker.flow.lanes``), the publisher puts the
lane in a header so sharded workers keep a lane in one shard (``worker.events``), and the
trigger batcher never carries an *ordered channel* in two calls at once.

Every lane has a channel of its own (``private-chat-{id}``, ``private-order-{id}``) that
every event of the lane is delivered to, and those are the ordered channels. That is what
keeps a lane's order on the channels it shares with other lanes, too: a shop's or a
customer's personal channel and ``private-admin`` receive the events of many orders and
conversations, so they cannot be ordered channels (every call carrying ``private-admin``
would wait for the one before), but each of their deliveries travels in one call with the
same event's delivery to its lane's own channel (a message's deliveries share one call when
they fit in one), and that channel keeps the lane's events in separate calls, one after the
other, in lane order. So a personal channel shows each lane's events in publish order,
interleaved with other lanes' in any order. (The history cursors follow the same rule:
numbering is ordered per lane.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from handlers.channels import CHAT_PREFIX, ORDER_PREFIX


@dataclass(frozen=True, slots=True)
class Lane:
    """A kind of lane: the event families in it, the data field naming it, its channel."""

    families: tuple[str, ...]
    key: str
    channel_prefix: str


#: Every kind of lane; an event type belongs to at most one.
LANES: Final = (
    Lane(("message.", "typing."), "conversationId", CHAT_PREFIX),
    Lane(("order.", "payment."), "orderId", ORDER_PREFIX),
)

#: The prefixes of the ordered channels: each lane's own channel.
ORDERED_PREFIXES: Final = tuple(lane.channel_prefix for lane in LANES)


def _lane_kind(event_type: object) -> Lane | None:
    if not isinstance(event_type, str):
        return None
    for lane in LANES:
        if event_type.startswith(lane.families):
            return lane
    return None


def lane_of(event_type: object, data: object) -> str | None:
    """The lane of an event given its type and data as they arrived (``None``: no lane).

    Forgiving on purpose: it runs on raw envelopes before validation, and whatever it cannot
    read simply gets no lane. The lane is the id itself (a conversation's or an order's), as
    publishers put it in the ``fanout-lane`` header; a conversation and an order with the
    same id would only share a lane, which costs a little concurrency, never order.
    """
    lane = _lane_kind(event_type)
    if lane is None:
        return None
    key = data.get(lane.key) if isinstance(data, Mapping) else None
    return key if isinstance(key, str) and key else None


def lane_channel(event_type: object, data: object) -> str | None:
    """The lane's own channel, which every event of the lane is delivered to (``None``: no
    lane)."""
    lane, key = _lane_kind(event_type), lane_of(event_type, data)
    return None if lane is None or key is None else f"{lane.channel_prefix}{key}"


def is_ordered_channel(channel: str) -> bool:
    """Whether ``channel`` is a lane's own channel, whose events keep the lane's order."""
    return channel.startswith(ORDERED_PREFIXES)
