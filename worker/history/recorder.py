"""Channel history: a cursor on every non-ephemeral delivery, and the catch-up endpoint.

Recording. Between ``decide`` and ``deliver`` the pipeline passes an event's deliveries to
``History.stamp``. Each (event, channel) gets the next number of that channel, handed out
in-process in lane order (a conversation's cursors follow publish order), is stored in
``fanout_history`` under ``{eventId}:{channel}`` (one ``insert_many`` for all the messages
processed at that moment; the unique ``(channel, seq)`` index refuses a number another
worker took, and the entry is renumbered), and goes to Soketi with its cursor in the
payload. A retried event finds its entries by id and reuses their cursors: it is never
numbered twice. Typing events are not recorded.

Cursors are the numbers as fixed-width decimal strings, so comparing two strings compares
the numbers; clients treat them as opaque. Numbers increase per channel but may skip: a
number taken by a write that then failed is never used.

Reading. ``GET /channels/{channel}/events?after=CURSOR&limit=N`` answers the entries after
``after``, oldest first, and ``next`` (the last cursor returned) while more may exist. Two
rules keep a reader from skipping an event without being told:

- A page stops before a skipped number whose successor is younger than ``SETTLE_S``: the
  skipped number may belong to a write still in flight, which becomes visible later.
- When the entries right after ``after`` are gone and ``after`` itself is no longer kept,
  the cursor is older than the retention: 410 ``{"error": "cursor_expired", "oldest": …}``.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from handlers.model import Delivery, Payload
from schemas import EPHEMERAL_TYPES, Event
from worker.errors import FanoutError, StoreUnavailable
from worker.flow.lanes import NUMBER, UNORDERED, Turn
from worker.metrics import Metrics
from worker.mongo.coalesce import Coalescer
from worker.mongo.gateway import HistoryLog, MongoGateway
from worker.web import auth

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.web import BrowserContext, Task

log = structlog.get_logger("fanout")

PATH: Final = "/channels/{channel}/events"
PUBLIC: Final = "public"
CURSOR_DIGITS: Final = 20
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: How long a skipped number may still be a write in flight (a few MongoDB round trips).
SETTLE_S: Final = 30.0
SWEEP_INTERVAL_S: Final = 3600.0

_CURSOR = re.compile(rf"[0-9]{{{CURSOR_DIGITS}}}", re.ASCII)
_LIMIT = re.compile(r"[0-9]{1,4}", re.ASCII)
_NO_STORE: Final = {"Cache-Control": "no-store"}
#: The metric's outcome for a refused read (503, auth or MongoDB down, is not counted).
_REFUSALS: Final = {401: "unauthenticated", 403: "forbidden"}

Document = dict[str, Any]
#: Answers ``None`` when the request may read the channel, else the refusal to send.
Authorize = Callable[[web.Request, str], Awaitable[web.Response | None]]


# -- cursors and pages (pure) ----------------------------------------------------------


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


def entry_of(doc: Document) -> Entry:
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


# -- recording ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class History:
    """Numbers and records the deliveries of non-ephemeral events (``Deps.history``).

    Numbers are handed out in-process, from the last number this worker knows per channel
    (its floor in MongoDB the first time a channel is seen), so numbering costs no round
    trip. The insert is the arbiter: when another worker took a number first, the unique
    ``(channel, seq)`` index refuses the entry, and it is numbered again after the channel's
    newest entry. Lookups, inserts and floor updates of concurrently processed messages are
    merged (``Coalescer``): one ``$in`` lookup, one ``insert_many``, one bulk ``$max``.
    """

    def __init__(
        self,
        log: HistoryLog,
        *,
        clock: Callable[[], datetime] = _utcnow,
        known_channels: int = 100_000,
    ) -> None:
        self._log = log
        self._clock = clock
        self._recorded: Coalescer[str, int] = Coalescer(self._bulk_recorded)
        self._floors: Coalescer[str, int] = Coalescer(self._bulk_floors)
        self._written: Coalescer[str, bool] = Coalescer(self._bulk_insert)
        # Documents waiting for the next bulk insert, by id (Coalescer passes only keys).
        self._staged: dict[str, Document] = {}
        # The last number handed out (or known taken) per channel, least recently used first.
        self._last: OrderedDict[str, int] = OrderedDict()
        self._known_channels = known_channels
        self._raised: dict[str, int] = {}
        self._raising: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        """Create the numbering and retention indexes (idempotent)."""
        await self._log.ensure_indexes()

    async def stamp(
        self,
        event: Event,
        deliveries: Sequence[Delivery],
        turn: Turn = UNORDERED,
        maybe_recorded: bool = True,
    ) -> list[Delivery]:
        """``deliveries`` with their cursors, recorded once per event and channel.

        Numbers are taken in ``turn`` order (its ``NUMBER`` step); the write that follows
        runs concurrently with other messages'.
        """
        if event.type in EPHEMERAL_TYPES or not deliveries:
            await turn.wait(NUMBER)
            turn.passed(NUMBER)
            return list(deliveries)
        ids = record_ids(event.id, [d.channel for d in deliveries])
        seqs = await self._recorded.get(ids) if maybe_recorded else {}
        fresh = [(key, d) for key, d in zip(ids, deliveries, strict=True) if key not in seqs]
        await turn.wait(NUMBER)
        numbers = await self._take([d.channel for _, d in fresh]) if fresh else []
        turn.passed(NUMBER)
        done = await self._record(event.id, fresh, numbers) if fresh else {}
        return [
            done[key] if key in done else stamped(d, seqs[key])
            for key, d in zip(ids, deliveries, strict=True)
        ]

    async def _take(self, channels: Sequence[str]) -> list[int]:
        """The next number of each of ``channels`` (in order; a channel may repeat)."""
        while cold := {c for c in channels if c not in self._last}:
            floors = await self._floors.get(cold)
            for channel in cold:
                self._last.setdefault(channel, floors.get(channel, 0))
        numbers = []
        for channel in channels:
            number = self._last[channel] + 1
            self._last[channel] = number
            self._last.move_to_end(channel)
            numbers.append(number)
        while len(self._last) > self._known_channels:
            self._last.popitem(last=False)
        return numbers

    async def _record(
        self, event_id: str, fresh: list[tuple[str, Delivery]], numbers: list[int]
    ) -> dict[str, Delivery]:
        """Write ``fresh`` under ``numbers``; the deliveries with the cursors they ended up with."""
        done: dict[str, Delivery] = {}
        for _ in range(NUMBERING_ATTEMPTS):
            at = self._clock()
            staged = {
                key: stamped(d, number) for (key, d), number in zip(fresh, numbers, strict=True)
            }
            docs: dict[str, Document] = {
                key: {
                    "_id": key,
                    "channel": d.channel,
                    "event": d.event,
                    "payload": d.payload,
                    "eventId": event_id,
                    "cursor": d.payload["cursor"],
                    "seq": number,
                    "at": at,
                }
                for (key, d), number in zip(staged.items(), numbers, strict=True)
            }
            self._staged.update(docs)
            try:
                written = await self._written.get(list(docs))
            finally:
                for key in docs:
                    self._staged.pop(key, None)
            done.update({key: d for key, d in staged.items() if written.get(key)})
            self._raise_floors({doc["channel"]: doc["seq"] for doc in docs.values()})
            refused = [key for key in docs if not written.get(key)]
            if not refused:
                return done
            # Another attempt or worker recorded the same event first: use its numbers.
            existing = await self._log.find(refused)
            originals = dict(fresh)
            done.update(
                {key: stamped(originals[key], int(doc["seq"])) for key, doc in existing.items()}
            )
            # The rest lost their number to another worker: renumber after the newest entry.
            fresh = [(key, d) for key, d in fresh if key in refused and key not in existing]
            if not fresh:
                return done
            for channel in sorted({d.channel for _, d in fresh}):
                newest = await self._log.newest(channel)
                self._last[channel] = max(self._last.get(channel, 0), newest)
            numbers = await self._take([d.channel for _, d in fresh])
        raise StoreUnavailable("history numbers kept colliding with another worker's; will retry")

    def _raise_floors(self, highest: Mapping[str, int]) -> None:
        """Raise the channels' floors in the background, at most once per ``FLOOR_INTERVAL_S``.

        A floor only matters once a channel's entries have all expired, or to a worker that
        meets the channel for the first time; one lost with a crash is repaired by the next
        refused insert (the entries themselves are the truth).
        """
        for channel, seq in highest.items():
            self._raised[channel] = max(seq, self._raised.get(channel, 0))
        if self._raising is None or self._raising.done():
            self._raising = asyncio.create_task(self._raise_pending())

    async def _raise_pending(self) -> None:
        while self._raised:
            await self._write_floors()
            await asyncio.sleep(FLOOR_INTERVAL_S)  # a rate limit, not a synchronisation

    async def _write_floors(self) -> None:
        batch, self._raised = self._raised, {}
        try:
            await self._log.raise_floors(batch)
        except FanoutError as error:
            log.warning("fanout.history_floor_failed", channels=len(batch), error=str(error))

    async def close(self) -> None:
        """Stop the background floor writer and write what it still holds (best effort)."""
        if self._raising is not None:
            self._raising.cancel()
            await asyncio.gather(self._raising, return_exceptions=True)
        if self._raised:
            await self._write_floors()

    async def _bulk_recorded(self, ids: list[str]) -> Mapping[str, int]:
        return {key: int(doc["seq"]) for key, doc in (await self._log.find(ids)).items()}

    async def _bulk_floors(self, channels: list[str]) -> Mapping[str, int]:
        return await self._log.floors(channels)

    async def _bulk_insert(self, ids: list[str]) -> Mapping[str, bool]:
        docs = [self._staged[key] for key in ids if key in self._staged]
        refused = await self._log.insert(docs)
        return {str(doc["_id"]): doc["_id"] not in refused for doc in docs}


#: How often one event's entries are renumbered after losing numbers to other workers.
NUMBERING_ATTEMPTS: Final = 5
#: The least time between two background writes of channel floors.
FLOOR_INTERVAL_S: Final = 1.0


def recorder(gateway: MongoGateway, settings: Settings) -> History:
    """The ``History`` the worker's pipeline uses."""
    return History(
        HistoryLog(
            gateway, settings.history_retention_h * 3600, ttl_index=settings.mongodb_ttl_indexes
        )
    )


# -- reading -----------------------------------------------------------------------------


class HistoryView:
    """``GET /channels/{channel}/events``: what a client missed, authorized like subscribing."""

    def __init__(
        self,
        log: HistoryLog,
        metrics: Metrics,
        authorize: Authorize,
        *,
        clock: Callable[[], datetime] = _utcnow,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._log = log
        self._metrics = metrics
        self._authorize = authorize
        self._clock = clock
        self._settle_s = settle_s

    def _count(self, outcome: str) -> None:
        self._metrics.history_requests.labels(outcome=outcome).inc()

    async def get(self, request: web.Request) -> web.Response:
        """Answer one page of ``channel``'s history after ``after``, or why not."""
        channel = request.match_info["channel"]
        refusal = await self._authorize(request, channel)
        if refusal is not None:
            if outcome := _REFUSALS.get(refusal.status):
                self._count(outcome)
            return refusal
        try:
            query = parse_query(request.query)
        except ValueError as error:
            self._count("invalid")
            return _answer({"error": "invalid_request", "detail": str(error)}, 400)
        try:
            return await self._read(channel, query)
        except FanoutError as error:
            log.warning("fanout.history_read_failed", error=str(error))
            return _answer({"error": "history_unavailable"}, 503)

    async def _read(self, channel: str, query: Query) -> web.Response:
        found = [
            entry_of(doc) for doc in await self._log.after(channel, query.after, query.limit + 1)
        ]
        if query.after is not None:
            # A hole right after ``after`` is a loss to retention only when ``after`` itself
            # is gone too (entries leave oldest first); otherwise it is a number never used.
            upcoming = found[0].seq if found else await self._log.last_allocated(channel) + 1
            if upcoming > query.after + 1 and not await self._log.retains_through(
                channel, query.after
            ):
                self._count("gone")
                oldest = format_cursor(found[0].seq) if found else None
                return _answer({"error": "cursor_expired", "oldest": oldest}, 410)
        page = paginate(
            found, after=query.after, limit=query.limit, now=self._clock(), settle_s=self._settle_s
        )
        self._count("ok")
        return _answer(
            {
                "events": [
                    {"cursor": format_cursor(e.seq), "event": e.event, "data": e.payload}
                    for e in page.entries
                ],
                "next": None if page.next is None else format_cursor(page.next),
            }
        )


# -- authorization -----------------------------------------------------------------------


def read_authorizer(ctx: BrowserContext) -> Authorize:
    """Reads are authorized like subscriptions (``worker.auth``); ``public`` needs no token."""
    guard = auth.guard(ctx)

    async def authorize(request: web.Request, channel: str) -> web.Response | None:
        if channel == PUBLIC:
            return None
        if guard is None:
            return _answer({"error": "auth_disabled"}, 503)
        verdict = await guard.check(request, channel)
        return None if verdict.status == 200 else _answer({"error": verdict.reason}, verdict.status)

    return authorize


def _answer(body: Mapping[str, Any], status: int = 200) -> web.Response:
    # Private history must not sit in a shared cache.
    return web.json_response(dict(body), status=status, headers=_NO_STORE)


# -- wiring ------------------------------------------------------------------------------


async def sweep_forever(history: HistoryLog, interval_s: float) -> None:
    """Create the indexes, then delete expired entries every ``interval_s``; never fatal."""
    try:
        await history.ensure_indexes()
    except FanoutError as error:
        log.warning("fanout.index_setup_failed", error=str(error))
    while True:
        try:
            removed = await history.sweep()
        except FanoutError as error:
            log.warning("fanout.history_sweep_failed", error=str(error))
        else:
            if removed:
                log.info("fanout.history_swept", removed=removed)
        await asyncio.sleep(interval_s)


def sweep_interval_s(retention: timedelta) -> float:
    """Sweep ten times per retention period, between once a second and once an hour."""
    return min(SWEEP_INTERVAL_S, max(1.0, retention.total_seconds() / 10))


def _log_of(ctx: BrowserContext) -> HistoryLog:
    return HistoryLog(
        ctx.gateway,
        ctx.settings.history_retention_h * 3600,
        ttl_index=ctx.settings.mongodb_ttl_indexes,
    )


def routes(ctx: BrowserContext) -> list[web.RouteDef]:
    """The history endpoint."""
    return [web.get(PATH, HistoryView(_log_of(ctx), ctx.metrics, read_authorizer(ctx)).get)]


def tasks(ctx: BrowserContext) -> list[Task]:
    """Index setup and the retention sweep."""
    history = _log_of(ctx)

    async def sweep() -> None:
        await sweep_forever(history, sweep_interval_s(history.retention))

    return [sweep]
