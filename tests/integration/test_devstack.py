"""The local stack works as other tests assume: Soketi delivers and checks auth, Mongo answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pusher
import pytest
from pymongo import AsyncMongoClient

from devtools.devstack import SoketiServer, start_soketi
from devtools.watch import PusherSubscriber, Received, SubscriptionError, sign_channel
from tests.conftest import Names

pytestmark = pytest.mark.integration

WAIT_S = 10.0


def _trigger(server: SoketiServer, channel: str, event: str, data: dict[str, Any]) -> Any:
    """Publish through Soketi's HTTP API exactly as a Pusher server library would."""
    client = pusher.Pusher(
        app_id=server.app_id,
        key=server.key,
        secret=server.secret,
        host=server.host,
        port=server.port,
        ssl=False,
    )
    return client.trigger(channel, event, data)


def _one(event: str) -> Any:
    return lambda got: any(r.event == event for r in got)


@pytest.fixture
async def subscriber(soketi: SoketiServer) -> AsyncIterator[PusherSubscriber]:
    async with PusherSubscriber() as sub:
        await sub.connect(soketi.host, soketi.port, soketi.key)
        yield sub


async def test_private_channel_receives_triggered_event(
    soketi: SoketiServer, subscriber: PusherSubscriber, names: Names
) -> None:
    """A private subscriber authorized with sign_channel receives an event sent via the HTTP API."""
    channel = f"private-{names.prefix}"
    await subscriber.subscribe(
        channel, lambda sid, ch: sign_channel(soketi.key, soketi.secret, sid, ch)
    )

    await asyncio.to_thread(_trigger, soketi, channel, "new-order", {"orderId": "o1", "n": 2})
    got = await subscriber.wait_for(_one("new-order"), WAIT_S)

    assert [(r.channel, r.event, r.data) for r in got] == [
        (channel, "new-order", {"orderId": "o1", "n": 2})
    ]
    assert isinstance(got[0], Received)


async def test_public_channel_receives_triggered_event(
    soketi: SoketiServer, subscriber: PusherSubscriber, names: Names
) -> None:
    """A public channel needs no authorizer and receives the triggered event."""
    channel = names.prefix

    await subscriber.subscribe(channel)
    await asyncio.to_thread(_trigger, soketi, channel, "system-alert", {"title": "hi"})
    await subscriber.wait_for(_one("system-alert"), WAIT_S)

    assert [r.data for r in subscriber.events(channel, "system-alert")] == [{"title": "hi"}]


async def test_async_authorizer_is_awaited(
    soketi: SoketiServer, subscriber: PusherSubscriber, names: Names
) -> None:
    """An async authorizer is awaited and its auth string accepted."""

    async def authorize(socket_id: str, channel: str) -> str:
        return sign_channel(soketi.key, soketi.secret, socket_id, channel)

    await subscriber.subscribe(f"private-{names.prefix}", authorize)


async def test_private_subscribe_with_wrong_signature_fails(
    soketi: SoketiServer, subscriber: PusherSubscriber, names: Names
) -> None:
    """Soketi refuses a private subscription signed with the wrong secret."""
    channel = f"private-{names.prefix}"

    with pytest.raises(SubscriptionError, match="AuthError"):
        await subscriber.subscribe(
            channel, lambda sid, ch: sign_channel(soketi.key, "not-the-secret", sid, ch)
        )


async def test_private_subscribe_without_authorizer_is_refused_locally(
    subscriber: PusherSubscriber,
) -> None:
    """Subscribing to a private channel without an authorizer is a caller error."""
    with pytest.raises(ValueError, match="authorizer"):
        await subscriber.subscribe("private-admin")


async def test_wait_for_times_out_with_a_summary(
    subscriber: PusherSubscriber, names: Names
) -> None:
    """wait_for raises TimeoutError naming what was received when the condition never holds."""
    await subscriber.subscribe(names.prefix)

    with pytest.raises(TimeoutError, match=r"received 0 event\(s\)"):
        await subscriber.wait_for(_one("never"), timeout_s=0.2)


async def test_soketi_restart_keeps_port_and_accepts_triggers() -> None:
    """After restart() Soketi listens on the same port and delivers triggered events again."""
    server = await asyncio.to_thread(start_soketi, "4243", "restart-key", "restart-secret")
    try:
        port = server.port
        async with PusherSubscriber() as before:
            await before.connect(server.host, server.port, server.key)
            await asyncio.to_thread(server.stop)
            assert not server.is_running
            with pytest.raises(ConnectionError):
                await before.wait_for(_one("never"), WAIT_S)

        await asyncio.to_thread(server.restart)

        assert server.is_running
        assert server.port == port
        async with PusherSubscriber() as after:
            await after.connect(server.host, server.port, server.key)
            await after.subscribe("outage")
            await asyncio.to_thread(_trigger, server, "outage", "back", {"ok": True})
            await after.wait_for(_one("back"), WAIT_S)
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.is_running


async def test_max_payload_kb_is_enforced_with_status_200() -> None:
    """Soketi 1.6.1 rejects data over max_payload_kb with HTTP 200 and code 413 in the body."""
    server = await asyncio.to_thread(
        start_soketi, "4244", "small-key", "small-secret", max_payload_kb=1
    )
    try:
        fits = await asyncio.to_thread(_trigger, server, "small", "fits", {"x": "a" * 500})
        # pusher raises on a non-2xx status; it does not here, because Soketi answers
        # every rejection with "200 OK" and puts the real status in the body.
        too_big = await asyncio.to_thread(_trigger, server, "small", "big", {"x": "a" * 2000})
    finally:
        await asyncio.to_thread(server.stop)

    assert fits == {"ok": True}
    assert too_big == {"error": "The event data should be less than 1 KB.", "code": 413}


async def test_mongo_standin_pings_stores_and_finds(mongo_url: str, names: Names) -> None:
    """The Mongo stand-in answers ping and finds a stored document by _id in a per-test db."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000
    )
    try:
        assert (await client.admin.command("ping"))["ok"] == 1
        users = client[names.db]["users"]
        await users.insert_one({"_id": "u1", "name": "Asha", "tags": ["a", "b"]})

        found = await users.find_one({"_id": "u1"})

        assert found == {"_id": "u1", "name": "Asha", "tags": ["a", "b"]}
        assert json.dumps(found)  # plain JSON-able values, no driver-specific types
    finally:
        await client.close()


async def test_rabbitmq_accepts_the_tests_exchange_and_queue(
    rabbitmq_url: str, names: Names
) -> None:
    """The broker routes a message through the test's own exchange and queue."""
    connection = await aio_pika.connect(rabbitmq_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(names.queue)
        await queue.bind(exchange, routing_key="order.*")

        await exchange.publish(aio_pika.Message(b'{"id": "e1"}'), routing_key="order.created")
        message = await queue.get(timeout=5, fail=True)

        assert message is not None
        assert message.body == b'{"id": "e1"}'
        await message.ack()
