"""Channel history (``fanout_history``) and its per-channel floors (``fanout_cursors``).

An entry's ``_id`` is ``{eventId}:{channel}`` (its ``key``), except the first entry written
for an event (the lead), whose ``_id`` is the event id: a retried event finds its entries
by id instead of writing second ones, and the duplicate check finds the event's ``pushed``
mark by ``_id`` (``worker.mongo.processed``). An event without entries gets its lead ``_id``
from the mark itself, an upserted marker on ``MARKER_CHANNEL``, which the feed never reads.
A unique ``(channel, seq)`` index guards the numbering: a worker numbers entries itself and
learns from a refused insert that another took the number. A floor is one document per
channel, ``{_id: channel, seq}``, raised with ``$max`` to the highest number written and
never deleted, so numbers never go back even once every entry of a channel has expired.
``at`` carries a TTL index for real MongoDB, and ``sweep`` deletes expired entries too, for
servers without TTL.

The reads and writes of concurrently processed messages are merged: one ``$in`` lookup of
entries, one of floors, and one unordered ``bulk_write`` for entries (inserts, on the next
loop turn) and pushed marks (upserts, which wait up to ``LINGER_S`` unless entries take
them along).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from worker.errors import StoreUnavailable
from worker.mongo.coalesce import Coalescer
from worker.mongo.gateway import DUPLICATE_KEY, Document, MongoGateway

HISTORY: Final = "fanout_history"
CURSORS: Final = "fanout_cursors"
#: The pseudo-channel of the pushed markers of events without entries (not a Pusher name:
#: ``#`` is outside the channel alphabet, so the feed never reads it).
MARKER_CHANNEL: Final = "#processed"


def key_of(doc: Document) -> str:
    """An entry's key, ``{eventId}:{channel}`` (``:n`` on repeats): its ``_id``, except for
    an event's lead entry, whose ``_id`` is the event id and whose ``key`` says it."""
    return str(doc.get("key") or doc["_id"])


class HistoryLog:
    """Entries and floors: what the recorder writes and the history endpoint reads."""

    def __init__(
        self, gateway: MongoGateway, retention_s: float, *, ttl_index: bool = True
    ) -> None:
        self._gateway = gateway
        self.retention = timedelta(seconds=retention_s)
        self.ttl_index = ttl_index
        self._seqs: Coalescer[str, tuple[str, int]] = Coalescer(self._find_seqs)
        self._floors: Coalescer[str, int] = Coalescer(self._find_floors)
        self._writes = _Writes(gateway)

    async def ensure_indexes(self) -> None:
        """Create the numbering and retention indexes (idempotent)."""
        keys = [("channel", 1), ("seq", 1)]
        await self._gateway.create_index(HISTORY, keys, unique=True, name="channel_seq")
        if self.ttl_index:
            ttl_s = max(1, round(self.retention.total_seconds()))
            await self._gateway.create_index(HISTORY, "at", expireAfterSeconds=ttl_s, name="at_ttl")

    # -- the recorder's, batched across messages --

    async def seqs(self, event_id: str, keys: Collection[str]) -> tuple[dict[str, int], bool]:
        """The number of each of the event's entry ``keys`` already recorded (absent ones
        left out), and whether its lead ``_id`` (the event id) is taken."""
        found = await self._seqs.get([event_id, *keys])
        by_key = {key: seq for key, seq in found.values() if seq >= 0}
        return {key: by_key[key] for key in keys if key in by_key}, event_id in found

    async def floors(self, channels: Collection[str]) -> dict[str, int]:
        """The recorded floor of each of ``channels`` that has one."""
        return await self._floors.get(channels)

    async def insert(self, docs: Collection[Document]) -> set[str]:
        """Insert ``docs``; return the ids refused as duplicates, which are left untouched.

        The write goes out on the next loop turn (or when the one in flight is done)."""
        return await self._writes.submit(_Batch([InsertOne(doc) for doc in docs], docs), True)

    async def record_pushed(self, event_ids: Collection[str], at: datetime) -> None:
        """Mark ``event_ids`` pushed: ``pushed: true`` on the document whose ``_id`` is the
        event id (an event's lead entry), upserted as a marker on ``MARKER_CHANNEL`` for an
        event without one. Rides with other writes, waiting up to ``LINGER_S``."""
        marks = [
            UpdateOne(
                {"_id": event_id},
                {
                    "$set": {"pushed": True},
                    "$setOnInsert": {
                        "eventId": event_id,
                        "channel": MARKER_CHANNEL,
                        "seq": event_id,
                        "at": at,
                    },
                },
                upsert=True,
            )
            for event_id in sorted(set(event_ids))
        ]
        await self._writes.submit(_Batch(marks, ()), False)

    async def pushed(self, event_ids: Collection[str]) -> set[str]:
        """The subset of ``event_ids`` marked pushed (one ``_id`` query)."""
        filter_ = {"_id": {"$in": sorted(set(event_ids))}, "pushed": True}
        docs = await self._gateway.find(HISTORY, filter_, {"_id": 1}, operation="dedup check")
        return {str(doc["_id"]) for doc in docs}

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

    async def delete(self, ids: Collection[str]) -> None:
        """Delete entries by ``_id`` (one this worker wrote twice, before any push)."""
        filter_ = {"_id": {"$in": sorted(set(ids))}}
        entries = self._gateway.db[HISTORY]

        async def query() -> None:
            await entries.delete_many(filter_)

        await self._gateway.run("history delete", query)

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

    async def _find_seqs(self, ids: list[str]) -> Mapping[str, tuple[str, int]]:
        # A marker holds an event's lead ``_id`` without being an entry (number -1).
        return {
            id_: (key_of(doc), -1 if doc.get("channel") == MARKER_CHANNEL else int(doc["seq"]))
            for id_, doc in (await self.find(ids)).items()
        }

    async def _find_floors(self, channels: list[str]) -> Mapping[str, int]:
        filter_ = {"_id": {"$in": sorted(set(channels))}}
        docs = await self._gateway.find(CURSORS, filter_, operation="history floors")
        return {str(doc["_id"]): int(doc["seq"]) for doc in docs}


#: How long a write off the critical path (a mark, a marker) waits for company.
LINGER_S: Final = 0.01

_Op = InsertOne[Document] | UpdateOne


class _Batch:
    """One caller's operations, and the documents of its inserts (for refused ids)."""

    __slots__ = ("docs", "future", "ops")

    def __init__(self, ops: Sequence[_Op], docs: Collection[Document]) -> None:
        self.ops = list(ops)
        self.docs = list(docs)
        self.future: asyncio.Future[set[str]] | None = None


class _Writes:
    """Every write to ``fanout_history`` from concurrent callers, in one unordered
    ``bulk_write``: entries (urgent: on the next loop turn), pushed marks and markers (they
    wait ``LINGER_S`` unless an urgent write takes them along). One call in flight at a time;
    what arrives meanwhile goes with the next."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway
        self._pending: list[_Batch] = []
        self._urgent = False
        self._in_flight = False
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, batch: _Batch, urgent: bool) -> set[str]:
        if not batch.ops:
            return set()
        batch.future = asyncio.get_running_loop().create_future()
        # A caller cancelled meanwhile never reads a failure: not an error.
        batch.future.add_done_callback(_retrieved)
        self._pending.append(batch)
        self._urgent = self._urgent or urgent
        self._schedule()
        return await batch.future

    def _schedule(self) -> None:
        if self._in_flight or not self._pending or self._soon:
            return
        loop = asyncio.get_running_loop()
        if self._urgent:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._soon = True
            loop.call_soon(self._flush)
        elif self._timer is None:
            self._timer = loop.call_later(LINGER_S, self._flush)

    def _flush(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight or not self._pending:
            return
        batches, self._pending, self._urgent = self._pending, [], False
        self._in_flight = True
        task = asyncio.create_task(self._run(batches))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batches: list[_Batch]) -> None:
        try:
            refused = await self._write(batches)
        except BaseException as error:  # every waiter gets the failure, e.g. StoreUnavailable
            for batch in batches:
                if batch.future is not None and not batch.future.done():
                    batch.future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            for batch, ids in zip(batches, refused, strict=True):
                if batch.future is not None and not batch.future.done():
                    batch.future.set_result(ids)
        finally:
            self._in_flight = False
            self._schedule()

    async def _write(self, batches: list[_Batch]) -> list[set[str]]:
        """The ids each batch's inserts had refused as duplicates."""
        ops = [op for batch in batches for op in batch.ops]
        owners = [(batch, i) for batch in batches for i in range(len(batch.ops))]
        history = self._gateway.db[HISTORY]

        async def query() -> list[set[str]]:
            refused: dict[int, set[str]] = {id(batch): set() for batch in batches}
            try:
                await history.bulk_write(ops, ordered=False)
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise StoreUnavailable("MongoDB rejected a history write") from error
                for e in errors:
                    batch, i = owners[e["index"]]
                    if i < len(batch.docs):
                        refused[id(batch)].add(str(batch.docs[i]["_id"]))
            return [refused[id(batch)] for batch in batches]

        return await self._gateway.run("history write", query)


def _retrieved(future: asyncio.Future[set[str]]) -> None:
    if not future.cancelled():
        future.exception()
