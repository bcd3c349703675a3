"""TriggerBatcher: deliveries of many messages share calls; a conversation's calls keep order."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from handlers.model import Delivery
from worker.errors import RejectedBySoketi
from worker.soketi.api import Limits, Planned
from worker.soketi.batcher import TriggerBatcher


class Client:
    """A Soketi client whose calls finish when the test says so."""

    limits = Limits()

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.finish: list[asyncio.Event] = []
        self.refuse: set[str] = set()
        self.planned: list[Planned] = []

    async def send_batch(self, entries: Sequence[Mapping[str, Any]]) -> None:
        self.started.append([str(e["data"]) for e in entries])
        done = asyncio.Event()
        self.finish.append(done)
        await done.wait()
        if self.refuse & {str(e["data"]) for e in entries}:
            raise RejectedBySoketi("Soketi answered 400: bad event")

    async def send(self, planned: Planned) -> None:  # only for oversized messages
        self.planned.append(planned)


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
    other = asyncio.create_task(batcher.deliver(deliveries("private-admin", "x")))
    await until(lambda: len(client.started) == 2)
    # "b" was handed over first but is held behind the call on c1; another channel overtakes.
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


async def test_a_message_held_on_a_conversation_holds_later_ones_on_it_but_not_others() -> None:
    """While a call carries c1, a message for c1 and c2 waits; a later one for c2 alone waits
    behind it (it shares c2), one for c3 goes past; the held ones leave in order."""
    client = Client()
    batcher = TriggerBatcher(client, linger_s=0)  # type: ignore[arg-type]  # stand-in client
    first = asyncio.create_task(batcher.deliver(deliveries("private-chat-c1", "a")))
    await until(lambda: len(client.started) == 1)
    both = asyncio.create_task(
        batcher.deliver(
            [*deliveries("private-chat-c1", "b1"), *deliveries("private-chat-c2", "b2")]
        )
    )
    behind = asyncio.create_task(batcher.deliver(deliveries("private-chat-c2", "c")))
    past = asyncio.create_task(batcher.deliver(deliveries("private-chat-c3", "d")))
    await until(lambda: len(client.started) == 2)
    assert client.started[1] == ['{"label":"d"}']
    client.finish[1].set()
    await past
    client.finish[0].set()
    await first
    await until(lambda: len(client.started) == 3)
    # Both held messages are ready at once and travel together, in hand-over order.
    assert client.started[2] == ['{"label":"b1"}', '{"label":"b2"}', '{"label":"c"}']
    client.finish[2].set()
    assert await both == 1 and await behind == 1


async def test_while_every_slot_is_busy_waiting_messages_fill_whole_calls() -> None:
    """With one call allowed in flight, 25 messages handed over meanwhile leave as calls of
    10, 10 and 5 events once it returns."""
    client = Client()
    batcher = TriggerBatcher(  # type: ignore[arg-type]  # stand-in client
        client, linger_s=0, max_in_flight=1
    )
    first = asyncio.create_task(batcher.deliver(deliveries("private-admin", "first")))
    await until(lambda: len(client.started) == 1)
    rest = [
        asyncio.create_task(batcher.deliver(deliveries(f"private-user-u{i}", f"m{i}")))
        for i in range(25)
    ]
    await until(lambda: all(not t.done() for t in rest) and len(batcher._waiting) == 25)
    for n in range(1, 4):
        client.finish[n - 1].set()
        await until(lambda n=n: len(client.started) == n + 1)
    client.finish[3].set()
    await asyncio.gather(first, *rest)
    assert [len(call) for call in client.started] == [1, 10, 10, 5]
    assert [label for call in client.started[1:] for label in call] == [
        f'{{"label":"m{i}"}}' for i in range(25)
    ]


async def test_a_partial_call_waits_for_the_linger() -> None:
    """Fewer than ten events leave only once the oldest has waited ``linger_s``."""
    client = Client()
    batcher = TriggerBatcher(client, linger_s=0.05)  # type: ignore[arg-type]  # stand-in client
    loop = asyncio.get_running_loop()
    handed = loop.time()
    task = asyncio.create_task(batcher.deliver(deliveries("private-admin", "x")))
    await until(lambda: len(client.started) == 1)
    assert loop.time() - handed >= 0.045
    client.finish[0].set()
    await task


async def test_a_call_full_of_events_leaves_without_lingering() -> None:
    """Ten events from five messages of two deliveries each make a full call: it goes out at
    once, however long the linger; the sixth message waits for the next call."""
    client = Client()
    batcher = TriggerBatcher(client, linger_s=60)  # type: ignore[arg-type]  # stand-in client
    tasks = [
        asyncio.create_task(batcher.deliver(deliveries(f"private-user-u{i}", f"{i}a", f"{i}b")))
        for i in range(6)
    ]
    await until(lambda: len(client.started) == 1)
    assert len(client.started[0]) == 10
    client.finish[0].set()
    await asyncio.gather(*tasks[:5])
    assert not tasks[5].done()
    tasks[5].cancel()


async def test_a_message_over_ten_events_goes_out_in_its_own_planned_calls() -> None:
    """Twelve deliveries of one message are planned into two calls of its own, sent in order,
    and ``queued`` is called once Soketi has them (nothing can overtake them after that)."""
    client = Client()
    batcher = TriggerBatcher(client)  # type: ignore[arg-type]  # a fake with the same calls
    queued = asyncio.Event()
    many = [Delivery(f"private-user-u{i}", "new-order", {"n": i}) for i in range(12)]
    calls = await batcher.deliver(many, None, queued.set)
    assert calls == 2
    assert [p.endpoint for p in client.planned] == ["batch_events", "batch_events"]
    assert [p.triggers for p in client.planned] == [10, 2]
    assert client.started == []  # never mixed into a shared call
    assert queued.is_set()


async def test_a_message_over_ten_events_never_overtakes_an_earlier_one_on_its_lane() -> None:
    """An oversized message behind a lingering one on the same ordered channel waits in line:
    Soketi gets the earlier message first, then the big one's own calls."""
    client = Client()
    batcher = TriggerBatcher(client, linger_s=0.05)  # type: ignore[arg-type]  # stand-in client
    queued = asyncio.Event()
    first = asyncio.create_task(
        batcher.deliver(deliveries("private-chat-c1", "first"), None, queued.set)
    )
    await until(queued.is_set)  # in line, lingering for company
    big = [Delivery("private-chat-c1", "new-message", {"label": "big"})]
    big += [Delivery(f"private-user-u{i}", "new-message", {"n": i}) for i in range(11)]
    second = asyncio.create_task(batcher.deliver(big))
    await until(lambda: len(client.started) == 1)
    assert client.started == [['{"label":"first"}']]
    for _ in range(20):  # give the big one every chance to (wrongly) start
        await asyncio.sleep(0)
    assert client.planned == []  # it waits while private-chat-c1 is in a running call
    client.finish[0].set()
    await first
    assert await second == 2
    assert [p.triggers for p in client.planned] == [10, 2]
