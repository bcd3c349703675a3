"""The only module that talks to MongoDB: enrichment lookups and the processed-id log.

Queries stay plain (find by ``_id`` with ``$in``, insert, delete by date, unique and TTL
indexes) so they behave the same on MongoDB and on the wire-protocol stand-in used in tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from handlers.model import Account, Product
from worker.errors import StoreUnavailable
from worker.retry import RetryPolicy, call_with_retries

Document = dict[str, Any]
_T = TypeVar("_T")

PROCESSED = "fanout_processed"
_DUPLICATE_KEY = 11000


def id_forms(ids: Collection[str]) -> list[str | ObjectId]:
    """Every id as a string, plus its ObjectId form when it is 24 hex digits."""
    forms: list[str | ObjectId] = []
    for value in sorted(set(ids)):
        forms.append(value)
        if ObjectId.is_valid(value) and len(value) == 24:
            forms.append(ObjectId(value))
    return forms


def connect(url: str, *, timeout_s: float) -> AsyncMongoClient[Document]:
    """A client that fails fast (``timeout_s``) instead of hanging when the server is gone."""
    timeout_ms = int(timeout_s * 1000)
    return AsyncMongoClient(
        url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=timeout_ms,
        appname="bazaar-fanout",
        tz_aware=True,
    )


class MongoGateway:
    """Runs queries with short retries; any driver error surfaces as ``StoreUnavailable``."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        retry: RetryPolicy,
        on_query: Callable[[str, float], None] | None = None,
    ) -> None:
        self.db = db
        self._retry = retry
        self._on_query = on_query

    async def run(self, operation: str, query: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``query`` with retries; ``operation`` names it for errors and metrics."""
        return await call_with_retries(
            self._retry, partial(self._once, operation, query), StoreUnavailable
        )

    async def _once(self, operation: str, query: Callable[[], Awaitable[_T]]) -> _T:
        started = time.perf_counter()
        try:
            return await query()
        except BulkWriteError:
            raise
        except PyMongoError as error:
            raise StoreUnavailable(f"MongoDB {operation} failed: {type(error).__name__}") from error
        finally:
            if self._on_query is not None:
                self._on_query(operation, time.perf_counter() - started)

    async def find_by_ids(
        self, collection: str, ids: Collection[str], fields: Collection[str]
    ) -> dict[str, Document]:
        """Documents of ``collection`` whose ``_id`` is one of ``ids`` (string or ObjectId)."""
        if not ids:
            return {}
        projection = dict.fromkeys(fields, 1)
        filter_ = {"_id": {"$in": id_forms(ids)}}

        async def query() -> list[Document]:
            return await self.db[collection].find(filter_, projection).to_list(None)

        docs = await self.run(f"find in {collection}", query)
        return {str(doc["_id"]): doc for doc in docs}

    async def ping(self) -> None:
        """Prove the database answers (with retries)."""

        async def query() -> object:
            return await self.db.command("ping")

        await self.run("ping", query)

    async def probe(self) -> None:
        """One ping, no retries: the circuit breaker does its own backoff."""
        try:
            await self.db.command("ping")
        except PyMongoError as error:
            raise StoreUnavailable(f"MongoDB unreachable: {type(error).__name__}") from error


class MongoStore:
    """The handlers' ``Store``: users, shops and products looked up by id in batches."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    async def users(self, ids: Collection[str]) -> Mapping[str, Account]:
        """Users by id; ``name``, ``email``, ``avatar`` and ``role``."""
        docs = await self._gateway.find_by_ids("users", ids, ("name", "email", "avatar", "role"))
        return {key: _account(key, doc) for key, doc in docs.items()}

    async def shops(self, ids: Collection[str]) -> Mapping[str, Account]:
        """Shops by id; ``name`` and ``avatar``."""
        docs = await self._gateway.find_by_ids("shops", ids, ("name", "avatar"))
        return {key: _account(key, doc) for key, doc in docs.items()}

    async def products(self, ids: Collection[str]) -> Mapping[str, Product]:
        """Products by id; ``name``, ``shopId`` and the first of ``images``."""
        docs = await self._gateway.find_by_ids("products", ids, ("name", "shopId", "images"))
        return {
            key: Product(
                id=key,
                name=_text(doc.get("name")),
                shop_id=_text(doc.get("shopId")),
                image=_first_image(doc.get("images")),
            )
            for key, doc in docs.items()
        }


def _account(key: str, doc: Document) -> Account:
    return Account(
        id=key,
        name=_text(doc.get("name")),
        avatar=_text(doc.get("avatar")),
        email=_text(doc.get("email")),
        role=_text(doc.get("role")),
    )


def _text(value: object) -> str | None:
    if value is None:
        return None
    return str(value)


def _first_image(images: object) -> str | None:
    if isinstance(images, list) and images:
        return _text(images[0])
    return None


class ProcessedLog:
    """Envelope ids already pushed to Soketi (collection ``fanout_processed``), for dedup.

    The id is the document's ``_id``, so the unique index is MongoDB's own. ``at`` carries a
    TTL index for real MongoDB; ``sweep`` deletes expired ids too, for servers without TTL.
    """

    def __init__(
        self, gateway: MongoGateway, retention_s: float, *, ttl_index: bool = True
    ) -> None:
        self._gateway = gateway
        self._retention = timedelta(seconds=retention_s)
        self._ttl_index = ttl_index

    @property
    def _collection(self) -> Any:
        return self._gateway.db[PROCESSED]

    async def ensure_indexes(self) -> None:
        """Create the retention index (idempotent); without it, ``sweep`` alone enforces it."""
        if not self._ttl_index:
            return

        async def query() -> str:
            return str(
                await self._collection.create_index(
                    "at", expireAfterSeconds=int(self._retention.total_seconds()), name="at_ttl"
                )
            )

        await self._gateway.run("create index", query)

    async def seen(self, ids: Collection[str]) -> set[str]:
        """The subset of ``ids`` already recorded."""
        if not ids:
            return set()
        filter_ = {"_id": {"$in": sorted(set(ids))}}

        async def query() -> list[Document]:
            docs: list[Document] = await self._collection.find(filter_, {"_id": 1}).to_list(None)
            return docs

        return {str(doc["_id"]) for doc in await self._gateway.run("dedup check", query)}

    async def record(self, ids: Collection[str], *, now: datetime | None = None) -> None:
        """Record ids as pushed; ids recorded before (a race with a redelivery) are fine."""
        if not ids:
            return
        at = now or datetime.now(UTC)
        docs = [{"_id": event_id, "at": at} for event_id in sorted(set(ids))]

        async def query() -> None:
            try:
                await self._collection.insert_many(docs, ordered=False)
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise StoreUnavailable("MongoDB rejected a processed-id write") from error

        await self._gateway.run("dedup record", query)

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete ids older than the retention; return how many went."""
        cutoff = (now or datetime.now(UTC)) - self._retention

        async def query() -> int:
            result = await self._collection.delete_many({"at": {"$lt": cutoff}})
            return int(result.deleted_count)

        return await self._gateway.run("dedup sweep", query)


PRESENCE = "fanout_presence"


@dataclass(frozen=True, slots=True)
class PresenceState:
    """One account's stored state (``_id`` ``user:{id}`` / ``seller:{id}``) and since when."""

    key: str
    online: bool
    since: datetime


class PresenceStore:
    """Online state per account (collection ``fanout_presence``), changed by compare-and-set.

    ``since`` is the state's version: a change names the state it replaces, so of two
    concurrent changes from the same state only one is stored.
    """

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    @property
    def _collection(self) -> Any:
        return self._gateway.db[PRESENCE]

    async def get(self, key: str) -> PresenceState | None:
        """The stored state of ``key``, or ``None`` when it was never seen."""

        async def query() -> Document | None:
            doc: Document | None = await self._collection.find_one({"_id": key})
            return doc

        doc = await self._gateway.run("presence get", query)
        return None if doc is None else _presence(doc)

    async def online(self) -> list[PresenceState]:
        """Every account stored as online."""

        async def query() -> list[Document]:
            docs: list[Document] = await self._collection.find({"online": True}).to_list(None)
            return docs

        return [_presence(doc) for doc in await self._gateway.run("presence online", query)]

    async def many(self, keys: Collection[str]) -> dict[str, PresenceState]:
        """The stored states of ``keys`` (absent ones are left out)."""
        if not keys:
            return {}
        filter_ = {"_id": {"$in": sorted(set(keys))}}

        async def query() -> list[Document]:
            docs: list[Document] = await self._collection.find(filter_).to_list(None)
            return docs

        states = [_presence(doc) for doc in await self._gateway.run("presence many", query)]
        return {state.key: state for state in states}

    async def change(
        self, key: str, previous: PresenceState | None, online: bool, since: datetime
    ) -> bool:
        """Store ``online`` from ``since`` if ``key`` is still ``previous``; say whether it was."""
        # Whole-document replaces: the nx-27017 stand-in turns ``$set`` booleans and dates
        # into 0/1 and strings, and MongoDB treats both forms alike.
        document = {"_id": key, "online": online, "since": since}

        async def query() -> bool:
            if previous is not None:
                filter_ = {"_id": key, "online": previous.online, "since": previous.since}
                result = await self._collection.replace_one(filter_, document)
                return bool(result.modified_count)
            try:
                # Matches nothing when the document exists, so the upsert's insert collides.
                result = await self._collection.replace_one(
                    {"_id": key, "since": {"$exists": False}}, document, upsert=True
                )
            except PyMongoError as error:
                if getattr(error, "code", None) == _DUPLICATE_KEY:
                    return False  # another writer created it first
                raise
            return result.upserted_id is not None or bool(result.modified_count)

        return await self._gateway.run("presence change", query)

    async def count_online(self) -> int:
        """How many accounts are stored as online."""

        async def query() -> int:
            return int(await self._collection.count_documents({"online": True}))

        return await self._gateway.run("presence count", query)


def _presence(doc: Document) -> PresenceState:
    since = doc.get("since")
    if not isinstance(since, datetime):
        since = datetime.fromtimestamp(0, UTC)
    elif since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return PresenceState(key=str(doc["_id"]), online=bool(doc.get("online")), since=since)


class AccessStore:
    """Conversation members and order parties (contract section 4), for channel authorization.

    Ids may be stored as ObjectId or string; every id comes back as a string.
    """

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    async def conversation_members(self, conversation_id: str) -> frozenset[str] | None:
        """The members of a conversation, or ``None`` when there is no such conversation."""
        docs = await self._gateway.find_by_ids("conversations", [conversation_id], ("members",))
        doc = docs.get(conversation_id)
        return None if doc is None else _id_set(doc.get("members"))

    async def order_parties(self, order_id: str) -> tuple[str | None, frozenset[str]] | None:
        """An order's ``(customerId, shopIds)``, or ``None`` when there is no such order."""
        docs = await self._gateway.find_by_ids("orders", [order_id], ("customerId", "shopIds"))
        doc = docs.get(order_id)
        if doc is None:
            return None
        return _text(doc.get("customerId")), _id_set(doc.get("shopIds"))


def _id_set(values: object) -> frozenset[str]:
    if not isinstance(values, list):
        return frozenset()
    return frozenset(str(value) for value in values if value is not None)


HISTORY = "fanout_history"
CURSORS = "fanout_cursors"


class HistoryLog:
    """Channel history (``fanout_history``) and its per-channel floors (``fanout_cursors``).

    An entry's ``_id`` is ``{eventId}:{channel}``: a retried event finds its entry instead of
    writing a second one. A unique ``(channel, seq)`` index guards the numbering: a worker
    numbers entries itself and learns from a refused insert that another took the number.
    A floor is one document per channel, ``{_id: channel, seq}``, raised with ``$max`` to the
    highest number written and never deleted, so numbers never go back even once every
    entry of a channel has expired. ``at`` carries a TTL index for real MongoDB, and
    ``sweep`` deletes expired entries too, for servers without TTL.
    """

    def __init__(
        self, gateway: MongoGateway, retention_s: float, *, ttl_index: bool = True
    ) -> None:
        self._gateway = gateway
        self.retention = timedelta(seconds=retention_s)
        self.ttl_index = ttl_index

    @property
    def _entries(self) -> Any:
        return self._gateway.db[HISTORY]

    @property
    def _counters(self) -> Any:
        return self._gateway.db[CURSORS]

    async def ensure_indexes(self) -> None:
        """Create the numbering and retention indexes (idempotent)."""
        ttl_s = max(1, round(self.retention.total_seconds()))

        async def query() -> None:
            await self._entries.create_index(
                [("channel", 1), ("seq", 1)], unique=True, name="channel_seq"
            )
            if self.ttl_index:
                await self._entries.create_index("at", expireAfterSeconds=ttl_s, name="at_ttl")

        await self._gateway.run("create index", query)

    async def floors(self, channels: Collection[str]) -> dict[str, int]:
        """The recorded floor of each of ``channels`` that has one."""
        filter_ = {"_id": {"$in": sorted(set(channels))}}

        async def query() -> list[Document]:
            docs: list[Document] = await self._counters.find(filter_).to_list(None)
            return docs

        found = await self._gateway.run("history floors", query)
        return {str(doc["_id"]): int(doc["seq"]) for doc in found}

    async def raise_floors(self, highest: Mapping[str, int]) -> None:
        """Raise each channel's floor to at least ``highest[channel]`` (one bulk write)."""
        if not highest:
            return
        updates = [
            UpdateOne({"_id": channel}, {"$max": {"seq": seq}}, upsert=True)
            for channel, seq in sorted(highest.items())
        ]

        async def query() -> None:
            await self._counters.bulk_write(updates, ordered=False)

        await self._gateway.run("history floors", query)

    async def find(self, ids: Collection[str]) -> dict[str, Document]:
        """Entries by ``_id``."""
        if not ids:
            return {}
        filter_ = {"_id": {"$in": sorted(set(ids))}}

        async def query() -> list[Document]:
            docs: list[Document] = await self._entries.find(filter_).to_list(None)
            return docs

        return {str(doc["_id"]): doc for doc in await self._gateway.run("history find", query)}

    async def insert(self, docs: Collection[Document]) -> set[str]:
        """Insert ``docs``; return the ids refused as duplicates, which are left untouched."""
        if not docs:
            return set()
        ordered = list(docs)

        async def query() -> set[str]:
            try:
                await self._entries.insert_many(ordered, ordered=False)
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                    raise StoreUnavailable("MongoDB rejected a history write") from error
                return {str(ordered[e["index"]]["_id"]) for e in errors}
            return set()

        return await self._gateway.run("history insert", query)

    async def newest(self, channel: str) -> int:
        """The highest number among ``channel``'s entries (0 when it has none)."""

        async def query() -> int:
            doc = await self._entries.find_one({"channel": channel}, {"seq": 1}, sort=[("seq", -1)])
            return 0 if doc is None else int(doc["seq"])

        return await self._gateway.run("history newest", query)

    async def after(self, channel: str, seq: int | None, limit: int) -> list[Document]:
        """Up to ``limit`` entries of ``channel`` numbered above ``seq``, oldest first."""
        filter_: Document = {"channel": channel}
        if seq is not None:
            filter_["seq"] = {"$gt": seq}

        async def query() -> list[Document]:
            cursor = self._entries.find(filter_).sort("seq", 1).limit(limit)
            docs: list[Document] = await cursor.to_list(None)
            return docs

        return await self._gateway.run("history read", query)

    async def retains_through(self, channel: str, seq: int) -> bool:
        """Whether an entry of ``channel`` numbered ``seq`` or lower is still kept."""

        async def query() -> bool:
            filter_ = {"channel": channel, "seq": {"$lte": seq}}
            return await self._entries.find_one(filter_, {"_id": 1}) is not None

        return await self._gateway.run("history read", query)

    async def last_allocated(self, channel: str) -> int:
        """The floor of ``channel``: about the last number handed out (0 before any)."""

        async def query() -> int:
            doc = await self._counters.find_one({"_id": channel})
            return 0 if doc is None else int(doc["seq"])

        return await self._gateway.run("history read", query)

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete entries older than the retention; return how many went."""
        cutoff = (now or datetime.now(UTC)) - self.retention

        async def query() -> int:
            result = await self._entries.delete_many({"at": {"$lt": cutoff}})
            return int(result.deleted_count)

        return await self._gateway.run("history sweep", query)
