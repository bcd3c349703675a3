"""History cursors and pages, pure: numbers as cursors, request parameters, one page.

Cursors are the numbers as fixed-width decimal strings, so comparing two strings compares
the numbers; clients treat them as opaque. Numbers increase per channel but may skip: a
number taken by a write that then failed is never used. A page stops before a skipped
number whose successor is younger than ``SETTLE_S`` (the write may still be in flight).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from handlers.model import Delivery, Payload

CURSOR_DIGITS: Final = 20
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: How long a skipped number may still be a write in flight (a few MongoDB round trips).
SETTLE_S: Final = 30.0

_CURSOR = re.compile(rf"[0-9]{{{CURSOR_DIGITS}}}", re.ASCII)
_LIMIT = re.compile(r"[0-9]{1,4}", re.ASCII)


def format_cursor(seq: int) -> str:
    """The cursor of number ``seq``: zero-padded so string order is number order."""
    if not 0 <= seq < 10**CURSOR_DIGITS:
        raise ValueError(f"cursor number out of range: {seq}")
    return f"{seq:0{CURSOR_DIGITS}d}"


def parse_cursor(text: str) -> int:
    """The number behind a cursor this module formatted; ``ValueError`` for anything else."""
    if _CURSOR.fullmatch(text) is None:
        raise ValueError("after is not a cursor")
    return int(text)


@dataclass(frozen=True, slots=True)
class Query:
    """A history request's parameters: entries after number ``after`` (all when ``None``)."""

    after: int | None
    limit: int


def parse_query(params: Mapping[str, str]) -> Query:
    """Read ``after`` and ``limit`` (default 50, at most 500); ``ValueError`` when invalid."""
    after_text = params.get("after")
    after = None if after_text in (None, "") else parse_cursor(after_text)
    limit_text = params.get("limit")
    if limit_text is None:
        return Query(after, DEFAULT_LIMIT)
    if _LIMIT.fullmatch(limit_text) is None or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return Query(after, int(limit_text))


@dataclass(frozen=True, slots=True)
class Entry:
    """One recorded delivery: its number on the channel, Pusher event, payload and time."""

    seq: int
    event: str
    payload: Payload
    at: datetime


@dataclass(frozen=True, slots=True)
class Page:
    """What one read answers: entries oldest first, and the number to continue after."""

    entries: tuple[Entry, ...]
    next: int | None


def paginate(
    found: Sequence[Entry], *, after: int | None, limit: int, now: datetime, settle_s: float
) -> Page:
    """The first ``limit`` of ``found`` (read with ``limit + 1``), stopping at an unsettled gap.

    ``next`` is the last number returned when more may exist (more was read, or a gap may
    still fill), else ``None``; with nothing returned but a gap pending it is ``after``.
    """
    taken: list[Entry] = []
    previous = after
    for entry in found[:limit]:
        skipped = previous is not None and entry.seq != previous + 1
        if skipped and now - entry.at < timedelta(seconds=settle_s):
            last = taken[-1].seq if taken else after
            return Page(tuple(taken), last)
        taken.append(entry)
        previous = entry.seq
    more = len(found) > limit
    return Page(tuple(taken), taken[-1].seq if more and taken else None)


def entry_of(doc: Mapping[str, Any]) -> Entry:
    """An ``Entry`` from a ``fanout_history`` document."""
    at = doc["at"]
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return Entry(seq=int(doc["seq"]), event=str(doc["event"]), payload=doc["payload"], at=at)


def record_ids(event_id: str, channels: Sequence[str]) -> list[str]:
    """The history ``_id`` of each delivery: ``{eventId}:{channel}`` (``:n`` on repeats)."""
    seen: dict[str, int] = {}
    ids = []
    for channel in channels:
        repeat = seen[channel] = seen.get(channel, -1) + 1
        ids.append(f"{event_id}:{channel}" + (f":{repeat}" if repeat else ""))
    return ids


def stamped(delivery: Delivery, seq: int) -> Delivery:
    """``delivery`` with a copy of its payload carrying ``cursor`` (payloads may be shared)."""
    return replace(delivery, payload={**delivery.payload, "cursor": format_cursor(seq)})
