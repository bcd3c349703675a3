"""The one door to MongoDB: a client that fails fast, and queries run with short retries.

Every collection module (``lookups``, ``processed``, ``history``, ``presence``, ``access``)
goes through a ``MongoGateway``; any driver error surfaces as ``StoreUnavailable``, and each
query is timed under a fixed operation name (the ``mongodb_query_seconds`` metric). Queries
stay plain (find by ``_id`` with ``$in``, insert, delete by date, unique and TTL indexes)
so they behave the same on MongoDB and on the wire-protocol stand-in used in tests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from worker.errors import StoreUnavailable
from worker.retry import RetryPolicy, call_with_retries

Document = dict[str, Any]
Sort = Sequence[tuple[str, int]]
_T = TypeVar("_T")

#: MongoDB's error code for a unique-index violation.
DUPLICATE_KEY = 11000


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

    async def find(
        self,
        collection: str,
        filter_: Document,
        projection: Document | None = None,
        *,
        operation: str,
        sort: Sort = (),
        limit: int = 0,
    ) -> list[Document]:
        """The documents of ``collection`` matching ``filter_`` (sorted, at most ``limit``)."""

        async def query() -> list[Document]:
            cursor = self.db[collection].find(filter_, projection)
            if sort:
                cursor = cursor.sort(list(sort))
            if limit:
                cursor = cursor.limit(limit)
            docs: list[Document] = await cursor.to_list(None)
            return docs

        return await self.run(operation, query)

    async def find_one(
        self,
        collection: str,
        filter_: Document,
        projection: Document | None = None,
        *,
        operation: str,
        sort: Sort = (),
    ) -> Document | None:
        """The first document of ``collection`` matching ``filter_``, or ``None``."""
        found = await self.find(
            collection, filter_, projection, operation=operation, sort=sort, limit=1
        )
        return found[0] if found else None

    async def find_by_ids(
        self, collection: str, ids: Collection[str], fields: Collection[str]
    ) -> dict[str, Document]:
        """Documents of ``collection`` whose ``_id`` is one of ``ids`` (string or ObjectId)."""
        if not ids:
            return {}
        filter_ = {"_id": {"$in": id_forms(ids)}}
        docs = await self.find(
            collection, filter_, dict.fromkeys(fields, 1), operation=f"find in {collection}"
        )
        return {str(doc["_id"]): doc for doc in docs}

    async def insert_new(
        self, collection: str, docs: Sequence[Document], *, operation: str
    ) -> set[str]:
        """Insert ``docs`` (unordered); return the ``_id``s refused as duplicates, left as
        they were. Any other refusal raises ``StoreUnavailable``."""
        if not docs:
            return set()

        async def query() -> set[str]:
            try:
                await self.db[collection].insert_many(list(docs), ordered=False)
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise StoreUnavailable(f"MongoDB rejected a {operation}") from error
                return {str(docs[e["index"]]["_id"]) for e in errors}
            return set()

        return await self.run(operation, query)

    async def delete_before(
        self, collection: str, field: str, cutoff: datetime, *, operation: str
    ) -> int:
        """Delete the documents whose ``field`` is before ``cutoff``; return how many went."""

        async def query() -> int:
            result = await self.db[collection].delete_many({field: {"$lt": cutoff}})
            return int(result.deleted_count)

        return await self.run(operation, query)

    async def create_index(
        self, collection: str, keys: str | Sort, *, operation: str = "create index", **options: Any
    ) -> None:
        """Create an index (idempotent)."""

        async def query() -> None:
            await self.db[collection].create_index(
                keys if isinstance(keys, str) else list(keys), **options
            )

        await self.run(operation, query)

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
