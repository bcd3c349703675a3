"""The only module that talks to MongoDB: enrichment lookups and the processed-id log.

Queries stay plain (find by ``_id`` with ``$in``, insert, delete by date, unique and TTL
indexes) so they behave the same on MongoDB and on the wire-protocol stand-in used in tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from handlers.model import Account, Product
from worker.errors import StoreUnavailable
from worker.retry import RetryPolicy, retrying

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
        async for attempt in retrying(self._retry, StoreUnavailable):
            with attempt:
                started = time.perf_counter()
                try:
                    return await query()
                except BulkWriteError:
                    raise
                except PyMongoError as error:
                    raise StoreUnavailable(
                        f"MongoDB {operation} failed: {type(error).__name__}"
                    ) from error
                finally:
                    if self._on_query is not None:
                        self._on_query(operation, time.perf_counter() - started)
        raise AssertionError("unreachable: retrying re-raises the last error")  # pragma: no cover

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

    def __init__(self, gateway: MongoGateway, retention_s: float) -> None:
        self._gateway = gateway
        self._retention = timedelta(seconds=retention_s)

    @property
    def _collection(self) -> Any:
        return self._gateway.db[PROCESSED]

    async def ensure_indexes(self) -> None:
        """Create the retention index (idempotent)."""

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
