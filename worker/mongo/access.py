"""Conversation members and order parties (contract section 4), for channel authorization.

Ids may be stored as ObjectId or string; every id comes back as a string.
"""

from __future__ import annotations

from worker.mongo.gateway import MongoGateway, text_or_none


class AccessStore:
    """The reads ``worker.web.auth`` needs to decide chat and order channels."""

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
        return text_or_none(doc.get("customerId")), _id_set(doc.get("shopIds"))


def _id_set(values: object) -> frozenset[str]:
    if not isinstance(values, list):
        return frozenset()
    return frozenset(str(value) for value in values if value is not None)
