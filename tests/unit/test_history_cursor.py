"""Cursors, query parameters and pagination of the history endpoint, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from handlers.model import Delivery
from worker.history.cursor import (
    CURSOR_DIGITS,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Entry,
    Page,
    Query,
    format_cursor,
    paginate,
    parse_cursor,
    parse_query,
    record_ids,
    stamped,
)
from worker.mongo.retention import interval_s as sweep_interval_s

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
OLD = NOW - timedelta(minutes=5)
SETTLE_S = 30.0


def entries(*seqs: int, at: datetime = OLD) -> list[Entry]:
    return [Entry(seq, "new-order", {"n": seq}, at) for seq in seqs]


@pytest.mark.parametrize(
    ("seq", "cursor"),
    [
        (0, "0" * 20),
        (1, "00000000000000000001"),
        (1234567, "00000000000001234567"),
        (2**63 - 1, "09223372036854775807"),
    ],
)
def test_cursor_is_fixed_width_decimal(seq: int, cursor: str) -> None:
    """A cursor is the number zero-padded to 20 digits, and parses back to it."""
    assert format_cursor(seq) == cursor
    assert len(cursor) == CURSOR_DIGITS
    assert parse_cursor(cursor) == seq


def test_string_order_is_number_order() -> None:
    """Sorting cursors as strings sorts them as numbers, across digit-count boundaries."""
    numbers = [1, 9, 10, 99, 100, 12345, 999_999_999, 1_000_000_000, 2**40]
    cursors = [format_cursor(n) for n in reversed(numbers)]
    assert [parse_cursor(c) for c in sorted(cursors)] == numbers


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "0000000000000000001",
        "000000000000000000001",
        "0000000000000000000x",
        " 00000000000000000001",
        "-0000000000000000001",
        "\uff10" * 20,  # fullwidth zeros: digits to str.isdigit, not to a cursor
    ],
)
def test_anything_but_a_cursor_is_refused(text: str) -> None:
    """Short, long, signed, padded or non-ASCII-digit strings are not cursors."""
    with pytest.raises(ValueError, match="not a cursor"):
        parse_cursor(text)


def test_negative_or_huge_numbers_have_no_cursor() -> None:
    """Numbers outside 0..10**20-1 cannot be rendered at a fixed width."""
    for seq in (-1, 10**20):
        with pytest.raises(ValueError, match="out of range"):
            format_cursor(seq)


@pytest.mark.parametrize(
    ("params", "query"),
    [
        ({}, Query(None, DEFAULT_LIMIT)),
        ({"after": ""}, Query(None, DEFAULT_LIMIT)),
        ({"after": format_cursor(7)}, Query(7, DEFAULT_LIMIT)),
        ({"limit": "1"}, Query(None, 1)),
        ({"limit": str(MAX_LIMIT), "after": format_cursor(0)}, Query(0, MAX_LIMIT)),
    ],
)
def test_query_parameters(params: dict[str, str], query: Query) -> None:
    """``after`` is optional, ``limit`` defaults to 50 and may be 1 to 500."""
    assert parse_query(params) == query


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": str(MAX_LIMIT + 1)},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": ""},
        {"limit": "1e2"},
        {"after": "7"},
        {"after": "latest"},
    ],
)
def test_invalid_query_parameters_are_refused(params: dict[str, str]) -> None:
    """A limit outside 1..500 or an ``after`` that is not a cursor is a ValueError (400)."""
    with pytest.raises(ValueError):
        parse_query(params)


@pytest.mark.parametrize(
    ("found", "after", "limit", "page"),
    [
        # Nothing new: caught up.
        ([], 5, 10, Page((), None)),
        # Fewer than the limit: all of them, no next.
        (entries(6, 7, 8), 5, 10, Page(tuple(entries(6, 7, 8)), None)),
        # Exactly the limit (read limit + 1 found no more): no next.
        (entries(6, 7), 5, 2, Page(tuple(entries(6, 7)), None)),
        # More than the limit: the first ``limit``, next is the last returned.
        (entries(6, 7, 8), 5, 2, Page(tuple(entries(6, 7)), 7)),
        # From the beginning.
        (entries(1, 2, 3), None, 2, Page(tuple(entries(1, 2)), 2)),
        # An old skipped number (a write that failed long ago) is read past.
        (entries(6, 9, 10), 5, 10, Page(tuple(entries(6, 9, 10)), None)),
    ],
)
def test_pagination(found: list[Entry], after: int | None, limit: int, page: Page) -> None:
    """A page holds at most ``limit`` entries; ``next`` is set only when more may exist."""
    assert paginate(found, after=after, limit=limit, now=NOW, settle_s=SETTLE_S) == page


def test_page_stops_before_a_young_gap() -> None:
    """A skipped number followed by a fresh entry may still be written: the page ends before it."""
    found = [*entries(6, 7), *entries(9, 10, at=NOW - timedelta(seconds=1))]
    page = paginate(found, after=5, limit=10, now=NOW, settle_s=SETTLE_S)
    assert page == Page(tuple(entries(6, 7)), 7)


def test_young_gap_right_after_the_cursor_returns_nothing_and_keeps_the_cursor() -> None:
    """With the gap right after ``after``, nothing is returned and ``next`` stays at ``after``."""
    found = entries(7, 8, at=NOW - timedelta(seconds=1))
    page = paginate(found, after=5, limit=10, now=NOW, settle_s=SETTLE_S)
    assert page == Page((), 5)


def test_paging_through_with_next_visits_every_entry_once() -> None:
    """Following ``next`` page by page returns every entry exactly once, in order."""
    stored = entries(*range(1, 24))
    seen: list[int] = []
    after: int | None = None
    for _ in range(10):
        found = [e for e in stored if after is None or e.seq > after][:6]
        page = paginate(found, after=after, limit=5, now=NOW, settle_s=SETTLE_S)
        seen += [e.seq for e in page.entries]
        if page.next is None:
            break
        after = page.next
    assert seen == list(range(1, 24))


def test_record_ids_are_event_and_channel() -> None:
    """History ids are ``{eventId}:{channel}``; a channel repeated in one event gets ``:n``."""
    ids = record_ids("e1", ["private-admin", "public", "private-admin"])
    assert ids == ["e1:private-admin", "e1:public", "e1:private-admin:1"]


def test_stamped_copies_a_shared_payload() -> None:
    """Stamping adds ``cursor`` to a copy: deliveries that share one payload keep it unchanged."""
    shared = {"orderId": "o1"}
    a, b = Delivery("private-admin", "new-order", shared), Delivery("public", "x", shared)
    assert stamped(a, 3).payload == {"orderId": "o1", "cursor": format_cursor(3)}
    assert stamped(b, 9).payload == {"orderId": "o1", "cursor": format_cursor(9)}
    assert shared == {"orderId": "o1"}


@pytest.mark.parametrize(
    ("retention_s", "interval_s"),
    [(7 * 24 * 3600, 3600.0), (3600, 360.0), (5, 1.0)],
)
def test_sweep_interval_follows_retention(retention_s: float, interval_s: float) -> None:
    """The sweep runs ten times per retention period, at most hourly, at least a second apart."""
    assert sweep_interval_s(timedelta(seconds=retention_s)) == interval_s
