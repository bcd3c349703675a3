"""An event on the wire: a message body parsed into a catalogue event, and back.

The same rules serve the worker (``parse``, ``peek``), the operator tools and the presence
webhook (``message_of``: what the backend publishes, contract section 2).
"""

from __future__ import annotations

import aio_pika
import orjson

from handlers.ordering import lane_of
from schemas import Event, EventRejected, parse_event
from worker.errors import InvalidMessage

#: The header a publisher sets to an event's lane; sharded mode hashes on it.
LANE = "fanout-lane"


def parse(body: bytes) -> Event:
    """Validate a message body into one catalogue event, or raise ``InvalidMessage``."""
    try:
        return parse_event(body)
    except EventRejected as error:
        raise InvalidMessage(str(error), reason=error.reason) from error


def peek(body: bytes) -> tuple[str | None, str | None]:
    """The lane and envelope id of a raw message, each ``None`` if unreadable.

    Cheap and forgiving on purpose: it runs before parsing, and whatever it cannot read
    simply gets no lane or id; ``parse`` decides whether the message is valid.
    """
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(envelope, dict):
        return None, None
    event_id = envelope.get("id")
    event_id = event_id if isinstance(event_id, str) and event_id else None
    return lane_of(envelope.get("type"), envelope.get("data")), event_id


def message_of(event: Event) -> aio_pika.Message:
    """The AMQP message the backend publishes for ``event`` (contract section 2)."""
    body = orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))
    lane = peek(body)[0]
    return aio_pika.Message(
        body=body,
        # Sharded workers hash on it to keep a lane in one shard (and so in order).
        headers={LANE: lane} if lane is not None else None,
        content_type="application/json",
        message_id=event.id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
