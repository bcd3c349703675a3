"""The handlers' ``Store``: users, shops and products by id, concurrent lookups merged.

Each collection has a ``Coalescer``: the ids that concurrently processed messages ask for
go out as one ``$in`` query, and a lookup starts when it is asked for (``Answer``), so a
handler that needs two collections waits for one round trip, not two.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from handlers.model import Account, Product
from worker.mongo.coalesce import Answer, Coalescer
from worker.mongo.gateway import Document, MongoGateway, text_or_none


class MongoStore:
    """Users, shops and products looked up by id, in bulk."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway
        self._users: Coalescer[str, Account] = Coalescer(self._find_users)
        self._shops: Coalescer[str, Account] = Coalescer(self._find_shops)
        self._products: Coalescer[str, Product] = Coalescer(self._find_products)

    def users(self, ids: Collection[str]) -> Answer[str, Account]:
        """Users by id (``name``, ``email``, ``avatar``, ``role``); the query joins at once."""
        return self._users.ask(ids)

    def shops(self, ids: Collection[str]) -> Answer[str, Account]:
        """Shops by id (``name``, ``avatar``); the query joins at once."""
        return self._shops.ask(ids)

    def products(self, ids: Collection[str]) -> Answer[str, Product]:
        """Products by id (``name``, ``shopId``, first of ``images``); joins at once."""
        return self._products.ask(ids)

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
                name=text_or_none(doc.get("name")),
                shop_id=text_or_none(doc.get("shopId")),
                image=_first_image(doc.get("images")),
            )
            for key, doc in docs.items()
        }


def _account(key: str, doc: Document) -> Account:
    return Account(
        id=key,
        name=text_or_none(doc.get("name")),
        avatar=text_or_none(doc.get("avatar")),
        email=text_or_none(doc.get("email")),
        role=text_or_none(doc.get("role")),
    )


def _first_image(images: object) -> str | None:
    if isinstance(images, list) and images:
        return text_or_none(images[0])
    return None
