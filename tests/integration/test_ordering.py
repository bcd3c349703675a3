"""One conversation's events reach subscribers in publish order, with hundreds in flight."""

from __future__ import annotations

from typing import Any

from tests.integration.harness import envelope, running_worker
from worker.devstack import SoketiServer


async def test_chat_order_is_kept_with_many_messages_in_flight(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """600 chat messages over 6 conversations, prefetch 200: each chat receives them in order."""
    conversations = [f"c{i}" for i in range(6)]
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        prefetch_count=200,
    ) as fanout:
        sub = await fanout.subscriber(*(f"private-chat-{c}" for c in conversations))
        for n in range(100):
            for conversation in conversations:
                await fanout.publish(
                    envelope(
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
                )
        await sub.wait_for(lambda got: len(got) >= 600, 60)
        for conversation in conversations:
            numbers = [
                int(r.data["messageId"].split("-")[1])
                for r in sub.events(f"private-chat-{conversation}")
            ]
            assert numbers == list(range(100)), conversation
        assert fanout.sample("bazaar_fanout_triggers_per_request_count") < 600
