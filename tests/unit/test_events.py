"""Reading a raw body before parsing: its lane and envelope id (``worker.events.peek``)."""

from __future__ import annotations

import orjson
import pytest

from worker.events import LANE, message_of, parse, peek


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"id": "e1", "type": "message.created", "data": {"conversationId": "c1"}}',
            ("c1", "e1"),
        ),
        (b'{"id": "e2", "type": "order.created", "data": {"conversationId": "c1"}}', (None, "e2")),
        (b'{"id": "e4", "type": "order.created", "data": {"orderId": "o1"}}', ("o1", "e4")),
        (b'{"id": 3, "type": "typing.started", "data": {"conversationId": "c2"}}', ("c2", None)),
        (b'{"id": "", "type": "user.registered"}', (None, None)),
        (b"[1]", (None, None)),
        (b"{oops", (None, None)),
    ],
)
def test_peek_reads_lane_and_id(raw: bytes, expected: tuple[str | None, str | None]) -> None:
    """The consumer's cheap look at a raw body: the conversation or order, and the envelope id."""
    assert peek(raw) == expected


def body(envelope: object) -> bytes:
    """A raw message body."""
    return orjson.dumps(envelope)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (body({"type": "message.created", "data": {"conversationId": "c1", "x": 1}}), "c1"),
        (body({"type": "typing.started", "data": {"conversationId": "c2"}}), "c2"),
        (body({"type": "typing.stopped", "data": {"conversationId": "c2"}}), "c2"),
        (body({"type": "order.created", "data": {"conversationId": "c1"}}), None),
        (body({"type": "order.created", "data": {"orderId": "o1", "items": []}}), "o1"),
        (body({"type": "order.status_changed", "data": {"orderId": "o2"}}), "o2"),
        (body({"type": "payment.received", "data": {"orderId": "o3"}}), "o3"),
        (body({"type": "payment.received", "data": {"orderId": ["o3"]}}), None),
        (body({"type": "user.registered", "data": {"orderId": "o1"}}), None),
        (body({"type": "message.created", "data": {}}), None),
        (body({"type": "message.created", "data": {"conversationId": 7}}), None),
        (body({"type": "message.created", "data": {"conversationId": ""}}), None),
        (body({"type": "message.created", "data": ["c1"]}), None),
        (body({"type": 3, "data": {"conversationId": "c1"}}), None),
        (body(["message.created"]), None),
        (b"not json", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_peek_lane(raw: bytes, expected: str | None) -> None:
    """The lane is the conversation of chat events, the order of order and payment events, and
    nothing for anything else or odd input."""
    assert peek(raw)[0] == expected


STATUS = {"orderId": "o9", "customerId": "u1", "shopId": "s1", "status": "Shipping"}
CHAT = {"conversationId": "c9", "userId": "u1", "userType": "user"}


@pytest.mark.parametrize(
    ("event_type", "data", "header"),
    [
        ("order.status_changed", STATUS, {LANE: "o9"}),
        ("typing.started", CHAT, {LANE: "c9"}),
        ("user.registered", {"userId": "u1"}, {}),
    ],
)
def test_message_of_sets_the_lane_header(
    event_type: str, data: dict[str, object], header: dict[str, str]
) -> None:
    """What ``python -m worker publish`` sends carries the event's lane in ``fanout-lane``."""
    envelope = {"id": "e1", "type": event_type, "occurredAt": "2026-01-01T00:00:00Z"}
    message = message_of(parse(body({**envelope, "data": data})))
    assert dict(message.headers or {}) == header
