"""Outages injected at the network with a loopback TCP proxy: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from devtools.devstack import SoketiServer
from tests.integration.harness import Fanout, envelope, running_worker, wait_until
from tests.integration.proxy import TcpProxy


def _delivered_ids(fanout: Fanout) -> Counter[str]:
    return Counter(r.data["eventId"] for sub in fanout.subscribers for r in sub.events())


async def test_soketi_outage_delivers_everything_once(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """Soketi unreachable for seconds while 300 events arrive: all delivered once, DLQ empty."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        soketi_port=soketi_proxy.port,
    ) as fanout:
        sub = await fanout.subscriber("private-admin")
        envelopes = [envelope("user.registered", {"userId": f"u{i}"}) for i in range(300)]
        for env in envelopes[:50]:
            await fanout.publish(env)
        await sub.wait_for(lambda got: len(got) >= 50, 20)
        # Cut only once the worker has heard Soketi's answers: a call cut after Soketi took it
        # but before its answer arrived may repeat, as the contract allows for timeouts.
        await fanout.wait_settled(50, "delivered")
        await soketi_proxy.cut()
        for env in envelopes[50:]:
            await fanout.publish(env)
        await wait_until(
            lambda: fanout.sample("bazaar_fanout_circuit_open", downstream="soketi") == 1, 20
        )
        # The outage lasts until the worker's probes have been turned away several times.
        await soketi_proxy.wait_rejected(soketi_proxy.rejected + 5, timeout_s=30)
        await soketi_proxy.restore()
        await sub.wait_for(lambda got: len(got) >= 300, 60)
        await fanout.wait_settled(300, "delivered")
        counts = _delivered_ids(fanout)
        assert set(counts) == {e["id"] for e in envelopes}
        assert max(counts.values()) == 1
        assert await fanout.dead_letters() == []
        retried = fanout.settled("retried")
        print(f"retried through tiers: {retried:.0f} of 300")
        assert retried <= 10


def _via(url: str, proxy: TcpProxy, **query: str) -> str:
    """``url`` with its host and port replaced by the proxy's, plus ``query`` parameters."""
    parts = urlsplit(url)
    netloc = f"127.0.0.1:{proxy.port}"
    if parts.username is not None:
        netloc = f"{parts.username}:{parts.password or ''}@{netloc}"
    extra = "&".join(f"{key}={value}" for key, value in query.items())
    joined = "&".join(part for part in (parts.query, extra) if part)
    return urlunsplit((parts.scheme, netloc, parts.path or "/", joined, ""))


def _reconnects(fanout: Fanout) -> float:
    return fanout.sample("bazaar_fanout_reconnects_total", kind="connection")


async def _outage(proxy: TcpProxy, rejected: int = 3) -> None:
    """Cut ``proxy`` and restore it once ``rejected`` more reconnect attempts were turned away."""
    await proxy.cut()
    await proxy.wait_rejected(proxy.rejected + rejected, timeout_s=20)
    await proxy.restore()


async def test_broker_cut_mid_stream_delivers_everything_once(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    broker_proxy: TcpProxy,
    names: Any,
) -> None:
    """The worker's broker connections cut twice while 400 events arrive: all delivered once."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        # aio-pika's default of 5 s between reconnect attempts would make this test slow.
        worker_rabbitmq_url=_via(rabbitmq_url, broker_proxy, reconnect_interval="0.25"),
    ) as fanout:
        sub = await fanout.subscriber("private-admin")
        envelopes = [
            envelope("user.registered", {"userId": f"u{i}"})
            if i % 2
            else envelope("seller.registered", {"shopId": f"s{i}"})
            for i in range(400)
        ]
        for env in envelopes[:150]:
            await fanout.publish(env)
        await sub.wait_for(lambda got: len(got) >= 50, 20)
        await _outage(broker_proxy)  # mid-stream: most of the first 150 are still queued
        for env in envelopes[150:275]:
            await fanout.publish(env)
        await sub.wait_for(lambda got: len(got) >= 200, 20)
        await wait_until(lambda: _reconnects(fanout) >= 1, 20)  # the first cut is behind us
        await _outage(broker_proxy)
        for env in envelopes[275:]:
            await fanout.publish(env)
        await sub.wait_for(lambda got: len(set(_delivered_ids(fanout))) >= 400, 30)
        await _quiet(fanout, names.queue)  # consuming again, and nothing left to repeat
        counts = _delivered_ids(fanout)
        assert set(counts) == {e["id"] for e in envelopes}
        assert max(counts.values()) == 1
        assert await fanout.dead_letters() == []
        await wait_until(lambda: _reconnects(fanout) >= 2, 20)
        reconnects = _reconnects(fanout)
        consumers = fanout.sample("bazaar_fanout_reconnects_total", kind="consumer")
        print(
            f"broker cuts: 2; connection reconnects: {reconnects:.0f}; "
            f"consumers re-registered: {consumers:.0f}; proxied connections: "
            f"{broker_proxy.connections}; rejected attempts: {broker_proxy.rejected}; "
            f"duplicates skipped: {fanout.settled('duplicate'):.0f}; "
            f"retried: {fanout.settled('retried'):.0f}"
        )
        assert reconnects >= 2


USERS = {f"u{i}": {"name": f"User {i}", "email": f"u{i}@example.in"} for i in range(10)}
SHOPS = {f"s{i}": {"name": f"Shop {i}", "avatar": f"s{i}.png"} for i in range(5)}
PRODUCTS = {
    f"p{i}": {"name": f"Product {i}", "shopId": f"s{i % 5}", "images": [f"p{i}.jpg"]}
    for i in range(10)
}


def _enrichable(i: int) -> dict[str, Any]:
    """Event ``i`` of a stream that needs MongoDB for every payload: orders, chat, sign-ups."""
    user = f"u{i % 10}"
    if i % 3 == 0:
        products = [f"p{i % 10}", f"p{(i + 3) % 10}"]
        items = [
            {"productId": p, "shopId": PRODUCTS[p]["shopId"], "quantity": 1, "price": 10}
            for p in products
        ]
        data = {"orderId": f"o{i}", "customerId": user, "items": items, "totalPrice": 20}
        return envelope("order.created", data)
    if i % 3 == 1:
        sender = f"s{i % 5}"
        data = {
            "messageId": f"m{i}",
            "conversationId": "c1",
            "senderId": sender,
            "senderType": "seller",
            "recipientId": user,
            "recipientType": "user",
            "content": f"hello {i}",
        }
        return envelope("message.created", data)
    return envelope("user.registered", {"userId": user})


def _enrichment(env: dict[str, Any]) -> dict[str, Any]:
    """The enriched fields the subscriber must see for ``env``, from the seeded documents."""
    data = env["data"]
    if env["type"] == "order.created":
        return {
            "customerName": USERS[data["customerId"]]["name"],
            "items": [
                {
                    **item,
                    "name": PRODUCTS[item["productId"]]["name"],
                    "image": PRODUCTS[item["productId"]]["images"][0],
                }
                for item in data["items"]
            ],
        }
    if env["type"] == "message.created":
        shop = SHOPS[data["senderId"]]
        return {"senderName": shop["name"], "senderAvatar": shop["avatar"]}
    return dict(USERS[data["userId"]])


async def test_mongodb_outage_delivers_everything_enriched_once(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    mongo_proxy: TcpProxy,
    names: Any,
) -> None:
    """MongoDB unreachable mid-stream: the circuit opens, then all arrive once, fully enriched."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        worker_mongo_url=_via(mongo_url, mongo_proxy),
        mongodb_timeout_s=1.0,
    ) as fanout:
        await fanout.db.users.insert_many([{"_id": k, **v} for k, v in USERS.items()])
        await fanout.db.shops.insert_many([{"_id": k, **v} for k, v in SHOPS.items()])
        await fanout.db.products.insert_many([{"_id": k, **v} for k, v in PRODUCTS.items()])
        sub = await fanout.subscriber("private-admin", "private-chat-c1")
        envelopes = [_enrichable(i) for i in range(240)]
        for env in envelopes[:120]:
            await fanout.publish(env)
        await sub.wait_for(lambda got: len(got) >= 30, 20)
        await mongo_proxy.cut()
        for env in envelopes[120:]:
            await fanout.publish(env)
        await wait_until(
            lambda: fanout.sample("bazaar_fanout_circuit_open", downstream="mongodb") == 1, 20
        )
        # The outage lasts until the worker has been turned away several more times.
        await mongo_proxy.wait_rejected(mongo_proxy.rejected + 3, timeout_s=20)
        await mongo_proxy.restore()
        await sub.wait_for(lambda got: len(set(_delivered_ids(fanout))) >= 240, 30)
        # Events pushed before their id could be recorded come back from the retry tier too.
        await fanout.wait_settled(240, "delivered")
        await _quiet(fanout, names.queue)
        assert fanout.sample("bazaar_fanout_circuit_open", downstream="mongodb") == 0
        assert (fanout.settled("delivered"), fanout.settled("duplicate")) == (240, 0)
        counts = _delivered_ids(fanout)
        assert set(counts) == {e["id"] for e in envelopes}
        assert max(counts.values()) == 1
        payloads = {r.data["eventId"]: r.data for r in sub.events()}
        for env in envelopes:
            expected = _enrichment(env)
            assert {k: payloads[env["id"]][k] for k in expected} == expected, env["type"]
        assert await fanout.dead_letters() == []
        retried = fanout.settled("retried")
        print(
            f"mongodb cut: circuit opened; retried through tiers: {retried:.0f} of 240; "
            f"rejected connections: {mongo_proxy.rejected}"
        )
        assert retried <= 10


async def _ready_in(fanout: Fanout, queue: str) -> int:
    """Messages ready in ``queue`` now, asked of the broker over the test's own connection."""
    async with fanout.connection.channel() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def _quiet(fanout: Fanout, queue: str, timeout_s: float = 20) -> None:
    """Wait until the worker consumes, holds nothing in flight and ``queue`` has nothing ready."""
    state: tuple[float, float, int] = (0, 0, 0)
    try:
        async with asyncio.timeout(timeout_s):
            while True:  # neither metrics nor queue depth notify on change
                state = (
                    fanout.sample("bazaar_fanout_consumer_up"),
                    fanout.sample("bazaar_fanout_in_flight_messages"),
                    await _ready_in(fanout, queue),
                )
                if state == (1, 0, 0):
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"not quiet: consumer_up, in_flight, ready = {state}") from None
