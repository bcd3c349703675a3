"""End to end on the real services: RabbitMQ -> worker -> Soketi -> a browser-like subscriber."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber
from schemas import EPHEMERAL_TYPES
from tests.integration.harness import Fanout, envelope, iso_ago, running_worker
from worker.history.cursor import format_cursor

CUSTOMER = ObjectId()
CUSTOMER_ID = str(CUSTOMER)
SHOP_A, SHOP_B = "shopA", str(ObjectId())
P1, P2, P3 = str(ObjectId()), "p2", "p3-missing"


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker on this test's own exchange, queue and database, with seeded backend data."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as running:
        db = running.db
        await db.users.insert_many(
            [
                {"_id": CUSTOMER, "name": "Aarav", "email": "aarav@example.in", "avatar": "a.png"},
                {"_id": "u2", "name": "Priya", "email": "priya@example.in"},
            ]
        )
        await db.shops.insert_many(
            [
                {"_id": SHOP_A, "name": "Chai Point", "avatar": "chai.png"},
                {"_id": ObjectId(SHOP_B), "name": "Kirana Corner"},
            ]
        )
        await db.products.insert_many(
            [
                {
                    "_id": ObjectId(P1),
                    "name": "Masala Chai",
                    "shopId": SHOP_A,
                    "images": ["chai.jpg", "chai2.jpg"],
                },
                {"_id": P2, "name": "Basmati Rice", "shopId": SHOP_B, "images": []},
            ]
        )
        yield running


async def _received(sub: PusherSubscriber, count: int, timeout_s: float = 15) -> list[Any]:
    await sub.wait_for(lambda got: len(got) >= count, timeout_s)
    return sub.events()


def _uncursored(data: dict[str, Any], seq: int = 1) -> dict[str, Any]:
    """``data`` without its ``cursor``, which must be the channel's ``seq``-th."""
    assert data["cursor"] == format_cursor(seq)
    return {key: value for key, value in data.items() if key != "cursor"}


def _by_channel(sub: PusherSubscriber) -> dict[str, list[tuple[str, Any]]]:
    out: dict[str, list[tuple[str, Any]]] = {}
    for r in sub.events():
        out.setdefault(r.channel, []).append((r.event, _uncursored(r.data)))
    return out


async def test_order_created_splits_items_per_shop(fanout: Fanout) -> None:
    """order.created reaches each seller with only its items, the customer, the order's
    channel and the admins."""
    sub = await fanout.subscriber(
        f"private-seller-{SHOP_A}",
        f"private-seller-{SHOP_B}",
        f"private-user-{CUSTOMER_ID}",
        "private-order-ord1",
        "private-admin",
    )
    items = [
        {"productId": P1, "shopId": SHOP_A, "quantity": 2, "price": 180},
        {"productId": P2, "shopId": SHOP_B, "quantity": 1, "price": 640.5},
        {"productId": P3, "shopId": SHOP_A, "quantity": 3, "price": 10},
    ]
    env = envelope(
        "order.created",
        {
            "orderId": "ord1",
            "customerId": CUSTOMER_ID,
            "items": items,
            "totalPrice": 1030.5,
            "currency": "INR",
        },
    )
    await fanout.publish(env)
    await _received(sub, 5)
    got = _by_channel(sub)
    ts = got["private-admin"][0][1]["timestamp"]
    enriched = {
        P1: {"name": "Masala Chai", "image": "chai.jpg"},
        P2: {"name": "Basmati Rice", "image": None},
        P3: {"name": None, "image": None},
    }
    full = [{**i, **enriched[i["productId"]]} for i in items]
    assert got[f"private-seller-{SHOP_A}"] == [
        (
            "new-order",
            {
                "orderId": "ord1",
                "customerId": CUSTOMER_ID,
                "customerName": "Aarav",
                "currency": "INR",
                "items": [full[0], full[2]],
                "shopTotal": 390,
                "eventId": env["id"],
                "timestamp": ts,
            },
        )
    ]
    assert got[f"private-seller-{SHOP_B}"] == [
        (
            "new-order",
            {
                "orderId": "ord1",
                "customerId": CUSTOMER_ID,
                "customerName": "Aarav",
                "currency": "INR",
                "items": [full[1]],
                "shopTotal": 640.5,
                "eventId": env["id"],
                "timestamp": ts,
            },
        )
    ]
    assert got[f"private-user-{CUSTOMER_ID}"] == [
        (
            "order-update",
            {
                "orderId": "ord1",
                "status": "placed",
                "message": None,
                "estimatedDelivery": None,
                "totalPrice": 1030.5,
                "currency": "INR",
                "eventId": env["id"],
                "timestamp": ts,
            },
        )
    ]
    assert got["private-order-ord1"] == [
        (
            "order-update",
            {
                "orderId": "ord1",
                "customerId": CUSTOMER_ID,
                "status": "placed",
                "message": None,
                "estimatedDelivery": None,
                "eventId": env["id"],
                "timestamp": ts,
            },
        )
    ]
    assert got["private-admin"] == [
        (
            "new-order",
            {
                "orderId": "ord1",
                "customerId": CUSTOMER_ID,
                "items": full,
                "totalPrice": 1030.5,
                "currency": "INR",
                "customerName": "Aarav",
                "eventId": env["id"],
                "timestamp": ts,
            },
        )
    ]


CATALOGUE: list[tuple[str, dict[str, Any], list[tuple[str, str]], dict[str, Any]]] = [
    (
        "message.created",
        {
            "messageId": "m1",
            "conversationId": "c1",
            "senderId": CUSTOMER_ID,
            "senderType": "user",
            "recipientId": SHOP_A,
            "recipientType": "seller",
            "content": "Is it fresh?",
        },
        [("private-chat-c1", "new-message"), (f"private-seller-{SHOP_A}", "new-message")],
        {"type": "text", "attachmentUrl": None, "senderName": "Aarav", "senderAvatar": "a.png"},
    ),
    (
        "typing.started",
        {"conversationId": "c1", "userId": "u2", "userType": "user"},
        [("private-chat-c1", "typing-start")],
        {},
    ),
    (
        "typing.stopped",
        {"conversationId": "c1", "userId": "u2", "userType": "user"},
        [("private-chat-c1", "typing-stop")],
        {},
    ),
    (
        "order.status_changed",
        {"orderId": "ord9", "customerId": "u2", "shopId": SHOP_A, "status": "shipped"},
        [
            ("private-user-u2", "order-update"),
            ("private-order-ord9", "order-update"),
            (f"private-seller-{SHOP_A}", "order-update"),
            ("private-admin", "order-update"),
        ],
        {"previousStatus": None, "message": None, "estimatedDelivery": None},
    ),
    (
        "payment.received",
        {
            "orderId": "ord9",
            "paymentId": "pay1",
            "customerId": "u2",
            "shopIds": [SHOP_A, SHOP_B],
            "amount": 99.5,
            "currency": "INR",
            "method": "upi",
        },
        [
            (f"private-seller-{SHOP_A}", "payment-received"),
            (f"private-seller-{SHOP_B}", "payment-received"),
            ("private-user-u2", "payment-received"),
            ("private-order-ord9", "payment-received"),
            ("private-admin", "payment-received"),
        ],
        {},
    ),
    (
        "product.stock_low",
        {"productId": P2, "currentStock": 2, "threshold": 5},
        [(f"private-seller-{SHOP_B}", "stock-low")],
        {"productName": "Basmati Rice", "shopId": SHOP_B},
    ),
    (
        "product.approved",
        {"productId": P1, "shopId": SHOP_A},
        [(f"private-seller-{SHOP_A}", "product-approved")],
        {"reason": None, "productName": "Masala Chai"},
    ),
    (
        "product.rejected",
        {"productId": "nope", "shopId": SHOP_A, "reason": "blurry photos"},
        [(f"private-seller-{SHOP_A}", "product-rejected")],
        {"productName": None},
    ),
    (
        "user.registered",
        {"userId": CUSTOMER_ID},
        [("private-admin", "new-user")],
        {"name": "Aarav", "email": "aarav@example.in"},
    ),
    (
        "seller.registered",
        {"shopId": SHOP_B},
        [("private-admin", "new-seller")],
        {"name": "Kirana Corner"},
    ),
    (
        "system.alert",
        {"severity": "critical", "title": "Payments down", "message": "Gateway timeout"},
        [("private-admin", "system-alert")],
        {"audience": "admin"},
    ),
    (
        "system.alert",
        {"severity": "info", "title": "Sale", "message": "Diwali sale", "audience": "public"},
        [("public", "system-alert")],
        {},
    ),
    (
        "presence.online",
        {"subjectId": SHOP_A, "subjectType": "seller"},
        [("private-admin", "user-online")],
        {"name": "Chai Point"},
    ),
    (
        "presence.offline",
        {"subjectId": "u2", "subjectType": "user"},
        [("private-admin", "user-offline")],
        {"name": "Priya"},
    ),
]


@pytest.mark.parametrize(
    ("event_type", "data", "expected", "added"),
    CATALOGUE,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CATALOGUE)],
)
async def test_catalogue_event_reaches_its_channels(
    fanout: Fanout,
    event_type: str,
    data: dict[str, Any],
    expected: list[tuple[str, str]],
    added: dict[str, Any],
) -> None:
    """Each catalogue event reaches exactly its channels with data, enrichment and its cursor."""
    channels = sorted({c for c, _ in expected} | {"private-admin", "public"})
    sub = await fanout.subscriber(*channels)
    env = envelope(event_type, data, occurredAt="2030-01-02T03:04:05.678+05:30")
    await fanout.publish(env)
    await _received(sub, len(expected))
    await fanout.wait_settled(1, "delivered")
    want = {**data, **added, "eventId": env["id"], "timestamp": 1893533645678}
    got = sorted((r.channel, r.event) for r in sub.events())
    assert got == sorted(expected)
    for received in sub.events():
        if event_type in EPHEMERAL_TYPES:
            assert received.data == want
        else:
            assert _uncursored(received.data) == want


async def test_devanagari_chat_and_90kb_payload_are_delivered(fanout: Fanout) -> None:
    """A ~4 KB Hindi chat message and a 90 KB payload pass the size check and arrive intact."""
    sub = await fanout.subscriber("private-chat-hindi", "private-chat-big")
    hindi = ("नमस्ते! क्या यह कांचीपुरम साड़ी अभी उपलब्ध है? " * 60)[:1400]
    assert 3500 < len(hindi.encode()) < 4500
    chat = envelope(
        "message.created",
        {
            "messageId": "m-hi",
            "conversationId": "hindi",
            "senderId": "u2",
            "senderType": "user",
            "recipientId": SHOP_A,
            "recipientType": "seller",
            "content": hindi,
        },
    )
    big = envelope(
        "message.created",
        {
            "messageId": "m-big",
            "conversationId": "big",
            "senderId": "u2",
            "senderType": "user",
            "recipientId": "admin1",
            "recipientType": "user",
            "content": "x" * 90_000,
        },
    )
    await fanout.publish(chat)
    await fanout.publish(big)
    await sub.wait_for(lambda got: len(got) >= 2, 15)
    by_channel = {r.channel: r.data for r in sub.events()}
    assert by_channel["private-chat-hindi"]["content"] == hindi
    assert by_channel["private-chat-big"]["content"] == "x" * 90_000


async def test_too_large_payload_is_dead_lettered(fanout: Fanout) -> None:
    """A 150 KB payload goes to the DLQ with reason payload_too_large and contract headers."""
    env = envelope(
        "message.created",
        {
            "messageId": "m-huge",
            "conversationId": "huge",
            "senderId": "u2",
            "senderType": "user",
            "recipientId": "admin1",
            "recipientType": "user",
            "content": "x" * 150_000,
        },
    )
    await fanout.publish(env)
    await fanout.wait_settled(1, "dead_lettered", "payload_too_large")
    [dead] = await fanout.dead_letters()
    assert dead.headers["fanout-reason"] == "payload_too_large"
    assert dead.headers["fanout-attempts"] == 1
    assert "150" in dead.headers["fanout-error"] or "bytes" in dead.headers["fanout-error"]
    assert dead.headers["fanout-first-failed-at"]
    assert dead.routing_key == "message.created"
    assert dead.message_id == env["id"]


async def test_duplicate_id_is_delivered_once(fanout: Fanout) -> None:
    """The same envelope id published twice is pushed once and counted as a duplicate."""
    sub = await fanout.subscriber("private-admin")
    env = envelope("user.registered", {"userId": "u2"})
    marker = envelope("seller.registered", {"shopId": SHOP_A})
    await fanout.publish(env)
    await fanout.publish(env)
    await fanout.publish(marker)
    await fanout.wait_settled(1, "duplicate")
    await sub.wait_for(lambda got: any(r.event == "new-seller" for r in got), 15)
    assert [r.event for r in sub.events()].count("new-user") == 1


async def test_socket_id_is_excluded(fanout: Fanout) -> None:
    """The browser that caused an event (socketId) does not receive it; another one does."""
    origin = await fanout.subscriber("private-chat-x")
    other = await fanout.subscriber("private-chat-x")
    env = envelope(
        "typing.started",
        {"conversationId": "x", "userId": "u2", "userType": "user"},
        socketId=origin.socket_id,
    )
    after = envelope("typing.stopped", {"conversationId": "x", "userId": "u2", "userType": "user"})
    await fanout.publish(env)
    await fanout.publish(after)
    await other.wait_for(lambda got: len(got) >= 2, 15)
    await origin.wait_for(lambda got: len(got) >= 1, 15)
    assert [r.event for r in other.events()] == ["typing-start", "typing-stop"]
    assert [r.event for r in origin.events()] == ["typing-stop"]


async def test_stale_typing_event_is_dropped(fanout: Fanout) -> None:
    """A typing event older than 10 s is dropped and counted, never pushed."""
    sub = await fanout.subscriber("private-chat-old")
    stale = envelope(
        "typing.started",
        {"conversationId": "old", "userId": "u2", "userType": "user"},
        occurredAt=iso_ago(11),
    )
    fresh = envelope(
        "typing.stopped", {"conversationId": "old", "userId": "u2", "userType": "user"}
    )
    await fanout.publish(stale)
    await fanout.publish(fresh)
    await fanout.wait_settled(1, "dropped")
    await sub.wait_for(lambda got: len(got) >= 1, 15)
    assert [r.event for r in sub.events()] == ["typing-stop"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2]", "invalid_event"),
        (
            b'{"id": "a,b", "type": "user.registered", "occurredAt": "2026-11-29T05:00:00Z",'
            b' "data": {"userId": "u1"}}',
            "invalid_event",
        ),
        (
            b'{"id": "abc", "type": "coupon.issued", "occurredAt": "2026-11-29T05:00:00Z",'
            b' "data": {}}',
            "unknown_type",
        ),
    ],
)
async def test_bad_input_is_dead_lettered_and_the_worker_carries_on(
    fanout: Fanout, body: bytes, reason: str
) -> None:
    """Bad input lands in the DLQ with its reason, and a valid event after it is still delivered."""
    sub = await fanout.subscriber("private-admin")
    await fanout.publish(body, routing_key="whatever.key")
    await fanout.publish(envelope("user.registered", {"userId": "u2"}))
    await fanout.wait_settled(1, "dead_lettered", reason)
    await sub.wait_for(lambda got: len(got) >= 1, 15)
    [dead] = await fanout.dead_letters()
    assert dead.body == body
    assert dead.headers["fanout-reason"] == reason
    assert dead.routing_key == "whatever.key"


async def test_readiness_and_metrics_answer(fanout: Fanout) -> None:
    """/readyz says ready with every check ok, and /metrics exposes the settled counter."""
    import aiohttp

    await fanout.publish(envelope("user.registered", {"userId": "u2"}))
    await fanout.wait_settled(1, "delivered")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{fanout.http_port}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {
                "consumer": "ok",
                "soketi": "ok",
                "mongodb": "ok",
            }
        async with session.get(f"http://127.0.0.1:{fanout.http_port}/metrics") as response:
            text = await response.text()
    assert (
        'bazaar_fanout_messages_total{event_type="user.registered",outcome="delivered",'
        'reason=""} 1.0' in text
    )


async def test_cli_publish_reaches_a_subscriber(fanout: Fanout) -> None:
    """`python -m worker publish --type --data` fills id and occurredAt; the event arrives."""
    sub = await fanout.subscriber("private-admin")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "publish",
        "--type",
        "seller.registered",
        "--data",
        f'{{"shopId": "{SHOP_A}"}}',
        env={
            **os.environ,
            "RABBITMQ_URL": fanout.settings.rabbitmq_url.get_secret_value(),
            "EVENTS_EXCHANGE": fanout.settings.events_exchange,
        },
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    await sub.wait_for(lambda got: len(got) >= 1, 15)
    [received] = sub.events()
    assert received.event == "new-seller"
    assert received.data["name"] == "Chai Point"
    assert out.decode().startswith(f"published seller.registered id={received.data['eventId']}")
