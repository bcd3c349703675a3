"""``make demo`` (``python -m devtools demo``): the whole pipeline, with a marketplace on it.

Starts local Soketi and the MongoDB stand-in (or uses ``MONGODB_URL``), makes sure RabbitMQ
runs, seeds shops, customers and products, runs the worker, publishes a believable stream
(orders moving through statuses, chats in English and Hindi with typing, stock running low)
and prints what each watched channel receives, as a browser subscribed to it would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
from pymongo import AsyncMongoClient

from devtools import devstack
from devtools.watch import PusherSubscriber, Received, sign_channel
from worker import app
from worker.broker.connections import publishing
from worker.config import Settings
from worker.events import message_of
from worker.ops.publish import complete, validate

SHOPS = [
    ("shop-chai", "Chai Point"),
    ("shop-kirana", "Kirana Corner"),
    ("shop-handloom", "Handloom House"),
]
CUSTOMERS = [
    ("user-aarav", "Aarav Sharma"),
    ("user-priya", "Priya Patel"),
    ("user-meera", "Meera Iyer"),
    ("user-john", "John Mathew"),
]
PRODUCTS = [
    ("prod-masala-chai", "Masala Chai 250g", "shop-chai", 180.0),
    ("prod-green-tea", "Darjeeling Green Tea", "shop-chai", 320.0),
    ("prod-basmati", "Basmati Rice 5kg", "shop-kirana", 640.0),
    ("prod-toor-dal", "Toor Dal 1kg", "shop-kirana", 155.0),
    ("prod-saree", "Kanchipuram Silk Saree", "shop-handloom", 8900.0),
    ("prod-kurta", "Cotton Kurta", "shop-handloom", 1250.0),
]
CHATS = [
    ("Is the masala chai fresh stock?", "Yes, packed this week."),
    ("क्या यह साड़ी असली कांचीपुरम सिल्क है?", "जी हाँ, प्रमाणपत्र के साथ आती है।"),
    ("Can you deliver by Friday?", "Friday works, we ship tomorrow."),
    ("दाल का 5 किलो पैक मिलेगा?", "हाँ, कल तक स्टॉक आ जाएगा।"),
]
STATUSES = ["confirmed", "packed", "shipped", "out_for_delivery", "delivered"]
WATCHED_SHOP, WATCHED_CUSTOMER = SHOPS[0][0], CUSTOMERS[0][0]


@dataclass(frozen=True, slots=True)
class Stack:
    """The local services the demo runs against."""

    settings: Settings
    soketi: devstack.SoketiServer
    mongo: devstack.MongoStandin | None


async def main(*, duration_s: float = 0, rate: float = 4.0) -> int:
    """Run the demo until Ctrl-C or ``duration_s`` seconds; return the exit code."""
    stack = _start_stack()
    try:
        await _seed(stack.settings)
        return await _run(stack, duration_s, rate)
    finally:
        stack.soketi.stop()
        if stack.mongo is not None:
            stack.mongo.stop()


def _start_stack() -> Stack:
    rabbitmq_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    parts = urlsplit(rabbitmq_url)
    _say(f"RabbitMQ   {parts.hostname}:{parts.port or 5672} (starting it if needed)")
    devstack.ensure_rabbitmq(parts.hostname or "127.0.0.1", parts.port or 5672)
    soketi = devstack.start_soketi("1001", key="demo-key", secret=secrets.token_hex(16))
    _say(f"Soketi     {soketi.url} (app 1001, key demo-key)")
    mongo_url = os.environ.get("MONGODB_URL")
    standin = None
    if mongo_url is None:
        standin = devstack.start_mongo_standin()
        mongo_url = standin.url
        _say(f"MongoDB    {mongo_url} (nx-27017 stand-in, in memory)")
    else:
        _say("MongoDB    MONGODB_URL")
    settings = Settings(
        rabbitmq_url=rabbitmq_url,
        mongodb_url=mongo_url,
        mongodb_db=os.environ.get("MONGODB_DB", "bazaar_demo"),
        events_exchange=os.environ.get("EVENTS_EXCHANGE", "bazaar.events"),
        worker_queue=os.environ.get("WORKER_QUEUE", "bazaar.fanout.demo"),
        soketi_app_id=soketi.app_id,
        soketi_app_key=soketi.key,
        soketi_app_secret=soketi.secret,
        soketi_host=soketi.host,
        soketi_port=soketi.port,
        http_host="127.0.0.1",
        http_port=int(os.environ.get("HTTP_PORT", "0")),
        retry_delays_s=(2, 5, 15),
        mongodb_ttl_indexes=standin is None,  # the stand-in purges TTL collections per query
        # A random local secret: the console's demo tokens are valid for this run only.
        auth_jwt_secret=secrets.token_hex(32),
        log_format="console",
        log_level="warning",
    )
    return Stack(settings, soketi, standin)


async def _seed(settings: Settings) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_url.get_secret_value(), serverSelectionTimeoutMS=5000
    )
    try:
        db = client[settings.mongodb_db]
        for collection, docs in (
            ("shops", [{"_id": i, "name": n, "avatar": f"/img/{i}.png"} for i, n in SHOPS]),
            (
                "users",
                [
                    {"_id": i, "name": n, "email": f"{i[5:]}@example.in", "role": "user"}
                    for i, n in CUSTOMERS
                ],
            ),
            (
                "products",
                [
                    {"_id": i, "name": n, "shopId": s, "images": [f"/img/{i}.jpg"]}
                    for i, n, s, _ in PRODUCTS
                ],
            ),
            (
                "conversations",
                [
                    {"_id": f"conv-{c}-{s}", "members": [c, s]}
                    for c, _ in CUSTOMERS
                    for s, _ in SHOPS
                ],
            ),
        ):
            for doc in docs:
                await db[collection].replace_one({"_id": doc["_id"]}, doc, upsert=True)
    finally:
        await client.close()


async def _run(stack: Stack, duration_s: float, rate: float) -> int:
    stop = asyncio.Event()
    started = asyncio.get_running_loop().create_future()
    worker = asyncio.create_task(
        app.run(stack.settings, stop=stop, on_started=started.set_result), name="worker"
    )
    watcher: PusherSubscriber | None = None
    try:
        info = await asyncio.wait_for(asyncio.shield(started), 30)
        _say(f"Worker     http://127.0.0.1:{info.http_port}/metrics  /readyz  /healthz")
        _say(f"Console    {console_url(stack.settings, info.http_port)}")
        watcher = await _watch(stack)
        _say("Publishing a marketplace stream; Ctrl-C stops.\n")
        printer = asyncio.create_task(_print_received(watcher), name="printer")
        try:
            await _publish_stream(stack.settings, duration_s, rate)
            await asyncio.sleep(1.5)  # let the tail of the stream arrive before stopping
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
        _say(f"\n{len(watcher.events())} events received on the watched channels.")
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    finally:
        if watcher is not None:
            await watcher.close()
        stop.set()
        await worker


def console_url(settings: Settings, http_port: int, ttl_s: float = 12 * 3600) -> str:
    """The console's address with a demo token per pane in its fragment (never sent to servers)."""
    secret = settings.auth_jwt_secret
    assert secret is not None
    expires = int(time.time() + ttl_s)

    def mint(sub: str, role: str) -> str:
        claims = {"sub": sub, "role": role, "exp": expires}
        return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")

    fragment = "&".join(
        (
            f"admin={mint('admin-demo', 'admin')}",
            f"seller={mint(WATCHED_SHOP, 'seller')}",
            f"customer={mint(WATCHED_CUSTOMER, 'user')}",
            f"chat=conv-{WATCHED_CUSTOMER}-{WATCHED_SHOP}",
        )
    )
    return f"http://127.0.0.1:{http_port}/console#{fragment}"


async def _watch(stack: Stack) -> PusherSubscriber:
    watcher = PusherSubscriber()
    await watcher.connect(stack.soketi.host, stack.soketi.port, stack.soketi.key)

    def authorize(socket_id: str, channel: str) -> str:
        return sign_channel(stack.soketi.key, stack.soketi.secret, socket_id, channel)

    channels = [
        "private-admin",
        f"private-seller-{WATCHED_SHOP}",
        f"private-user-{WATCHED_CUSTOMER}",
        f"private-chat-conv-{WATCHED_CUSTOMER}-{WATCHED_SHOP}",
        "public",
    ]
    for channel in channels:
        await watcher.subscribe(channel, authorize if channel != "public" else None)
    _say("Watching   " + ", ".join(channels))
    return watcher


async def _print_received(watcher: PusherSubscriber) -> None:
    shown = 0

    def more_than(count: int) -> Callable[[list[Received]], bool]:
        return lambda received: len(received) > count

    while True:
        await watcher.wait_for(more_than(shown), timeout_s=3600)
        for received in watcher.events()[shown:]:
            print(_line(received), flush=True)
        shown = len(watcher.events())


def _line(received: Received) -> str:
    data = received.data if isinstance(received.data, dict) else {}
    keys = (
        "orderId",
        "status",
        "shopTotal",
        "content",
        "productName",
        "currentStock",
        "title",
        "name",
        "customerName",
        "senderName",
        "amount",
        "userId",
    )
    summary = " ".join(f"{k}={data[k]}" for k in keys if data.get(k) is not None)
    age_ms = time.time() * 1000 - data.get("timestamp", time.time() * 1000)
    return (
        f"{datetime.now().strftime('%H:%M:%S')}  {received.channel:<38} "
        f"{received.event:<17} {summary[:90]}  ({age_ms:.0f} ms)"
    )


async def _publish_stream(settings: Settings, duration_s: float, rate: float) -> None:
    url = settings.rabbitmq_url.get_secret_value()
    async with publishing(url, settings.events_exchange, purpose="demo") as exchange:
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        for envelope in _marketplace(random.Random(7)):
            if time.monotonic() >= deadline:
                return
            event = validate(complete(envelope))
            await exchange.publish(message_of(event), routing_key=event.type)
            await asyncio.sleep(1 / rate)


def _marketplace(rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless, believable stream of catalogue events."""
    orders: list[dict[str, Any]] = []
    stock = {p[0]: 12 for p in PRODUCTS}
    step = 0
    while True:
        step += 1
        customer = CUSTOMERS[0] if step % 3 == 0 else rng.choice(CUSTOMERS)
        roll = rng.random()
        if roll < 0.3 or not orders:
            picks = rng.sample(PRODUCTS, rng.randint(1, 3))
            if step % 2 == 0 and not any(p[2] == WATCHED_SHOP for p in picks):
                picks.append(PRODUCTS[0])
            items: list[dict[str, Any]] = [
                {"productId": p[0], "shopId": p[2], "quantity": rng.randint(1, 3), "price": p[3]}
                for p in picks
            ]
            order: dict[str, Any] = {
                "orderId": f"ord-{uuid.uuid4().hex[:10]}",
                "customerId": customer[0],
                "items": items,
                "status": 0,
            }
            orders.append(order)
            yield _env(
                "order.created",
                {
                    "orderId": order["orderId"],
                    "customerId": customer[0],
                    "items": items,
                    "totalPrice": sum(i["price"] * i["quantity"] for i in items),
                    "currency": "INR",
                },
            )
            yield _env(
                "payment.received",
                {
                    "orderId": order["orderId"],
                    "paymentId": f"pay-{uuid.uuid4().hex[:10]}",
                    "customerId": customer[0],
                    "shopIds": sorted({i["shopId"] for i in items}),
                    "amount": sum(i["price"] * i["quantity"] for i in items),
                    "currency": "INR",
                    "method": rng.choice(["upi", "card", "cod"]),
                },
            )
            for item in items:
                stock[item["productId"]] -= item["quantity"]
                if stock[item["productId"]] <= 5:
                    yield _env(
                        "product.stock_low",
                        {
                            "productId": item["productId"],
                            "currentStock": max(stock[item["productId"]], 0),
                            "threshold": 5,
                        },
                    )
                    stock[item["productId"]] = 20
        elif roll < 0.6:
            order = rng.choice(orders)
            if order["status"] >= len(STATUSES):
                orders.remove(order)
                continue
            previous = "placed" if order["status"] == 0 else STATUSES[order["status"] - 1]
            status = STATUSES[order["status"]]
            order["status"] += 1
            yield _env(
                "order.status_changed",
                {
                    "orderId": order["orderId"],
                    "customerId": order["customerId"],
                    "shopId": order["items"][0]["shopId"],
                    "status": status,
                    "previousStatus": previous,
                    "message": f"Your order is {status.replace('_', ' ')}",
                },
            )
        elif roll < 0.9:
            shop = SHOPS[0] if step % 2 == 0 else rng.choice(SHOPS)
            conversation = f"conv-{customer[0]}-{shop[0]}"
            question, answer = rng.choice(CHATS)
            yield _env(
                "typing.started",
                {"conversationId": conversation, "userId": customer[0], "userType": "user"},
            )
            yield _env(
                "message.created",
                {
                    "messageId": f"msg-{uuid.uuid4().hex[:10]}",
                    "conversationId": conversation,
                    "senderId": customer[0],
                    "senderType": "user",
                    "recipientId": shop[0],
                    "recipientType": "seller",
                    "content": question,
                },
            )
            yield _env(
                "typing.stopped",
                {"conversationId": conversation, "userId": customer[0], "userType": "user"},
            )
            yield _env(
                "typing.started",
                {"conversationId": conversation, "userId": shop[0], "userType": "seller"},
            )
            yield _env(
                "typing.stopped",
                {"conversationId": conversation, "userId": shop[0], "userType": "seller"},
            )
            yield _env(
                "message.created",
                {
                    "messageId": f"msg-{uuid.uuid4().hex[:10]}",
                    "conversationId": conversation,
                    "senderId": shop[0],
                    "senderType": "seller",
                    "recipientId": customer[0],
                    "recipientType": "user",
                    "content": answer,
                },
            )
        elif roll < 0.96:
            yield _env("user.registered", {"userId": rng.choice(CUSTOMERS)[0]})
        else:
            yield _env(
                "system.alert",
                {
                    "severity": "info",
                    "title": "Festive sale",
                    "message": "Diwali offers go live at midnight",
                    "audience": "public",
                },
            )


def _env(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": event_type,
        "data": data,
        "source": "demo",
        "occurredAt": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
