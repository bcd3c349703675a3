"""The handlers' ``Store``: users, shops and products by id, cached, concurrent lookups merged.

Each collection has a ``CachedLookup``: ids found less than ``cache_ttl_s`` ago are answered
from memory (``worker.mongo.cache``); the rest, from concurrently processed messages, go out
as one ``$in`` query through a ``Coalescer``. A lookup starts when it is asked for, so a
handler that needs two collections waits for one round trip, not two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping

from handlers.model import Account, Product
from worker.mongo.cache import CachedLookup
from worker.mongo.gateway import Document, MongoGateway, id_forms
from worker.mongo.values import first_image, id_text, image_src, text


class MongoStore:
    """Users, shops and products looked up by id, in bulk."""

    def __init__(
        self,
        gateway: MongoGateway,
        *,
        cache_ttl_s: float = 0.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``cache_ttl_s`` > 0 keeps what was found that long, at most ``cache_size``
        documents per collection (the least recently used go first); 0 asks every time."""
        self._gateway = gateway
        ttl, size = cache_ttl_s, cache_size
        self._users = CachedLookup(self._find_users, ttl_s=ttl, max_size=size, clock=clock)
        self._shops = CachedLookup(self._find_shops, ttl_s=ttl, max_size=size, clock=clock)
        self._products = CachedLookup(self._find_products, ttl_s=ttl, max_size=size, clock=clock)

    def users(self, ids: Collection[str]) -> Awaitable[dict[str, Account]]:
        """Users by id (``name``, ``email``, ``avatar``, ``role``); a miss's query joins at once."""
        return self._users.ask(ids)

    def shops(self, ids: Collection[str]) -> Awaitable[dict[str, Account]]:
        """Shops by id (``name``, ``avatar``); a miss's query joins at once."""
        return self._shops.ask(ids)

    def products(self, ids: Collection[str]) -> Awaitable[dict[str, Product]]:
        """Products by id (``name``, ``shopId``, first of ``images``); a miss's query joins
        at once."""
        return self._products.ask(ids)

    async def conversations_of(self, member_ids: Collection[str], limit: int) -> tuple[str, ...]:
        """Ids of the conversations any of ``member_ids`` is in, last updated first, at most
        ``limit`` (``{"members": {"$in": ids}}``, as the backend lists an inbox)."""
        if not member_ids or limit <= 0:
            return ()
        # An array field matches when any element equals any value (string or ObjectId form).
        filter_ = {"members": {"$in": id_forms(member_ids)}}
        docs = await self._gateway.find(
            "conversations",
            filter_,
            {"_id": 1},
            operation="find conversations of",
            sort=(("updatedAt", -1), ("_id", -1)),
            limit=limit,
        )
        return tuple(found for doc in docs if (found := id_text(doc.get("_id"))) is not None)

    async def _find_users(self, ids: list[str]) -> Mapping[str, Account]:
        docs = await self._gateway.find_by_ids("users", ids, ("name", "email", "avatar", "role"))
        return {key: _account(key, doc) for key, doc in docs.items()}

    async def _find_shops(self, ids: list[str]) -> Mapping[str, Account]:
        docs = await self._gateway.find_by_ids("shops", ids, ("name", "avatar"))
        return {key: _account(key, doc) for key, doc in docs.items()}

    async def _find_products(self, ids: list[str]) -> Mapping[str, Product]:
        docs = await self._gateway.find_by_ids("products", ids, ("name", "shopId", "images"))
        return {
            key: Product(
                id=key,
                name=text(doc.get("name")),
                shop_id=id_text(doc.get("shopId")),
                image=first_image(doc.get("images")),
            )
            for key, doc in docs.items()
        }


def _account(key: str, doc: Document) -> Account:
    return Account(
        id=key,
        name=text(doc.get("name")),
        avatar=image_src(doc.get("avatar")),
        email=text(doc.get("email")),
        role=text(doc.get("role")),
    )
