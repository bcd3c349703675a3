"""Channel history (``fanout_history``) and its per-channel floors (``fanout_cursors``).

An entry's ``_id`` is ``{eventId}:{channel}``: a retried event finds its entry instead of
writing a second one. A unique ``(channel, seq)`` index guards the numbering: a worker
numbers entries itself and learns from a refused insert that another took the number.
A floor is one document per channel, ``{_id: channel, seq}``, raised with ``$max`` to the
highest number written and never deleted, so numbers never go back even once every
entry of a channel has expired. ``at`` carries a TTL index for real MongoDB, and
``sweep`` deletes expired entries too, for servers without TTL.

The recorder's reads and writes of concurrently processed messages are merged: one ``$in``
lookup of entries, one of floors, one ``insert_many``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from pymongo import UpdateOne

from worker.mongo.coalesce import BatchedInsert, Coalescer
from worker.mongo.gateway import Document, MongoGateway

HISTORY: Final = "fanout_history"
CURSORS: Final = "fanout_cursors"


class HistoryLog:
    """Entries and floors: what the recorder writes and the history endpoint reads."""

    def __init__(
        self, gateway: MongoGateway, retention_s: float, *, ttl_index: bool = True
    ) -> None:
        self._gateway = gateway
        self.retention = timedelta(seconds=retention_s)
        self.ttl_index = ttl_index
        self._seqs: Coalescer[str, int] = Coalescer(self._find_seqs)
        self._floors: Coalescer[str, int] = Coalescer(self._find_floors)
        self._entries = BatchedInsert(self._insert)

    async def ensure_indexes(self) -> None:
        """Create the numbering and retention indexes (idempotent)."""
        keys = [("channel", 1), ("seq", 1)]
        await self._gateway.create_index(HISTORY, keys, unique=True, name="channel_seq")
        if self.ttl_index:
            ttl_s = max(1, round(self.retention.total_seconds()))
            await self._gateway.create_index(HISTORY, "at", expireAfterSeconds=ttl_s, name="at_ttl")

    # -- the recorder's, batched across messages --

    async def seqs(self, ids: Collection[str]) -> dict[str, int]:
        """The number of each entry of ``ids`` already recorded (absent ones left out)."""
        return await self._seqs.get(ids)

    async def floors(self, channels: Collection[str]) -> dict[str, int]:
        """The recorded floor of each of ``channels`` that has one."""
        return await self._floors.get(channels)

    async def insert(self, docs: Collection[Document]) -> set[str]:
        """Insert ``docs``; return the ids refused as duplicates, which are left untouched."""
        return await self._entries.insert(docs)

    # -- one query each --

    async def find(self, ids: Collection[str]) -> dict[str, Document]:
        """Entries by ``_id``."""
        if not ids:
            return {}
        filter_ = {"_id": {"$in": sorted(set(ids))}}
        docs = await self._gateway.find(HISTORY, filter_, operation="history find")
        return {str(doc["_id"]): doc for doc in docs}

    async def raise_floors(self, highest: Mapping[str, int]) -> None:
        """Raise each channel's floor to at least ``highest[channel]`` (one bulk write)."""
        if not highest:
            return
        updates = [
            UpdateOne({"_id": channel}, {"$max": {"seq": seq}}, upsert=True)
            for channel, seq in sorted(highest.items())
        ]
        counters = self._gateway.db[CURSORS]

        async def query() -> None:
            await counters.bulk_write(updates, ordered=False)

        await self._gateway.run("history floors", query)

    async def newest(self, channel: str) -> int:
        """The highest number among ``channel``'s entries (0 when it has none)."""
        doc = await self._gateway.find_one(
            HISTORY,
            {"channel": channel},
            {"seq": 1},
            operation="history newest",
            sort=[("seq", -1)],
        )
        return 0 if doc is None else int(doc["seq"])

    async def after(self, channel: str, seq: int | None, limit: int) -> list[Document]:
        """Up to ``limit`` entries of ``channel`` numbered above ``seq``, oldest first."""
        filter_: Document = {"channel": channel}
        if seq is not None:
            filter_["seq"] = {"$gt": seq}
        return await self._gateway.find(
            HISTORY, filter_, operation="history read", sort=[("seq", 1)], limit=limit
        )

    async def retains_through(self, channel: str, seq: int) -> bool:
        """Whether an entry of ``channel`` numbered ``seq`` or lower is still kept."""
        filter_ = {"channel": channel, "seq": {"$lte": seq}}
        doc = await self._gateway.find_one(HISTORY, filter_, {"_id": 1}, operation="history read")
        return doc is not None

    async def last_allocated(self, channel: str) -> int:
        """The floor of ``channel``: about the last number handed out (0 before any)."""
        doc = await self._gateway.find_one(CURSORS, {"_id": channel}, operation="history read")
        return 0 if doc is None else int(doc["seq"])

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete entries older than the retention; return how many went."""
        cutoff = (now or datetime.now(UTC)) - self.retention
        return await self._gateway.delete_before(HISTORY, "at", cutoff, operation="history sweep")

    async def _find_seqs(self, ids: list[str]) -> Mapping[str, int]:
        return {key: int(doc["seq"]) for key, doc in (await self.find(ids)).items()}

    async def _find_floors(self, channels: list[str]) -> Mapping[str, int]:
        filter_ = {"_id": {"$in": sorted(set(channels))}}
        docs = await self._gateway.find(CURSORS, filter_, operation="history floors")
        return {str(doc["_id"]): int(doc["seq"]) for doc in docs}

    async def _insert(self, docs: list[Document]) -> set[str]:
        return await self._gateway.insert_new(HISTORY, docs, operation="history insert")
