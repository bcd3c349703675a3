"""Pure parts of the DLQ toolkit: message IDs, selection filters, ages."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from worker.ops.dlq import DeadLetter, Selection, message_key, parse_age


def _letter(**changes: object) -> DeadLetter:
    base: dict[str, object] = {
        "id": "e1",
        "reason": "invalid_event",
        "type": "order.created",
        "error": "x",
        "attempts": 1,
        "first_failed_at": "2026-11-29T05:00:00+00:00",
        "routing_key": "order.created",
        "headers": {},
        "body": b"{}",
    }
    base.update(changes)
    return DeadLetter(**base)  # type: ignore[arg-type]


def test_message_key_prefers_message_id_then_body_hash() -> None:
    """A message without message_id is named by the first 12 hex digits of SHA-256(body)."""
    assert message_key("abc", b"body") == "abc"
    assert message_key(None, b"body") == hashlib.sha256(b"body").hexdigest()[:12]


@pytest.mark.parametrize(
    ("selection", "selected"),
    [
        (Selection(everything=True), True),
        (Selection(ids=("e1",)), True),
        (Selection(ids=("e2",)), False),
        (Selection(reason="invalid_event"), True),
        (Selection(reason="unknown_type"), False),
        (Selection(event_type="order.created", reason="invalid_event"), True),
        (Selection(event_type="user.registered"), False),
        (Selection(min_age_s=3600), True),
        (Selection(min_age_s=3 * 3600), False),
    ],
)
def test_selection_filters(selection: Selection, selected: bool) -> None:
    """Filters combine with AND; age counts from fanout-first-failed-at."""
    now = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)
    assert selection.matches(_letter(), now) is selected


def test_an_empty_selection_is_refused() -> None:
    """Replay and purge refuse to run with no filter and no --all."""
    assert Selection().is_empty
    assert not Selection(everything=True).is_empty


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400)]
)
def test_parse_age(text: str, seconds: float) -> None:
    """Ages are seconds or a number with s, m, h or d."""
    assert parse_age(text) == seconds
