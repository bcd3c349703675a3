"""One conversation's events reach subscribers in publish order, with hundreds in flight."""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber, sign_channel
from tests.integration.harness import envelope, running_worker

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
