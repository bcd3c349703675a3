"""The consumer seam: process + settle with an in-memory store, Soketi and message."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import structlog
import structlog.testing

from handlers.model import Account, Product
from tests.unit.fakes import Processed, Soketi, handled
from worker.flow.circuit import Circuit, Circuits
from worker.flow.consumer import Consumer
from worker.flow.pipeline import Pipeline
from worker.flow.settle import SettlePaths
from worker.metrics import Metrics


class SlowFirstStore:
    """Senders named by a number answer in inverse order: message 0 is the slowest."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def users(self, ids: Collection[str]) -> Mapping[str, Account]:
        [sender] = ids
        self.asked.set()
        await asyncio.sleep(0.001 * (20 - int(sender[1:])))
        return {sender: Account(sender, sender)}

    async def shops(self, ids: Collection[str]) -> Mapping[str, Account]:
        return {}

    async def products(self, ids: Collection[str]) -> Mapping[str, Product]:
        return {}


@dataclass
class Message:
    """Just enough of an aio-pika incoming message for the consumer."""

    body: bytes
    message_id: str | None = None
    routing_key: str = "message.created"
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str | None = None
    correlation_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    app_id: str | None = None
    redelivered: bool = False
    settled: list[str] = field(default_factory=list)

    processed: bool = False
    ack_fails: bool = False

    async def ack(self, multiple: bool = False) -> None:
        if self.ack_fails:
            raise ConnectionResetError("the consuming channel is gone")
        self.settled.append("ack-multiple" if multiple else "ack")
        self.processed = True

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append("nack" if requeue else "nack-drop")
        self.processed = True


class Exchange:
    """A dead-letter exchange that remembers what it was given."""

    name = "q.dead"

    def __init__(self) -> None:
        self.published: list[tuple[Any, str]] = []
        self.broken = False
        self.attempts = 0

    async def publish(self, message: Any, routing_key: str) -> None:
        self.attempts += 1
        if self.broken:
            raise ConnectionResetError("the republishing connection is gone")
        self.published.append((message, routing_key))


def _consumer(
    soketi: Soketi,
    dead: Exchange,
    batch_max: int = 100,
    store: SlowFirstStore | None = None,
    batches_in_flight: int = 2,
) -> Consumer:
    async def healthy() -> None:
        return None

    return Consumer(
        pipeline=Pipeline(
            store=store or SlowFirstStore(), processed=Processed(), soketi=soketi, clock=lambda: 0
        ),
        paths=SettlePaths(dead=dead, retries=()),  # type: ignore[arg-type]  # in-memory stand-in
        metrics=Metrics.create(),
        circuits=Circuits(Circuit("soketi", healthy), Circuit("mongodb", healthy)),
        batch_max=batch_max,
        batches_in_flight=batches_in_flight,
    )


def _chat(n: int, conversation: str = "c1") -> bytes:
    return orjson.dumps(
        {
            "id": f"m{n}",
            "type": "message.created",
            "occurredAt": datetime.now(UTC).isoformat(),
            "data": {
                "messageId": f"m{n}",
                "conversationId": conversation,
                "senderId": f"u{n}",
                "senderType": "user",
                "recipientId": "s1",
                "recipientType": "seller",
                "content": str(n),
            },
        }
    )


@pytest.mark.parametrize("batch_max", [1, 4, 100])
async def test_one_conversation_keeps_publish_order_when_lookups_finish_out_of_order(
    batch_max: int,
) -> None:
    """Message 0's lookup is slowest, yet Soketi gets the conversation's messages in order:
    one message at a time, in batches of four (five batches at once) or in one batch."""
    soketi = Soketi()
    consumer = _consumer(soketi, Exchange(), batch_max)
    messages = [Message(_chat(n)) for n in range(20)]
    await handled(consumer, *messages)
    order = [d.payload["content"] for d in soketi.pushed if d.channel == "private-chat-c1"]
    assert order == [str(n) for n in range(20)]
    assert all(m.settled == ["ack"] for m in messages)


async def test_other_conversations_are_not_held_back() -> None:
    """Different conversations do not wait for each other: the fast one finishes first."""
    soketi = Soketi()
    consumer = _consumer(soketi, Exchange(), batch_max=1)
    slow, fast = Message(_chat(0, "slow")), Message(_chat(19, "fast"))
    await handled(consumer, slow, fast)
    assert soketi.pushed[0].channel == "private-chat-fast"


async def test_a_batch_is_not_held_back_by_a_slower_batch_before_it() -> None:
    """Batches run side by side: one that arrived later on another conversation does not
    wait for the slow lookups of the batch before it."""
    soketi, store = Soketi(), SlowFirstStore()
    consumer = _consumer(soketi, Exchange(), store=store)
    slow, fast = Message(_chat(0, "slow")), Message(_chat(19, "fast"))
    handling = asyncio.create_task(consumer.handle(slow))  # type: ignore[arg-type]
    await store.asked.wait()  # its batch is under way, without the fast one
    await handled(consumer, fast)
    assert soketi.pushed[0].channel == "private-chat-fast"
    await handling


async def test_invalid_body_is_dead_lettered_then_acked() -> None:
    """Settle publishes a bad message to the dead-letter exchange with its reason, then acks."""
    dead = Exchange()
    message = Message(b"{oops", message_id="x1", routing_key="order.created")
    await handled(_consumer(Soketi(), dead), message)
    [(copy, routing_key)] = dead.published
    assert routing_key == "order.created"
    assert copy.headers["fanout-reason"] == "invalid_json"
    assert copy.body == b"{oops"
    assert message.settled == ["ack"]


async def test_a_redelivered_parked_message_is_not_parked_twice() -> None:
    """An ack has no reply: when the broker redelivers a message already in the DLQ (its ack
    died with the connection), the redelivery is only acked. A fresh copy with the same body
    but another message id is a different message and is parked."""
    dead = Exchange()
    consumer = _consumer(Soketi(), dead)
    first = Message(b"{oops", message_id="x1")
    again = Message(b"{oops", message_id="x1", redelivered=True)
    other = Message(b"{oops", message_id="x2", redelivered=True)
    for message in (first, again, other):
        await handled(consumer, message)
    assert [copy.message_id for copy, _ in dead.published] == ["x1", "x2"]
    assert first.settled == again.settled == other.settled == ["ack"]

    def count(outcome: str, reason: str) -> float | None:
        labels = {"event_type": "invalid", "outcome": outcome, "reason": reason}
        return consumer.metrics.registry.get_sample_value("bazaar_fanout_messages_total", labels)

    assert count("dead_lettered", "invalid_json") == 2
    assert count("duplicate", "already_parked") == 1


async def test_a_copy_of_an_id_in_the_same_lane_neither_repeats_nor_stalls_the_lane() -> None:
    """Two copies of one chat message (a backend publishing twice) and the next message of
    the conversation, all in flight together: pushed once, the copy is a duplicate, and the
    conversation goes on in order."""
    soketi = Soketi()
    consumer = _consumer(soketi, Exchange())
    first, copy, after = Message(_chat(1)), Message(_chat(1)), Message(_chat(2))
    async with asyncio.timeout(5):
        await handled(consumer, first, copy, after)
    chat = [d.payload["content"] for d in soketi.pushed if d.channel == "private-chat-c1"]
    assert chat == ["1", "2"]
    assert first.settled == copy.settled == after.settled == ["ack"]


async def test_a_message_whose_parking_failed_is_parked_once_publishing_is_back() -> None:
    """The republishing connection fails while the consuming channel lives on: the worker
    tries again with backoff (neither leaving the message unacked for good nor looping it
    through the queue) and parks it once publishing works again."""
    dead = Exchange()
    dead.broken = True
    message = Message(b"{oops", message_id="x1")
    handling = asyncio.create_task(_consumer(Soketi(), dead).handle(message))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while dead.attempts < 2:  # noqa: ASYNC110  # the fake exchange has no event
            await asyncio.sleep(0.01)
        assert message.settled == []  # held, not handed back
        dead.broken = False
        await handling
    assert len(dead.published) == 1
    assert message.settled == ["ack"]


async def test_a_message_that_cannot_be_settled_goes_back_when_the_worker_stops() -> None:
    """Still unsettled when the worker stops: the message is handed back to the queue."""
    dead = Exchange()
    dead.broken = True
    message = Message(b"{oops", message_id="x1")
    consumer = _consumer(Soketi(), dead)
    handling = asyncio.create_task(consumer.handle(message))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while dead.attempts < 1:  # noqa: ASYNC110  # the fake exchange has no event
            await asyncio.sleep(0.01)
        consumer.stop()
        await handling
    assert dead.published == []
    assert message.settled == ["nack"]


async def test_a_failed_ack_counts_what_was_done_once_and_gives_the_message_back() -> None:
    """Parked, then the ack fails: counted as dead-lettered now (the redelivered copy will
    only be a duplicate), and the message is handed back rather than left unacked."""
    dead = Exchange()
    consumer = _consumer(Soketi(), dead)
    message = Message(b"{oops", message_id="x1", ack_fails=True)
    await handled(consumer, message)
    assert len(dead.published) == 1
    assert message.settled == ["nack"]
    labels = {"event_type": "invalid", "outcome": "dead_lettered", "reason": "invalid_json"}
    assert consumer.metrics.registry.get_sample_value("bazaar_fanout_messages_total", labels) == 1
    again = Message(b"{oops", message_id="x1", redelivered=True)
    await handled(consumer, again)
    assert len(dead.published) == 1
    assert again.settled == ["ack"]


async def test_the_settled_line_carries_the_envelopes_version_source_and_correlation() -> None:
    """The one log line per message carries the envelope's ``version``, ``source`` and
    ``correlationId``, as the contract's section 2 promises."""
    envelope = orjson.loads(_chat(1))
    envelope.update(version=2, source="bazaar-backend", correlationId="req-7")
    consumer = _consumer(Soketi(), Exchange())
    with structlog.testing.capture_logs() as lines:
        await handled(consumer, Message(orjson.dumps(envelope)))
    [settled] = [line for line in lines if line["event"] == "fanout.message_settled"]
    assert (settled["version"], settled["source"], settled["correlation_id"]) == (
        2,
        "bazaar-backend",
        "req-7",
    )


@dataclass
class TaggedMessage(Message):
    """A message with the channel and delivery tag a real one has."""

    channel: str = "channel-1"
    delivery_tag: int = 0


class HeldFirstStore(SlowFirstStore):
    """Sender ``u0``'s lookup waits until ``release`` is set; the others answer at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def users(self, ids: Collection[str]) -> Mapping[str, Account]:
        [sender] = ids
        if sender == "u0":
            self.asked.set()
            await self.release.wait()
        return {sender: Account(sender, sender)}


async def test_a_batch_is_acked_with_one_multiple_ack_up_to_an_open_delivery() -> None:
    """Five chat messages in one batch behind a redelivered one (the per-message path) whose
    lookup is held: the batch's messages are acked one by one while it is open; once it is
    settled, the next batch goes out with one ``multiple`` ack on its last message."""
    store = HeldFirstStore()
    consumer = _consumer(Soketi(), Exchange(), store=store)
    slow = TaggedMessage(_chat(0, "slow"), redelivered=True, delivery_tag=1)
    batch = [TaggedMessage(_chat(n, "c1"), delivery_tag=n) for n in range(2, 7)]
    handling = asyncio.create_task(handled(consumer, slow, *batch))
    async with asyncio.timeout(5):
        while not all(m.settled for m in batch):  # noqa: ASYNC110  # the fakes have no event
            await asyncio.sleep(0.001)
    assert [m.settled for m in batch] == [["ack"]] * 5  # tag 1 is still open
    store.release.set()
    await handling
    assert slow.settled == ["ack"]

    later = [TaggedMessage(_chat(n, "c2"), delivery_tag=n) for n in range(7, 12)]
    await handled(consumer, *later)
    assert [m.settled for m in later] == [[], [], [], [], ["ack-multiple"]]
    labels = {"event_type": "message.created", "outcome": "delivered", "reason": ""}
    registry = consumer.metrics.registry
    assert registry.get_sample_value("bazaar_fanout_messages_total", labels) == 11


async def test_while_batches_run_new_messages_gather_into_one_bigger_batch() -> None:
    """One batch may run at a time here and the first is held by its lookup: the twenty
    messages that arrive meanwhile wait, then go as one batch, in order, all acked."""
    store = HeldFirstStore()
    soketi = Soketi()
    consumer = _consumer(soketi, Exchange(), store=store, batches_in_flight=1)
    first = Message(_chat(0, "c1"))
    handling = asyncio.create_task(handled(consumer, first))
    async with asyncio.timeout(5):
        await store.asked.wait()  # the first batch runs, held
    later = [Message(_chat(n, "c1")) for n in range(1, 21)]
    arriving = []
    for message in later:  # each in a loop turn of its own: without the limit, 20 batches
        arriving.append(asyncio.create_task(consumer.handle(message)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert soketi.pushed == []
    store.release.set()
    await handling
    await asyncio.gather(*arriving)
    order = [d.payload["content"] for d in soketi.pushed if d.channel == "private-chat-c1"]
    assert order == [str(n) for n in range(21)]
    assert all(m.settled == ["ack"] for m in [first, *later])
    registry = consumer.metrics.registry
    assert registry.get_sample_value("bazaar_fanout_batch_messages_count") == 2
    assert registry.get_sample_value("bazaar_fanout_batch_messages_sum") == 21
