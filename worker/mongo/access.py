"""Conversation members and order parties (contract section 4), for channel authorization.

Ids may be stored as ObjectId or string; every id comes back as a string. Orders are read in
both shapes: the backend's (``controller/order.js`` creates one order per shop, with the
customer embedded as ``user`` and each ``cart`` item carrying its ``shopId``) and the
contract's (``customerId``, ``shopIds``). Whole top-level fields are projected and picked
apart here: a dotted projection such as ``user._id`` is not read alike by MongoDB and the
wire stand-in the tests run on.
"""

from __future__ import annotations

from typing import Final

from worker.mongo.gateway import Document, MongoGateway
from worker.mongo.values import id_of, id_set, id_text

#: The fields of an order that name its parties, in either shape.
ORDER_FIELDS: Final = ("customerId", "shopIds", "user", "cart")


class AccessStore:
    """The reads ``worker.web.auth`` needs to decide chat and order channels."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    async def conversation_members(self, conversation_id: str) -> frozenset[str] | None:
        """The members of a conversation, or ``None`` when there is no such conversation."""
        docs = await self._gateway.find_by_ids("conversations", [conversation_id], ("members",))
        doc = docs.get(conversation_id)
        return None if doc is None else id_set(doc.get("members"))

    async def order_parties(self, order_id: str) -> tuple[str | None, frozenset[str]] | None:
        """An order's ``(customer id, shop ids)``, or ``None`` when there is no such order."""
        docs = await self._gateway.find_by_ids("orders", [order_id], ORDER_FIELDS)
        doc = docs.get(order_id)
        return None if doc is None else (order_customer(doc), order_shops(doc))


def order_customer(order: Document) -> str | None:
    """The customer of a stored order: ``customerId``, else the embedded ``user``'s ``_id``."""
    return id_text(order.get("customerId")) or id_of(order.get("user"))


def order_shops(order: Document) -> frozenset[str]:
    """The shops of a stored order: its ``shopIds`` and the ``shopId`` of each ``cart`` item."""
    cart = order.get("cart")
    items = cart if isinstance(cart, list) else []
    in_cart = id_set([item.get("shopId") for item in items if isinstance(item, dict)])
    return id_set(order.get("shopIds")) | in_cart
