"""Online state per account (collection ``fanout_presence``), changed by compare-and-set.

A document is ``{_id: "user:{id}" | "seller:{id}", online, since}``; ``since`` is the
state's version: a change names the state it replaces, so of two concurrent changes from
the same state only one is stored. Counting online accounts per type reads a range of
``_id`` (the type is its prefix), which the ``_id`` index serves.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from pymongo.errors import PyMongoError

from worker.mongo.gateway import DUPLICATE_KEY, Document, MongoGateway

PRESENCE: Final = "fanout_presence"
#: The account types a presence document's ``_id`` starts with.
ACCOUNT_TYPES: Final = ("user", "seller")


@dataclass(frozen=True, slots=True)
class PresenceState:
    """One account's stored state (``_id`` ``user:{id}`` / ``seller:{id}``) and since when."""

    key: str
    online: bool
    since: datetime


class PresenceStore:
    """Reads and compare-and-set changes of ``fanout_presence``."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    async def get(self, key: str) -> PresenceState | None:
        """The stored state of ``key``, or ``None`` when it was never seen."""
        doc = await self._gateway.find_one(PRESENCE, {"_id": key}, operation="presence get")
        return None if doc is None else _state(doc)

    async def online(self) -> list[PresenceState]:
        """Every account stored as online."""
        docs = await self._gateway.find(PRESENCE, {"online": True}, operation="presence online")
        return [_state(doc) for doc in docs]

    async def many(self, keys: Collection[str]) -> dict[str, PresenceState]:
        """The stored states of ``keys`` (absent ones are left out)."""
        if not keys:
            return {}
        filter_ = {"_id": {"$in": sorted(set(keys))}}
        docs = await self._gateway.find(PRESENCE, filter_, operation="presence many")
        return {state.key: state for state in map(_state, docs)}

    async def change(
        self, key: str, previous: PresenceState | None, online: bool, since: datetime
    ) -> bool:
        """Store ``online`` from ``since`` if ``key`` is still ``previous``; say whether it was."""
        # Whole-document replaces: the nx-27017 stand-in turns ``$set`` booleans and dates
        # into 0/1 and strings, and MongoDB treats both forms alike.
        document = {"_id": key, "online": online, "since": since}
        collection = self._gateway.db[PRESENCE]

        async def query() -> bool:
            if previous is not None:
                filter_ = {"_id": key, "online": previous.online, "since": previous.since}
                result = await collection.replace_one(filter_, document)
                return bool(result.modified_count)
            try:
                # Matches nothing when the document exists, so the upsert's insert collides.
                result = await collection.replace_one(
                    {"_id": key, "since": {"$exists": False}}, document, upsert=True
                )
            except PyMongoError as error:
                if getattr(error, "code", None) == DUPLICATE_KEY:
                    return False  # another writer created it first
                raise
            return result.upserted_id is not None or bool(result.modified_count)

        return await self._gateway.run("presence change", query)

    async def count_online(self) -> int:
        """How many accounts are stored as online."""
        collection = self._gateway.db[PRESENCE]

        async def query() -> int:
            return int(await collection.count_documents({"online": True}))

        return await self._gateway.run("presence count", query)

    async def count_online_by_type(self) -> dict[str, int]:
        """How many accounts are stored as online, per type: ``{"user": n, "seller": m}``."""
        collection = self._gateway.db[PRESENCE]

        async def query() -> dict[str, int]:
            counts: dict[str, int] = {}
            for kind in ACCOUNT_TYPES:
                # ``_id`` is ``{type}:{id}``: a range on the index, not a scan (";" follows ":").
                ids = {"$gte": f"{kind}:", "$lt": f"{kind};"}
                counts[kind] = int(await collection.count_documents({"_id": ids, "online": True}))
            return counts

        return await self._gateway.run("presence count by type", query)


def _state(doc: Document) -> PresenceState:
    since = doc.get("since")
    if not isinstance(since, datetime):
        since = datetime.fromtimestamp(0, UTC)
    elif since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return PresenceState(key=str(doc["_id"]), online=bool(doc.get("online")), since=since)
