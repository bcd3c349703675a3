"""The demo marketplace that the demo, the bench and the tests share.

Three shops, four customers, six products and their conversations (:data:`SHOPS`,
:data:`CUSTOMERS`, :data:`PRODUCTS`), :func:`seed` to put them in MongoDB, and
:func:`events`, an endless, believable stream of event envelopes about them: orders moving
through :data:`STATUSES`, chats in English and Hindi with typing, stock running low. The
stream favours :data:`WATCHED_SHOP` and :data:`WATCHED_CUSTOMER`, whose channels the demo
watches, so those stay busy.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pymongo import AsyncMongoClient


class Shop(NamedTuple):
    """A seller's shop."""

    id: str
    name: str


class Customer(NamedTuple):
    """A customer (a user with role ``user``)."""

    id: str
    name: str


class Product(NamedTuple):
    """A product one shop sells, priced in INR."""

    id: str
    name: str
    shop_id: str
    price: float


SHOPS = [
    Shop("shop-chai", "Chai Point"),
    Shop("shop-kirana", "Kirana Corner"),
    Shop("shop-handloom", "Handloom House"),
]
CUSTOMERS = [
    Customer("user-aarav", "Aarav Sharma"),
    Customer("user-priya", "Priya Patel"),
    Customer("user-meera", "Meera Iyer"),
    Customer("user-john", "John Mathew"),
]
PRODUCTS = [
    Product("prod-masala-chai", "Masala Chai 250g", "shop-chai", 180.0),
    Product("prod-green-tea", "Darjeeling Green Tea", "shop-chai", 320.0),
    Product("prod-basmati", "Basmati Rice 5kg", "shop-kirana", 640.0),
    Product("prod-toor-dal", "Toor Dal 1kg", "shop-kirana", 155.0),
    Product("prod-saree", "Kanchipuram Silk Saree", "shop-handloom", 8900.0),
    Product("prod-kurta", "Cotton Kurta", "shop-handloom", 1250.0),
]
#: (customer's question, shop's answer)
CHATS = [
    ("Is the masala chai fresh stock?", "Yes, packed this week."),
    ("क्या यह साड़ी असली कांचीपुरम सिल्क है?", "जी हाँ, प्रमाणपत्र के साथ आती है।"),
    ("Can you deliver by Friday?", "Friday works, we ship tomorrow."),
    ("दाल का 5 किलो पैक मिलेगा?", "हाँ, कल तक स्टॉक आ जाएगा।"),
]
#: The statuses an order moves through after it is placed, in order.
STATUSES = ["confirmed", "packed", "shipped", "out_for_delivery", "delivered"]
WATCHED_SHOP, WATCHED_CUSTOMER = SHOPS[0].id, CUSTOMERS[0].id
STOCK_AT_START, STOCK_LOW_THRESHOLD, STOCK_RESTOCKED = 12, 5, 20


def conversation_id(customer_id: str, shop_id: str) -> str:
    """The id of the conversation between a customer and a shop (one per pair)."""
    return f"conv-{customer_id}-{shop_id}"


def documents() -> dict[str, list[dict[str, Any]]]:
    """The MongoDB documents the stream's events refer to, by collection."""
    return {
        "shops": [{"_id": s.id, "name": s.name, "avatar": f"/img/{s.id}.png"} for s in SHOPS],
        "users": [
            {"_id": c.id, "name": c.name, "email": f"{c.id[5:]}@example.in", "role": "user"}
            for c in CUSTOMERS
        ],
        "products": [
            {"_id": p.id, "name": p.name, "shopId": p.shop_id, "images": [f"/img/{p.id}.jpg"]}
            for p in PRODUCTS
        ],
        "conversations": [
            {"_id": conversation_id(c.id, s.id), "members": [c.id, s.id]}
            for c in CUSTOMERS
            for s in SHOPS
        ],
    }


async def seed(mongodb_url: str, database: str) -> None:
    """Upsert the marketplace's shops, customers, products and conversations into ``database``."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, serverSelectionTimeoutMS=5000
    )
    try:
        db = client[database]
        for collection, docs in documents().items():
            for doc in docs:
                await db[collection].replace_one({"_id": doc["_id"]}, doc, upsert=True)
    finally:
        await client.close()


def events(rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless stream of envelopes (``type``, ``data``, ``source``, ``occurredAt``).

    The same ``rng`` seed gives the same sequence of types and data, ids aside (uuid4).
    """
    market = _Market(rng)
    step = 0
    while True:
        step += 1
        customer = CUSTOMERS[0] if step % 3 == 0 else rng.choice(CUSTOMERS)
        roll = rng.random()
        if roll < 0.3 or not market.orders:
            yield from market.place_order(customer, favour_watched_shop=step % 2 == 0)
        elif roll < 0.6:
            yield from market.advance_an_order()
        elif roll < 0.9:
            shop = SHOPS[0] if step % 2 == 0 else rng.choice(SHOPS)
            yield from _chat(customer, shop, *rng.choice(CHATS))
        elif roll < 0.96:
            yield _envelope("user.registered", {"userId": rng.choice(CUSTOMERS).id})
        else:
            yield _envelope(
                "system.alert",
                {
                    "severity": "info",
                    "title": "Festive sale",
                    "message": "Diwali offers go live at midnight",
                    "audience": "public",
                },
            )


@dataclass(slots=True)
class _OpenOrder:
    """An order on its way through :data:`STATUSES`; ``reached`` of them are done."""

    order_id: str
    customer_id: str
    items: list[dict[str, Any]]
    reached: int = 0


class _Market:
    """The stream's memory: the open orders and every product's stock."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.orders: list[_OpenOrder] = []
        self.stock = {p.id: STOCK_AT_START for p in PRODUCTS}

    def place_order(
        self, customer: Customer, *, favour_watched_shop: bool
    ) -> Iterator[dict[str, Any]]:
        """An order of 1-3 products, its payment, and stock warnings for what ran low."""
        rng = self.rng
        picks = rng.sample(PRODUCTS, rng.randint(1, 3))
        if favour_watched_shop and not any(p.shop_id == WATCHED_SHOP for p in picks):
            picks.append(PRODUCTS[0])
        items: list[dict[str, Any]] = [
            {
                "productId": p.id,
                "shopId": p.shop_id,
                "quantity": rng.randint(1, 3),
                "price": p.price,
            }
            for p in picks
        ]
        order = _OpenOrder(f"ord-{uuid.uuid4().hex[:10]}", customer.id, items)
        self.orders.append(order)
        total = sum(i["price"] * i["quantity"] for i in items)
        yield _envelope(
            "order.created",
            {
                "orderId": order.order_id,
                "customerId": customer.id,
                "items": items,
                "totalPrice": total,
                "currency": "INR",
            },
        )
        yield _envelope(
            "payment.received",
            {
                "orderId": order.order_id,
                "paymentId": f"pay-{uuid.uuid4().hex[:10]}",
                "customerId": customer.id,
                "shopIds": sorted({i["shopId"] for i in items}),
                "amount": total,
                "currency": "INR",
                "method": rng.choice(["upi", "card", "cod"]),
            },
        )
        for item in items:
            yield from self._take_stock(item["productId"], item["quantity"])

    def _take_stock(self, product_id: str, quantity: int) -> Iterator[dict[str, Any]]:
        """Take ``quantity`` off the shelf; warn and restock when it falls to the threshold."""
        self.stock[product_id] -= quantity
        if self.stock[product_id] <= STOCK_LOW_THRESHOLD:
            yield _envelope(
                "product.stock_low",
                {
                    "productId": product_id,
                    "currentStock": max(self.stock[product_id], 0),
                    "threshold": STOCK_LOW_THRESHOLD,
                },
            )
            self.stock[product_id] = STOCK_RESTOCKED

    def advance_an_order(self) -> Iterator[dict[str, Any]]:
        """Move a random open order to its next status (a delivered one is forgotten)."""
        order = self.rng.choice(self.orders)
        if order.reached >= len(STATUSES):
            self.orders.remove(order)
            return
        previous = "placed" if order.reached == 0 else STATUSES[order.reached - 1]
        status = STATUSES[order.reached]
        order.reached += 1
        yield _envelope(
            "order.status_changed",
            {
                "orderId": order.order_id,
                "customerId": order.customer_id,
                "shopId": order.items[0]["shopId"],
                "status": status,
                "previousStatus": previous,
                "message": f"Your order is {status.replace('_', ' ')}",
            },
        )


def _chat(customer: Customer, shop: Shop, question: str, answer: str) -> Iterator[dict[str, Any]]:
    """A customer types and asks; the shop types and answers."""
    conversation = conversation_id(customer.id, shop.id)
    yield _typing("typing.started", conversation, customer.id, "user")
    yield _message(conversation, (customer.id, "user"), (shop.id, "seller"), question)
    yield _typing("typing.stopped", conversation, customer.id, "user")
    yield _typing("typing.started", conversation, shop.id, "seller")
    yield _typing("typing.stopped", conversation, shop.id, "seller")
    yield _message(conversation, (shop.id, "seller"), (customer.id, "user"), answer)


def _typing(event_type: str, conversation: str, user_id: str, user_type: str) -> dict[str, Any]:
    data = {"conversationId": conversation, "userId": user_id, "userType": user_type}
    return _envelope(event_type, data)


def _message(
    conversation: str, sender: tuple[str, str], recipient: tuple[str, str], content: str
) -> dict[str, Any]:
    """A ``message.created`` from ``sender`` to ``recipient``, each ``(id, type)``."""
    return _envelope(
        "message.created",
        {
            "messageId": f"msg-{uuid.uuid4().hex[:10]}",
            "conversationId": conversation,
            "senderId": sender[0],
            "senderType": sender[1],
            "recipientId": recipient[0],
            "recipientType": recipient[1],
            "content": content,
        },
    )


def _envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": event_type,
        "data": data,
        "source": "demo",
        "occurredAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
