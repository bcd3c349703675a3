"""Handlers: ``decide`` tables for every event type, and what ``load`` asks the store for."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import orjson
import pytest

from handlers import HANDLERS, channels, route
from handlers.model import (
    NO_LOOKUPS,
    Account,
    AccountLookups,
    Delivery,
    NoLookups,
    PresenceLookups,
    Product,
    ProductLookups,
)
from handlers.orders import OrderLookups
from schemas import EVENT_TYPES, Event, parse_event

EVENT_ID = "01JDZ8Q1T5V6Y7W8X9A0B1C2D3"
OCCURRED_AT = "2026-11-29T05:00:00.000Z"
TIMESTAMP_MS = 1_795_928_400_000
SOCKET_ID = "1234.5678"
STAMPS = {"eventId": EVENT_ID, "timestamp": TIMESTAMP_MS}

ASHA = Account("u1", "Asha", avatar="asha.png", email="asha@example.com", role="user")
SPICE_SHOP = Account("s1", "Spice Shop", avatar="spice.png")
PEPPER = Product("p1", "Pepper", "sA", "pepper.jpg")
SAFFRON = Product("p2", "Saffron", "sB", None)
NOTHING_FOUND = AccountLookups(None)
#: The fields every ``order-update`` of a new order carries besides its id (seed section 5.2).
PLACED = {"status": "placed", "message": None, "estimatedDelivery": None}


def make(event_type: str, data: Mapping[str, Any]) -> Event:
    """A parsed event as the worker would receive it, from a browser with a socket id."""
    envelope = {
        "id": EVENT_ID,
        "type": event_type,
        "occurredAt": OCCURRED_AT,
        "socketId": SOCKET_ID,
        "data": data,
    }
    return parse_event(orjson.dumps(envelope))


def triples(deliveries: Iterable[Delivery]) -> list[tuple[str, str, dict[str, Any]]]:
    """Deliveries as plain (channel, event, payload) tuples for exact comparison."""
    return [(d.channel, d.event, dict(d.payload)) for d in deliveries]


MESSAGE = {
    "messageId": "m1",
    "conversationId": "c1",
    "senderId": "u1",
    "senderType": "user",
    "recipientId": "s1",
    "recipientType": "seller",
    "content": "Is the saffron fresh?",
}
MESSAGE_BODY = {
    **MESSAGE,
    "type": "text",
    "attachmentUrl": None,
    "senderName": "Asha",
    "senderAvatar": "asha.png",
    **STAMPS,
}
REPLY = {
    "messageId": "m2",
    "conversationId": "c1",
    "senderId": "s1",
    "senderType": "seller",
    "recipientId": "u1",
    "recipientType": "user",
    "content": "",
    "type": "image",
    "attachmentUrl": "https://cdn.example.com/a.jpg",
}
REPLY_BODY = {**REPLY, "senderName": None, "senderAvatar": None, **STAMPS}
TYPING = {"conversationId": "c1", "userId": "u1", "userType": "user"}

# Two shops, items interleaved: sA, sB, sA; p3 is not in MongoDB.
ORDER = {
    "orderId": "o1",
    "customerId": "u1",
    "items": [
        {"productId": "p1", "shopId": "sA", "quantity": 2, "price": 10},
        {"productId": "p2", "shopId": "sB", "quantity": 1, "price": 5.5},
        {"productId": "p3", "shopId": "sA", "quantity": 3, "price": 1.25},
    ],
    "totalPrice": 29.25,
    "currency": "INR",
}
P1_ITEM = {
    "productId": "p1",
    "shopId": "sA",
    "quantity": 2,
    "price": 10,
    "name": "Pepper",
    "image": "pepper.jpg",
}
P2_ITEM = {
    "productId": "p2",
    "shopId": "sB",
    "quantity": 1,
    "price": 5.5,
    "name": "Saffron",
    "image": None,
}
P3_ITEM = {
    "productId": "p3",
    "shopId": "sA",
    "quantity": 3,
    "price": 1.25,
    "name": None,
    "image": None,
}
ORDER_FOUND = OrderLookups(ASHA, {"p1": PEPPER, "p2": SAFFRON})
ORDER_EXPECTED = [
    (
        "private-seller-sA",
        "new-order",
        {
            "orderId": "o1",
            "customerId": "u1",
            "customerName": "Asha",
            "currency": "INR",
            "items": [P1_ITEM, P3_ITEM],
            "shopTotal": 23.75,
            **STAMPS,
        },
    ),
    (
        "private-seller-sB",
        "new-order",
        {
            "orderId": "o1",
            "customerId": "u1",
            "customerName": "Asha",
            "currency": "INR",
            "items": [P2_ITEM],
            "shopTotal": 5.5,
            **STAMPS,
        },
    ),
    (
        "private-user-u1",
        "order-update",
        {"orderId": "o1", **PLACED, "totalPrice": 29.25, "currency": "INR", **STAMPS},
    ),
    ("private-order-o1", "order-update", {"orderId": "o1", "customerId": "u1", **PLACED, **STAMPS}),
    (
        "private-admin",
        "new-order",
        {
            "orderId": "o1",
            "customerId": "u1",
            "items": [P1_ITEM, P2_ITEM, P3_ITEM],
            "totalPrice": 29.25,
            "currency": "INR",
            "customerName": "Asha",
            **STAMPS,
        },
    ),
]
INT_ORDER = {
    "orderId": "o2",
    "customerId": "u9",
    "items": [
        {"productId": "p7", "shopId": "sC", "quantity": 2, "price": 3},
        {"productId": "p8", "shopId": "sC", "quantity": 1, "price": 4},
    ],
    "totalPrice": 10,
}
P7_BARE = {
    "productId": "p7",
    "shopId": "sC",
    "quantity": 2,
    "price": 3,
    "name": None,
    "image": None,
}
P8_BARE = {
    "productId": "p8",
    "shopId": "sC",
    "quantity": 1,
    "price": 4,
    "name": None,
    "image": None,
}
INT_ORDER_EXPECTED = [
    (
        "private-seller-sC",
        "new-order",
        {
            "orderId": "o2",
            "customerId": "u9",
            "customerName": None,
            "currency": None,
            "items": [P7_BARE, P8_BARE],
            "shopTotal": 10,
            **STAMPS,
        },
    ),
    (
        "private-user-u9",
        "order-update",
        {"orderId": "o2", **PLACED, "totalPrice": 10, "currency": None, **STAMPS},
    ),
    ("private-order-o2", "order-update", {"orderId": "o2", "customerId": "u9", **PLACED, **STAMPS}),
    (
        "private-admin",
        "new-order",
        {
            "orderId": "o2",
            "customerId": "u9",
            "items": [P7_BARE, P8_BARE],
            "totalPrice": 10,
            "currency": None,
            "customerName": None,
            **STAMPS,
        },
    ),
]
STATUS = {"orderId": "o1", "customerId": "u1", "shopId": "sA", "status": "shipped"}
STATUS_BODY = {
    **STATUS,
    "previousStatus": None,
    "message": None,
    "estimatedDelivery": None,
    **STAMPS,
}
PAYMENT = {
    "orderId": "o1",
    "paymentId": "pay1",
    "customerId": "u1",
    "shopIds": ["sB", "sA", "sB"],
    "amount": 29.25,
    "method": "upi",
}
PAYMENT_BODY = {**PAYMENT, "currency": None, **STAMPS}
STOCK = {"productId": "p1", "shopId": "sA", "currentStock": 2, "threshold": 5}
STOCK_NO_SHOP = {"productId": "p1", "currentStock": -1, "threshold": 5}
ALERT = {"severity": "warning", "title": "Maintenance", "message": "At 02:00 UTC"}

CASES = [
    pytest.param(
        make("message.created", MESSAGE),
        AccountLookups(ASHA),
        [
            ("private-chat-c1", "new-message", MESSAGE_BODY),
            ("private-seller-s1", "new-message", MESSAGE_BODY),
        ],
        id="message.created-user-to-seller",
    ),
    pytest.param(
        make("message.created", REPLY),
        NOTHING_FOUND,
        [
            ("private-chat-c1", "new-message", REPLY_BODY),
            ("private-user-u1", "new-message", REPLY_BODY),
        ],
        id="message.created-seller-to-user-sender-missing",
    ),
    pytest.param(
        make("typing.started", TYPING),
        NO_LOOKUPS,
        [("private-chat-c1", "typing-start", {**TYPING, **STAMPS})],
        id="typing.started",
    ),
    pytest.param(
        make("typing.stopped", TYPING),
        NO_LOOKUPS,
        [("private-chat-c1", "typing-stop", {**TYPING, **STAMPS})],
        id="typing.stopped",
    ),
    pytest.param(
        make("order.created", ORDER), ORDER_FOUND, ORDER_EXPECTED, id="order.created-two-shops"
    ),
    pytest.param(
        make("order.created", INT_ORDER),
        OrderLookups(None, {}),
        INT_ORDER_EXPECTED,
        id="order.created-nothing-found",
    ),
    pytest.param(
        make("order.status_changed", STATUS),
        NO_LOOKUPS,
        [
            ("private-user-u1", "order-update", STATUS_BODY),
            ("private-order-o1", "order-update", STATUS_BODY),
            ("private-seller-sA", "order-update", STATUS_BODY),
            ("private-admin", "order-update", STATUS_BODY),
        ],
        id="order.status_changed",
    ),
    pytest.param(
        make("payment.received", PAYMENT),
        NO_LOOKUPS,
        [
            ("private-seller-sB", "payment-received", PAYMENT_BODY),
            ("private-seller-sA", "payment-received", PAYMENT_BODY),
            ("private-user-u1", "payment-received", PAYMENT_BODY),
            ("private-order-o1", "payment-received", PAYMENT_BODY),
            ("private-admin", "payment-received", PAYMENT_BODY),
        ],
        id="payment.received-shops-deduplicated",
    ),
    pytest.param(
        make("product.stock_low", STOCK),
        ProductLookups(PEPPER),
        [("private-seller-sA", "stock-low", {**STOCK, "productName": "Pepper", **STAMPS})],
        id="product.stock_low",
    ),
    pytest.param(
        make("product.stock_low", {**STOCK, "shopId": "sZ"}),
        ProductLookups(None),
        [
            (
                "private-seller-sZ",
                "stock-low",
                {**STOCK, "shopId": "sZ", "productName": None, **STAMPS},
            )
        ],
        id="product.stock_low-product-missing",
    ),
    pytest.param(
        make("product.stock_low", STOCK_NO_SHOP),
        ProductLookups(PEPPER),
        [
            (
                "private-seller-sA",
                "stock-low",
                {**STOCK_NO_SHOP, "shopId": "sA", "productName": "Pepper", **STAMPS},
            )
        ],
        id="product.stock_low-shop-from-product",
    ),
    pytest.param(
        make("product.stock_low", STOCK_NO_SHOP),
        ProductLookups(None),
        [],
        id="product.stock_low-nobody-to-tell",
    ),
    pytest.param(
        make("product.stock_low", STOCK_NO_SHOP),
        ProductLookups(Product("p1", "Pepper", "not a valid id", None)),
        [],
        id="product.stock_low-stored-shop-id-invalid",
    ),
    pytest.param(
        make("product.approved", {"productId": "p2", "shopId": "sB"}),
        ProductLookups(SAFFRON),
        [
            (
                "private-seller-sB",
                "product-approved",
                {
                    "productId": "p2",
                    "shopId": "sB",
                    "reason": None,
                    "productName": "Saffron",
                    **STAMPS,
                },
            )
        ],
        id="product.approved",
    ),
    pytest.param(
        make("product.rejected", {"productId": "p9", "shopId": "sB", "reason": "Blurry photos"}),
        ProductLookups(None),
        [
            (
                "private-seller-sB",
                "product-rejected",
                {
                    "productId": "p9",
                    "shopId": "sB",
                    "reason": "Blurry photos",
                    "productName": None,
                    **STAMPS,
                },
            )
        ],
        id="product.rejected-product-missing",
    ),
    pytest.param(
        make("user.registered", {"userId": "u1"}),
        AccountLookups(ASHA),
        [
            (
                "private-admin",
                "new-user",
                {"userId": "u1", "name": "Asha", "email": "asha@example.com", **STAMPS},
            )
        ],
        id="user.registered",
    ),
    pytest.param(
        make("user.registered", {"userId": "u404"}),
        NOTHING_FOUND,
        [("private-admin", "new-user", {"userId": "u404", "name": None, "email": None, **STAMPS})],
        id="user.registered-user-missing",
    ),
    pytest.param(
        make("seller.registered", {"shopId": "s1"}),
        AccountLookups(SPICE_SHOP),
        [("private-admin", "new-seller", {"shopId": "s1", "name": "Spice Shop", **STAMPS})],
        id="seller.registered",
    ),
    pytest.param(
        make("seller.registered", {"shopId": "s404"}),
        NOTHING_FOUND,
        [("private-admin", "new-seller", {"shopId": "s404", "name": None, **STAMPS})],
        id="seller.registered-shop-missing",
    ),
    pytest.param(
        make("system.alert", ALERT),
        NO_LOOKUPS,
        [("private-admin", "system-alert", {**ALERT, "audience": "admin", **STAMPS})],
        id="system.alert-admin-by-default",
    ),
    pytest.param(
        make("system.alert", {**ALERT, "audience": "public"}),
        NO_LOOKUPS,
        [("public", "system-alert", {**ALERT, "audience": "public", **STAMPS})],
        id="system.alert-public",
    ),
    pytest.param(
        make("presence.online", {"subjectId": "u1", "subjectType": "user"}),
        PresenceLookups(ASHA),
        [
            (
                "private-admin",
                "user-online",
                {"subjectId": "u1", "subjectType": "user", "name": "Asha", **STAMPS},
            )
        ],
        id="presence.online",
    ),
    pytest.param(
        make("presence.offline", {"subjectId": "s404", "subjectType": "seller"}),
        PresenceLookups(None),
        [
            (
                "private-admin",
                "user-offline",
                {"subjectId": "s404", "subjectType": "seller", "name": None, **STAMPS},
            )
        ],
        id="presence.offline-account-missing",
    ),
]


@pytest.mark.parametrize(("event", "lookups", "expected"), CASES)
def test_decide(event: Event, lookups: object, expected: list[Any]) -> None:
    """The routed handler pushes exactly these payloads to exactly these channels, in order."""
    assert triples(route(event).decide(event, lookups)) == expected


@pytest.mark.parametrize(("event", "lookups", "expected"), CASES)
def test_socket_id_never_reaches_a_payload(event: Event, lookups: object, expected: Any) -> None:
    """The publisher's socket id is for exclusion only: no payload carries it."""
    for delivery in route(event).decide(event, lookups):
        assert SOCKET_ID.encode() not in orjson.dumps(delivery.payload)
        assert "socketId" not in delivery.payload


def test_every_event_type_has_a_handler() -> None:
    """The registry covers the catalogue, no more and no less."""
    assert set(HANDLERS) == EVENT_TYPES


def test_decide_covers_every_event_type() -> None:
    """The decide table above has at least one case per catalogue type."""
    assert {case.values[0].type for case in CASES} == EVENT_TYPES


def test_shop_total_of_integer_prices_stays_an_integer() -> None:
    """Integer prices and quantities give an integer ``shopTotal``, not a float."""
    event = make("order.created", INT_ORDER)
    seller = route(event).decide(event, OrderLookups(None, {}))[0]
    assert seller.payload["shopTotal"] == 10
    assert type(seller.payload["shopTotal"]) is int


def test_shop_total_is_the_unrounded_float_sum() -> None:
    """Float prices sum exactly as Python sums them, without rounding to cents."""
    items = [
        {"productId": "p1", "shopId": "sA", "quantity": 3, "price": 0.1},
        {"productId": "p2", "shopId": "sA", "quantity": 1, "price": 0.2},
    ]
    event = make("order.created", {**INT_ORDER, "items": items})
    seller = route(event).decide(event, OrderLookups(None, {}))[0]
    assert seller.payload["shopTotal"] == 0.1 * 3 + 0.2 * 1


def test_seller_payload_never_carries_the_order_total() -> None:
    """A shop's ``new-order`` payload holds neither the order total nor other shops' items."""
    event = make("order.created", ORDER)
    sellers = [
        d
        for d in route(event).decide(event, ORDER_FOUND)
        if d.channel.startswith("private-seller-")
    ]
    for seller in sellers:
        shop_id = seller.channel.removeprefix("private-seller-")
        assert "totalPrice" not in seller.payload
        assert {item["shopId"] for item in seller.payload["items"]} == {shop_id}


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (channels.private_user("u1"), "private-user-u1"),
        (channels.private_seller("s-1"), "private-seller-s-1"),
        (channels.private_chat("c_1"), "private-chat-c_1"),
        (channels.private_order("o1"), "private-order-o1"),
        (channels.private_account("user", "u1"), "private-user-u1"),
        (channels.private_account("seller", "s1"), "private-seller-s1"),
        (channels.PRIVATE_ADMIN, "private-admin"),
        (channels.PUBLIC, "public"),
    ],
)
def test_channel_names(built: str, expected: str) -> None:
    """Channel builders give the contract's exact names."""
    assert built == expected


@pytest.mark.parametrize("bad", ["", "a,b", "a b", "a.b", "ü", "x" * 65, "u1\n", "-admin,x"])
def test_channel_builders_refuse_ids_that_could_forge_names(bad: str) -> None:
    """An id outside ``[A-Za-z0-9_-]{1,64}`` never becomes part of a channel name."""
    assert not channels.is_id(bad)
    with pytest.raises(ValueError, match="not a valid id"):
        channels.private_user(bad)


class FakeStore:
    """An in-memory ``Store`` that records every call as (collection, ids)."""

    def __init__(
        self,
        users: Iterable[Account] = (),
        shops: Iterable[Account] = (),
        products: Iterable[Product] = (),
    ) -> None:
        self._users = {a.id: a for a in users}
        self._shops = {a.id: a for a in shops}
        self._products = {p.id: p for p in products}
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def users(self, ids: Collection[str]) -> Mapping[str, Account]:
        self.calls.append(("users", tuple(ids)))
        return {i: self._users[i] for i in ids if i in self._users}

    async def shops(self, ids: Collection[str]) -> Mapping[str, Account]:
        self.calls.append(("shops", tuple(ids)))
        return {i: self._shops[i] for i in ids if i in self._shops}

    async def products(self, ids: Collection[str]) -> Mapping[str, Product]:
        self.calls.append(("products", tuple(ids)))
        return {i: self._products[i] for i in ids if i in self._products}

    async def conversations_of(self, member_ids: Collection[str], limit: int) -> tuple[str, ...]:
        self.calls.append(("conversations", tuple(member_ids)))
        return ()


STORE_CONTENTS = {"users": [ASHA], "shops": [SPICE_SHOP], "products": [PEPPER, SAFFRON]}
# p1 ordered twice: load still asks for it once.
REPEATED_PRODUCT_ORDER = {
    **ORDER,
    "items": [
        {"productId": "p1", "shopId": "sA", "quantity": 2, "price": 10},
        {"productId": "p2", "shopId": "sB", "quantity": 1, "price": 5.5},
        {"productId": "p1", "shopId": "sA", "quantity": 1, "price": 10},
        {"productId": "p3", "shopId": "sA", "quantity": 3, "price": 1.25},
    ],
}


@pytest.mark.parametrize(
    ("event", "calls", "lookups"),
    [
        pytest.param(
            make("order.created", REPEATED_PRODUCT_ORDER),
            [("users", ("u1",)), ("products", ("p1", "p2", "p3"))],
            OrderLookups(ASHA, {"p1": PEPPER, "p2": SAFFRON}),
            id="order.created-one-call-per-collection",
        ),
        pytest.param(
            make("message.created", MESSAGE),
            [("users", ("u1",))],
            AccountLookups(ASHA),
            id="message.created-user-sender",
        ),
        pytest.param(
            make("message.created", REPLY),
            [("shops", ("s1",))],
            AccountLookups(SPICE_SHOP),
            id="message.created-seller-sender",
        ),
        pytest.param(
            make("product.stock_low", STOCK_NO_SHOP),
            [("products", ("p1",))],
            ProductLookups(PEPPER),
            id="product.stock_low",
        ),
        pytest.param(
            make("product.approved", {"productId": "p2", "shopId": "sB"}),
            [("products", ("p2",))],
            ProductLookups(SAFFRON),
            id="product.approved",
        ),
        pytest.param(
            make("product.rejected", {"productId": "p404", "shopId": "sB"}),
            [("products", ("p404",))],
            ProductLookups(None),
            id="product.rejected-missing",
        ),
        pytest.param(
            make("user.registered", {"userId": "u1"}),
            [("users", ("u1",))],
            AccountLookups(ASHA),
            id="user.registered",
        ),
        pytest.param(
            make("seller.registered", {"shopId": "s1"}),
            [("shops", ("s1",))],
            AccountLookups(SPICE_SHOP),
            id="seller.registered",
        ),
        pytest.param(
            make("presence.online", {"subjectId": "u1", "subjectType": "user"}),
            [("conversations", ("u1",)), ("users", ("u1",))],
            PresenceLookups(ASHA),
            id="presence.online-user",
        ),
        pytest.param(
            make("presence.offline", {"subjectId": "s1", "subjectType": "seller"}),
            [("conversations", ("s1",)), ("shops", ("s1",))],
            PresenceLookups(SPICE_SHOP),
            id="presence.offline-seller",
        ),
    ],
)
async def test_load_asks_for_exactly_these_ids(
    event: Event, calls: list[tuple[str, tuple[str, ...]]], lookups: object
) -> None:
    """``load`` makes one batched call per collection it needs and returns what was found."""
    store = FakeStore(**STORE_CONTENTS)
    assert await route(event).load(event, store) == lookups
    assert store.calls == calls


@pytest.mark.parametrize(
    "event",
    [
        make("typing.started", TYPING),
        make("typing.stopped", TYPING),
        make("order.status_changed", STATUS),
        make("payment.received", PAYMENT),
        make("system.alert", ALERT),
    ],
    ids=lambda event: event.type,
)
async def test_events_without_enrichment_never_touch_the_store(event: Event) -> None:
    """Events that need nothing from MongoDB load the empty lookups without a single call."""
    store = FakeStore(**STORE_CONTENTS)
    found = await route(event).load(event, store)
    assert found is NO_LOOKUPS
    assert isinstance(found, NoLookups)
    assert store.calls == []


def test_message_kind_of_contract_v1_0_is_read_as_type() -> None:
    """A publisher still sending ``kind`` gets its value in the payload's ``type``, and no
    ``kind`` key reaches a browser."""
    event = make("message.created", {**MESSAGE, "kind": "file"})
    for delivery in route(event).decide(event, AccountLookups(ASHA)):
        assert delivery.payload["type"] == "file"
        assert "kind" not in delivery.payload
