"""Which events must keep publish order, and on which channels that order shows.

An event's *lane* is the key of the events that must reach subscribers in the order they
were published: a conversation's (``message.*`` and ``typing.*`` carry
``data.conversationId``). Events without a lane may be delivered in any order. The worker
orders numbering and hand-over to Soketi per lane (``worker.flow.lanes``), the publisher
puts the lane in a header so sharded workers keep a lane in one shard (``worker.events``),
and the trigger batcher never carries an *ordered channel* in two calls at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from handlers.channels import is_chat

#: Event type families whose ``data.conversationId`` names the lane.
LANED_FAMILIES: Final = ("message.", "typing.")


def lane_of(event_type: object, data: object) -> str | None:
    """The lane of an event given its type and data as they arrived (``None``: no lane).

    Forgiving on purpose: it runs on raw envelopes before validation, and whatever it cannot
    read simply gets no lane.
    """
    if not isinstance(event_type, str) or not event_type.startswith(LANED_FAMILIES):
        return None
    conversation = data.get("conversationId") if isinstance(data, Mapping) else None
    return conversation if isinstance(conversation, str) and conversation else None


def is_ordered_channel(channel: str) -> bool:
    """Whether ``channel`` receives the events of one lane, in the lane's order."""
    return is_chat(channel)
