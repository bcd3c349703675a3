"""Reading a raw body before parsing: its lane and envelope id (``worker.events.peek``)."""

from __future__ import annotations

import orjson
import pytest

from worker.events import peek


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"id": "e1", "type": "message.created", "data": {"conversationId": "c1"}}',
            ("c1", "e1"),
        ),
        (b'{"id": "e2", "type": "order.created", "data": {"conversationId": "c1"}}', (None, "e2")),
        (b'{"id": 3, "type": "typing.started", "data": {"conversationId": "c2"}}', ("c2", None)),
        (b'{"id": "", "type": "user.registered"}', (None, None)),
        (b"[1]", (None, None)),
        (b"{oops", (None, None)),
    ],
)
def test_peek_reads_lane_and_id(raw: bytes, expected: tuple[str | None, str | None]) -> None:
    """The consumer's cheap look at a raw body: the conversation and the envelope id."""
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
    """The lane is the conversation of chat events and nothing for anything else or odd input."""
    assert peek(raw)[0] == expected
