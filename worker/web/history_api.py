"""``GET /channels/{channel}/events?after=CURSOR&limit=N``: what a client missed.

It answers the entries after ``after``, oldest first, and ``next`` (the last cursor
returned) while more may exist. Two rules keep a reader from skipping an event without
being told:

- A page stops before a skipped number whose successor is younger than ``SETTLE_S``: the
  skipped number may belong to a write still in flight, which becomes visible later.
- When the entries right after ``after`` are gone and ``after`` itself is no longer kept,
  the cursor is older than the retention: 410 ``{"error": "cursor_expired", "oldest": …}``.

Reads are authorized exactly like subscriptions (``worker.web.auth``); ``public`` needs no
token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiohttp import web

from handlers.channels import PUBLIC
from worker.errors import FanoutError
from worker.history.cursor import (
    SETTLE_S,
    Query,
    entry_of,
    format_cursor,
    paginate,
    parse_query,
)
from worker.metrics import Metrics
from worker.mongo.history import HistoryLog
from worker.web.auth import ChannelGuard

log = structlog.get_logger("fanout")

PATH: Final = "/channels/{channel}/events"
_NO_STORE: Final = {"Cache-Control": "no-store"}
#: The metric's outcome for a refused read (503, auth or MongoDB down, is not counted).
_REFUSALS: Final = {401: "unauthenticated", 403: "forbidden"}

#: Answers ``None`` when the request may read the channel, else the refusal to send.
Authorize = Callable[[web.Request, str], Awaitable[web.Response | None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


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


def read_authorizer(guard: ChannelGuard | None) -> Authorize:
    """Reads are authorized like subscriptions (``guard``); ``public`` needs no token."""

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


def routes(log_: HistoryLog, metrics: Metrics, guard: ChannelGuard | None) -> list[web.RouteDef]:
    """The history endpoint."""
    return [web.get(PATH, HistoryView(log_, metrics, read_authorizer(guard)).get)]
