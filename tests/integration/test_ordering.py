"""A conversation's and an order's events reach subscribers in publish order, with hundreds
in flight (and, for orders, Soketi calls failing and retried on the way)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aio_pika
import orjson

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber, Received, sign_channel
from tests.integration.harness import envelope, running_worker
from tests.integration.proxy import TcpProxy
from worker.retry import RetryPolicy

CONVERSATIONS = [f"c{i}" for i in range(6)]
PER_CONVERSATION = 100


def chat(conversation: str, n: int) -> dict[str, Any]:
    """The ``n``-th message of ``conversation``."""
    return envelope(
        "message.created",
        {
            "messageId": f"{conversation}-{n}",
            "conversationId": conversation,
            "senderId": "u1",
            "senderType": "user",
            "recipientId": "s1",
            "recipientType": "seller",
            "content": f"message {n}",
        },
    )


async def test_chat_order_is_kept_with_many_messages_in_flight(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """600 chat messages over 6 conversations wait in the queue; a worker with prefetch 200
    then takes them (hundreds at once, lookups finishing in any order): each chat receives
    them in publish order, with history cursors 1, 2, 3… in that same order."""
    worker = {
        "rabbitmq_url": rabbitmq_url,
        "mongo_url": mongo_url,
        "soketi": soketi,
        "names": names,
        "prefetch_count": 200,
    }
    async with running_worker(**worker):
        pass  # declares the exchange and the queue, then stops consuming

    connection = await aio_pika.connect_robust(rabbitmq_url)
    sub = PusherSubscriber()
    try:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(names.exchange, ensure=True)
        for n in range(PER_CONVERSATION):
            for conversation in CONVERSATIONS:
                body = orjson.dumps(chat(conversation, n))
                await events.publish(aio_pika.Message(body), routing_key="message.created")

        await sub.connect(soketi.host, soketi.port, soketi.key)
        for conversation in CONVERSATIONS:
            await sub.subscribe(
                f"private-chat-{conversation}",
                lambda socket_id, name: sign_channel(soketi.key, soketi.secret, socket_id, name),
            )
        async with running_worker(**worker) as fanout:
            total = len(CONVERSATIONS) * PER_CONVERSATION
            await sub.wait_for(lambda got: len(got) >= total, 60)
            in_flight_peak = fanout.sample("bazaar_fanout_triggers_per_request_count")
    finally:
        await sub.close()
        await connection.close()

    for conversation in CONVERSATIONS:
        received = sub.events(f"private-chat-{conversation}")
        numbers = [int(r.data["messageId"].split("-")[1]) for r in received]
        assert numbers == list(range(PER_CONVERSATION)), conversation
        # Numbered in publish order too: a client catching up sees the same order.
        cursors = [int(r.data["cursor"]) for r in received]
        assert cursors == list(range(1, PER_CONVERSATION + 1)), conversation
    # Many messages were handled together: their deliveries shared Soketi calls.
    assert in_flight_peak < total / 2


ORDERS = [f"o{i}" for i in range(8)]
CUSTOMERS = ("u1", "u2")
SHOPS = ("sA", "sB", "sC")
PER_ORDER = 20
STATUSES = ("Transferred to delivery partner", "Shipping", "Received", "On the way", "Delivered")


def order_event(order: str, n: int) -> dict[str, Any]:
    """The ``n``-th event of ``order``: created, then paid, then status after status.

    Event ids carry ``(order, n)``; every one reaches the order's channel, its customer's and
    its shop's personal channels and ``private-admin``.
    """
    i = int(order.removeprefix("o"))
    customer, shop = CUSTOMERS[i % len(CUSTOMERS)], SHOPS[i % len(SHOPS)]
    event_id = f"{order}-{n:03d}"
    if n == 0:  # the only one with lookups (users, products): slower to get ready
        item = {"productId": f"p-{shop}", "shopId": shop, "quantity": 1, "price": 180}
        data = {"orderId": order, "customerId": customer, "items": [item], "totalPrice": 180}
        return envelope("order.created", data, id=event_id)
    if n == 1:
        data = {"orderId": order, "paymentId": f"pay-{order}", "customerId": customer}
        return envelope("payment.received", {**data, "shopIds": [shop], "amount": 180}, id=event_id)
    status = STATUSES[n % len(STATUSES)]
    data = {"orderId": order, "customerId": customer, "shopId": shop, "status": status}
    return envelope("order.status_changed", {**data, "message": f"step {n}"}, id=event_id)


def per_order(received: Sequence[Received]) -> dict[str, list[tuple[int, int]]]:
    """Each order's ``(n, cursor)`` in arrival order, a repeated event id counted once (a
    Soketi call retried after Soketi took it repeats its events; clients drop them by id)."""
    seen: set[str] = set()
    found: dict[str, list[tuple[int, int]]] = {}
    for r in received:
        event_id = r.data["eventId"]
        if event_id not in seen:
            seen.add(event_id)
            order, n = event_id.split("-")
            found.setdefault(order, []).append((int(n), int(r.data["cursor"])))
    return found


async def prefill(url: str, exchange: str, stream: list[dict[str, Any]]) -> None:
    """Publish ``stream`` in order (confirmed) while no worker consumes: the queue fills up."""
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(exchange, ensure=True)
        for event in stream:
            await events.publish(aio_pika.Message(orjson.dumps(event)), routing_key=event["type"])


async def flap(sub: PusherSubscriber, soketi: TcpProxy, total: int) -> None:
    """Cut the path to Soketi at a third and at two thirds of the stream, each time until the
    worker's calls were refused five more times (so retried), then restore it."""
    for share in (1 / 3, 2 / 3):
        await sub.wait_for(lambda got, share=share: len(got) >= total * share, 60)
        refused = soketi.rejected
        await soketi.cut()
        await soketi.wait_rejected(refused + 5, 30)
        await soketi.restore()


async def test_order_events_keep_publish_order_on_every_channel_through_retries(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """160 events of 8 orders wait in the queue; a worker with prefetch 200 takes them while
    its Soketi calls fail twice for a while and are retried: on the order's channel, the
    customer's, the shop's and the admins', each order's events arrive in publish order, and
    on the order's channel with cursors 1, 2, 3... in that order."""
    worker = {
        "rabbitmq_url": rabbitmq_url,
        "mongo_url": mongo_url,
        "soketi": soketi,
        "names": names,
        "prefetch_count": 200,
        "soketi_port": soketi_proxy.port,
        # Retried in-process, with backoff, for longer than a cut lasts: nothing reaches the
        # retry tiers (which give up order by design) or opens the circuit.
        "retry": RetryPolicy(attempts=100, total_s=30.0, initial_s=0.01, max_wait_s=0.05),
    }
    async with running_worker(**worker):
        pass  # declares the exchange and the queue, then stops consuming

    stream = [order_event(order, n) for n in range(PER_ORDER) for order in ORDERS]
    await prefill(rabbitmq_url, names.exchange, stream)
    sub = PusherSubscriber()
    channels = [
        *(f"private-order-{order}" for order in ORDERS),
        *(f"private-user-{customer}" for customer in CUSTOMERS),
        *(f"private-seller-{shop}" for shop in SHOPS),
        "private-admin",
    ]
    try:
        await sub.connect(soketi.host, soketi.port, soketi.key)
        for name in channels:
            await sub.subscribe(
                name, lambda socket_id, ch: sign_channel(soketi.key, soketi.secret, socket_id, ch)
            )
        total = len(ORDERS) * PER_ORDER * 4  # each event reaches four channels
        async with running_worker(**worker) as fanout:
            await flap(sub, soketi_proxy, total)
            await sub.wait_for(
                lambda got: len({(r.channel, r.data["eventId"]) for r in got}) >= total, 60
            )
            await fanout.wait_settled(len(ORDERS) * PER_ORDER, "delivered")
            assert fanout.settled("retried") == 0
            assert fanout.settled("dead_lettered") == 0
    finally:
        await sub.close()

    publish_order = list(range(PER_ORDER))
    for name in channels:
        for order, got in per_order(sub.events(name)).items():
            assert [n for n, _ in got] == publish_order, (name, order)
            cursors = [cursor for _, cursor in got]
            assert cursors == sorted(set(cursors)), (name, order)
    for order in ORDERS:
        got = per_order(sub.events(f"private-order-{order}"))[order]
        assert [cursor for _, cursor in got] == list(range(1, PER_ORDER + 1)), order
