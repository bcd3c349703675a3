"""The benchmark's event stream: the demo marketplace, padded, with a witness channel per event.

Every path runs the same list of :class:`BenchEvent`. The worker gets each envelope through
RabbitMQ and decides its own deliveries; the direct baselines send one Pusher event per
envelope to its *witness* channel. The witness is a channel the worker is sure to deliver
that envelope to and that the subscribers watch, so "every envelope reached a subscriber"
is checkable for every path by counting receipts per event id on that channel.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson

from devtools import marketplace
from devtools.marketplace import CUSTOMERS, PRODUCTS, SHOPS, conversation_id
from worker.ops.publish import complete, validate

EPHEMERAL = frozenset({"typing.started", "typing.stopped"})
_SHOP_OF_PRODUCT = {product.id: product.shop_id for product in PRODUCTS}
_ALERT_MAX_CHARS = 2_000  # schemas.fields.Text
_ADMIN_EVENTS = {
    "order.created": "new-order",
    "order.status_changed": "order-update",
    "payment.received": "payment-received",
    "user.registered": "new-user",
}


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One envelope of the stream, with where and under which name it must show up."""

    event_id: str
    type: str
    witness: str
    pusher_event: str
    envelope: dict[str, Any]


def watched_channels() -> list[str]:
    """Every fixed channel the demo stream delivers to (``private-order-*`` is per order)."""
    chats = [f"private-chat-{conversation_id(c.id, s.id)}" for c in CUSTOMERS for s in SHOPS]
    return [
        "private-admin",
        "public",
        *(f"private-seller-{shop.id}" for shop in SHOPS),
        *(f"private-user-{customer.id}" for customer in CUSTOMERS),
        *chats,
    ]


def witness_of(envelope: dict[str, Any]) -> tuple[str, str]:
    """The watched channel and Pusher event name an envelope is certain to reach."""
    kind, data = envelope["type"], envelope["data"]
    if kind in _ADMIN_EVENTS:
        return "private-admin", _ADMIN_EVENTS[kind]
    if kind == "message.created":
        return f"private-chat-{data['conversationId']}", "new-message"
    if kind in EPHEMERAL:
        name = "typing-start" if kind == "typing.started" else "typing-stop"
        return f"private-chat-{data['conversationId']}", name
    if kind == "product.stock_low":
        return f"private-seller-{_SHOP_OF_PRODUCT[data['productId']]}", "stock-low"
    if kind == "system.alert":
        channel = "public" if data.get("audience") == "public" else "private-admin"
        return channel, "system-alert"
    raise ValueError(f"the benchmark has no witness channel for {kind}")


def build(
    count: int, *, payload_bytes: int, seed: int = 7, ephemeral: bool = False
) -> list[BenchEvent]:
    """The first ``count`` envelopes of the demo marketplace, validated as the worker will."""
    events: list[BenchEvent] = []
    for raw in marketplace.events(random.Random(seed)):
        if len(events) >= count:
            break
        if raw["type"] in EPHEMERAL and not ephemeral:
            continue
        envelope = complete(_padded(raw, payload_bytes))
        envelope["source"] = "bench"
        validate(envelope)  # raises on anything the worker would dead-letter
        channel, name = witness_of(envelope)
        events.append(BenchEvent(envelope["id"], envelope["type"], channel, name, envelope))
    return events


def renamed(events: list[BenchEvent]) -> list[BenchEvent]:
    """The same stream with fresh event ids, so a second run is not suppressed as duplicate."""
    fresh = []
    for event in events:
        envelope = dict(event.envelope, id=uuid.uuid4().hex)
        fresh.append(
            BenchEvent(envelope["id"], event.type, event.witness, event.pusher_event, envelope)
        )
    return fresh


def stamp(envelope: dict[str, Any]) -> float:
    """Set ``occurredAt`` to now (millisecond ISO, as the backend does); return now in seconds."""
    now = time.time()
    envelope["occurredAt"] = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return now


def amqp_message(envelope: dict[str, Any]) -> aio_pika.Message:
    """The AMQP message the backend would publish (as ``worker.events.message_of``)."""
    return aio_pika.Message(
        body=orjson.dumps(envelope),
        content_type="application/json",
        message_id=envelope["id"],
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def direct_payload(event: BenchEvent) -> dict[str, Any]:
    """What a direct trigger sends: the event's data plus ``eventId`` and ``timestamp`` (ms)."""
    occurred = datetime.fromisoformat(event.envelope["occurredAt"])
    return {
        **event.envelope["data"],
        "eventId": event.event_id,
        "timestamp": int(occurred.timestamp() * 1000),
    }


def _padded(envelope: dict[str, Any], payload_bytes: int) -> dict[str, Any]:
    """Lengthen a chat message's content or an alert's message until ``data`` is ~that size."""
    field_name = {"message.created": "content", "system.alert": "message"}.get(envelope["type"])
    if field_name is None:
        return envelope
    data = dict(envelope["data"])
    need = payload_bytes - len(orjson.dumps(data))
    if need <= 0:
        return envelope
    original = data[field_name]
    text = original + "".join(_filler(" " + original, need))
    if field_name == "message":
        text = text[:_ALERT_MAX_CHARS]
    data[field_name] = text
    return {**envelope, "data": data}


def _filler(unit: str, need_bytes: int) -> Iterator[str]:
    """Characters of ``unit`` repeated until they add at least ``need_bytes`` UTF-8 bytes."""
    added = 0
    while added < need_bytes:
        for char in unit:
            yield char
            added += len(char.encode())
            if added >= need_bytes:
                return
