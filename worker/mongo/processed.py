"""Envelope ids already pushed to Soketi (collection ``fanout_processed``), for dedup.

The id is the document's ``_id``, so the unique index is MongoDB's own. ``at`` carries a
TTL index for real MongoDB; ``sweep`` deletes expired ids too, for servers without TTL.
Checks and records of concurrently processed messages are merged: one ``$in`` query, and
one ``insert_many`` that waits ``RECORD_LINGER_S`` for company (a record comes after Soketi
has the event, off the path of its latency, so even at a low rate it carries many).
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Generator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from worker.mongo.coalesce import Answer, BatchedInsert, Coalescer
from worker.mongo.gateway import Document, MongoGateway

PROCESSED: Final = "fanout_processed"
#: How long a processed-id record waits for others to share its ``insert_many``.
RECORD_LINGER_S: Final = 0.01


class ProcessedLog:
    """The processed-id log: ``seen`` before pushing, ``record`` after."""

    def __init__(
        self, gateway: MongoGateway, retention_s: float, *, ttl_index: bool = True
    ) -> None:
        self._gateway = gateway
        self.retention = timedelta(seconds=retention_s)
        self._ttl_index = ttl_index
        self._seen: Coalescer[str, bool] = Coalescer(self._find_seen)
        self._records = BatchedInsert(self._insert, linger_s=RECORD_LINGER_S)

    async def ensure_indexes(self) -> None:
        """Create the retention index (idempotent); without it, ``sweep`` alone enforces it."""
        if self._ttl_index:
            ttl_s = int(self.retention.total_seconds())
            await self._gateway.create_index(
                PROCESSED, "at", expireAfterSeconds=ttl_s, name="at_ttl"
            )

    def seen(self, ids: Collection[str]) -> Awaitable[set[str]]:
        """The subset of ``ids`` already recorded; the check joins the next query at once."""
        return _Ids(self._seen.ask(ids))

    async def record(self, ids: Collection[str], *, now: datetime | None = None) -> None:
        """Record ids as pushed; ids recorded before (a race with a redelivery) are fine."""
        at = now or datetime.now(UTC)
        await self._records.insert([{"_id": event_id, "at": at} for event_id in sorted(set(ids))])

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete ids older than the retention; return how many went."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        return await self._gateway.delete_before(PROCESSED, "at", cutoff, operation="dedup sweep")

    async def _find_seen(self, ids: list[str]) -> Mapping[str, bool]:
        filter_ = {"_id": {"$in": sorted(set(ids))}}
        docs = await self._gateway.find(PROCESSED, filter_, {"_id": 1}, operation="dedup check")
        return {str(doc["_id"]): True for doc in docs}

    async def _insert(self, docs: list[Document]) -> set[str]:
        return await self._gateway.insert_new(PROCESSED, docs, operation="dedup record")


class _Ids:
    """The keys of an ``Answer``, as a set, when awaited (nothing runs before)."""

    __slots__ = ("_answer",)

    def __init__(self, answer: Answer[str, bool]) -> None:
        self._answer = answer

    def __await__(self) -> Generator[Any, None, set[str]]:
        found = yield from self._answer.__await__()
        return set(found)
