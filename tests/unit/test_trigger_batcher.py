"""TriggerBatcher: deliveries of many messages share calls; a conversation's calls keep order."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from handlers.model import Delivery
from worker.batching import TriggerBatcher
from worker.errors import RejectedBySoketi
from worker.soketi import Limits


class Client:
    """A Soketi client whose calls finish when the test says so."""

    limits = Limits()

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.finish: list[asyncio.Event] = []
        self.refuse: set[str] = set()

    async def send_batch(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.started.append([str(e["data"]) for e in entries])
        done = asyncio.Event()
        self.finish.append(done)
        await done.wait()
        if self.refuse & {str(e["data"]) for e in entries}:
            raise RejectedBySoketi("Soketi answered 400: bad event")

    async def deliver(self, *args: Any) -> int:  # only for oversized messages
        raise AssertionError("not expected")


def deliveries(channel: str, *labels: str) -> list[Delivery]:
    return [Delivery(channel, "new-message", {"label": label}) for label in labels]


async def until(condition: Any) -> None:
    async with asyncio.timeout(1):
        while not condition():  # noqa: ASYNC110  # the batcher has no event of its own
            await asyncio.sleep(0)


async def test_a_later_call_on_the_same_conversation_waits_for_the_earlier_one() -> None:
    """A full call for chat c1 is in flight; the next call carrying c1 starts only once it
    has finished, while a call for another channel is not held back."""
    client = Client()
    batcher = TriggerBatcher(client, linger_s=0)  # type: ignore[arg-type]  # stand-in client
    first = asyncio.create_task(
        batcher.deliver(deliveries("private-chat-c1", *(f"a{i}" for i in range(10))))
    )
    await until(lambda: len(client.started) == 1)
    queued = asyncio.Event()
    second = asyncio.create_task(
        batcher.deliver(deliveries("private-chat-c1", "b"), None, queued.set)
    )
    await until(queued.is_set)
    await until(lambda: not batcher._pending)  # the call for "b" is flushed, and waits
    other = asyncio.create_task(batcher.deliver(deliveries("private-admin", "x")))
    await until(lambda: len(client.started) == 2)
    # "b" was flushed first but is held behind the call on c1; another channel overtakes.
    assert client.started[1] == ['{"label":"x"}']
    client.finish[1].set()
    await other
    client.finish[0].set()
    await first
    await until(lambda: len(client.started) == 3)
    assert client.started[2] == ['{"label":"b"}']
    client.finish[2].set()
    await second


async def test_queued_is_called_once_the_deliveries_are_in_line() -> None:
    """``queued`` fires when the deliveries join a pending call, before Soketi answers."""
    client = Client()
    batcher = TriggerBatcher(client, linger_s=0)  # type: ignore[arg-type]  # stand-in client
    queued = asyncio.Event()
    task = asyncio.create_task(
        batcher.deliver(deliveries("private-chat-c1", "a"), None, queued.set)
    )
    await until(queued.is_set)
    assert not task.done()
    await until(lambda: len(client.started) == 1)
    client.finish[0].set()
    assert await task == 1


async def test_a_refused_shared_call_is_retried_per_message_in_order() -> None:
    """When Soketi refuses a call carrying several messages, each is sent alone, in order;
    only the bad one fails."""
    client = Client()
    client.refuse = {'{"label":"bad"}'}
    batcher = TriggerBatcher(client, linger_s=0.01)  # type: ignore[arg-type]  # stand-in client
    good = asyncio.create_task(batcher.deliver(deliveries("private-chat-c1", "good")))
    bad = asyncio.create_task(batcher.deliver(deliveries("private-chat-c1", "bad")))
    later = asyncio.create_task(batcher.deliver(deliveries("private-chat-c1", "later")))
    for n in range(1, 5):
        await until(lambda n=n: len(client.started) == n)
        client.finish[n - 1].set()
    assert client.started[0] == ['{"label":"good"}', '{"label":"bad"}', '{"label":"later"}']
    assert client.started[1:] == [['{"label":"good"}'], ['{"label":"bad"}'], ['{"label":"later"}']]
    assert await good == 1 and await later == 1
    try:
        await bad
    except RejectedBySoketi:
        pass
    else:
        raise AssertionError("the refused message must fail")
