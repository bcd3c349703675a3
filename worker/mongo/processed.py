"""Envelope ids already pushed to Soketi, for dedup: a mark on what is written anyway.

An event's deliveries are recorded in ``fanout_history`` before Soketi is called, and the
first of them (the lead entry) has the event id as its ``_id``. Once Soketi has accepted,
the event is recorded as pushed by ``$set: {pushed: true}`` on that document: no document
of its own. An event without entries (typing, one that decided no delivery, or one whose
entries predate lead entries) gets its lead ``_id`` from the same write, an upsert: a
marker on the pseudo-channel ``MARKER_CHANNEL`` that the feed never reads. The duplicate
check is one ``_id`` query: ``{_id: {$in: ids}, pushed: true}``. Marks live as long as the
history (``HISTORY_RETENTION_H``).

``fanout_processed``, where ids were recorded before, is still read by the check while it
holds ids (after an upgrade, until its ``PROCESSED_RETENTION_H`` has passed), and swept.

Checks of concurrently processed messages are merged into one query; records ride with the
history's writes (``HistoryLog``: one ``bulk_write``, waiting up to 10 ms for company).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Generator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from worker.mongo.coalesce import Answer, Coalescer
from worker.mongo.gateway import MongoGateway
from worker.mongo.history import HistoryLog

#: Where ids were recorded before the marks; read while it holds ids, swept, then empty.
PROCESSED: Final = "fanout_processed"


class ProcessedLog:
    """The processed-id log: ``seen`` before pushing, ``record`` after."""

    def __init__(
        self,
        gateway: MongoGateway,
        retention_s: float,
        *,
        history: HistoryLog,
        ttl_index: bool = True,
    ) -> None:
        self._gateway = gateway
        self._history = history
        #: The retention of the legacy ids; the marks follow the history's.
        self.retention = timedelta(seconds=retention_s)
        self._ttl_index = ttl_index
        # Until seen empty, the legacy collection may hold ids recorded before an upgrade.
        self._legacy = True
        self._seen: Coalescer[str, bool] = Coalescer(self._find_seen)

    async def ensure_indexes(self) -> None:
        """Keep the legacy ids' retention index (idempotent); learn whether any are left."""
        if self._ttl_index:
            ttl_s = int(self.retention.total_seconds())
            await self._gateway.create_index(
                PROCESSED, "at", expireAfterSeconds=ttl_s, name="at_ttl"
            )
        await self._check_legacy()

    def seen(self, ids: Collection[str]) -> Awaitable[set[str]]:
        """The subset of ``ids`` already recorded; the check joins the next query at once."""
        return _Ids(self._seen.ask(ids))

    async def record(self, ids: Collection[str], *, now: datetime | None = None) -> None:
        """Record ids as pushed; ids recorded before (a race with a redelivery) are fine."""
        await self._history.record_pushed(ids, now or datetime.now(UTC))

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete legacy ids older than their retention; return how many went (marks go
        with the history's sweep)."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        removed = await self._gateway.delete_before(
            PROCESSED, "at", cutoff, operation="dedup sweep"
        )
        await self._check_legacy()
        return removed

    async def _check_legacy(self) -> None:
        doc = await self._gateway.find_one(PROCESSED, {}, {"_id": 1}, operation="dedup sweep")
        self._legacy = doc is not None

    async def _find_seen(self, ids: list[str]) -> Mapping[str, bool]:
        if not self._legacy:
            return dict.fromkeys(await self._history.pushed(ids), True)
        legacy = {"_id": {"$in": sorted(set(ids))}}
        marked, recorded = await asyncio.gather(
            self._history.pushed(ids),
            self._gateway.find(PROCESSED, legacy, {"_id": 1}, operation="dedup check legacy"),
        )
        return dict.fromkeys(marked | {str(doc["_id"]) for doc in recorded}, True)


class _Ids:
    """The keys of an ``Answer``, as a set, when awaited (nothing runs before)."""

    __slots__ = ("_answer",)

    def __init__(self, answer: Answer[str, bool]) -> None:
        self._answer = answer

    def __await__(self) -> Generator[Any, None, set[str]]:
        found = yield from self._answer.__await__()
        return set(found)
