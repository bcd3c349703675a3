"""Sharded mode with several worker processes: once-only delivery, chat order, fail-over,
and the shards spread over the fleet.

Every worker (``python -m worker run``, ``SHARDS=N``) consumes the main queue and every
shard queue; the broker's consistent-hash exchange keeps each conversation in one shard,
single-active-consumer lets only one worker at a time have a shard's messages, and the
fleet (``fanout_workers``) makes each shard's owner the active one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber, sign_channel
from tests.conftest import Names
from tests.integration.harness import envelope
from tests.integration.test_lifecycle import (
    ADMIN,
    DRAIN_TIMEOUT_S,
    WorkerProcess,
    depth,
    worker_env,
    worker_process,
)
from worker.events import LANE
from worker.flow.shards import assign

SHARDS = 4
CONVERSATIONS = [f"conv{i}" for i in range(8)]
CHAT_TYPES = ("message.created", "typing.started", "typing.stopped")
#: Per-consumer prefetch of each worker: many messages in flight, order kept by the lanes
#: that ``Consumer._handle`` takes per conversation.
PREFETCH = 50


@dataclass
class Stream:
    """Interleaved chat events over several conversations plus non-chat events, numbered."""

    rng: random.Random
    next_seq: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chat: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)

    def batch(self, size: int, tag: str) -> list[dict[str, Any]]:
        """``size`` events in publish order: about three chat events to one registration."""
        events = []
        for n in range(size):
            if n % 4 == 3:
                event = envelope("user.registered", {"userId": f"{tag}-u{n}"}, id=f"{tag}-r{n}")
                self.other.append(event)
            else:
                event = self._chat(self.rng.choice(CONVERSATIONS), tag)
                self.chat.append(event)
            events.append(event)
        return events

    def _chat(self, conversation: str, tag: str) -> dict[str, Any]:
        seq = self.next_seq[conversation]
        self.next_seq[conversation] += 1
        event_id = f"{tag}-{conversation}-{seq:04d}"
        kind = self.rng.choice(("message.created", "message.created", *CHAT_TYPES[1:]))
        if kind == "message.created":
            data = {
                "messageId": event_id,
                "conversationId": conversation,
                "senderId": "u1",
                "senderType": "user",
                # Each conversation's own seller: a personal channel shared by conversations
                # that different workers deliver would make their history numbering collide.
                "recipientId": f"s-{conversation}",
                "recipientType": "seller",
                "content": str(seq),
            }
        else:  # the sequence number travels in the typist's id
            data = {"conversationId": conversation, "userId": f"u-{seq}", "userType": "user"}
        return envelope(kind, data, id=event_id)


def sequence_of(data: dict[str, Any]) -> int:
    """The sequence number a chat event carries in its payload."""
    return int(data["content"]) if "content" in data else int(data["userId"].removeprefix("u-"))


async def publish_in_order(url: str, exchange: str, events: list[dict[str, Any]]) -> None:
    """Publish one after the other on one channel, chat events with their lane header."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        # Confirmed one by one: the broker sees our order, and has every event before the
        # connection closes (unconfirmed, the last few could still sit in the client's write
        # queue when it closes, and be lost: a missing tail under load).
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange, ensure=True)
        for event in events:
            lane = event["data"].get("conversationId") if event["type"] in CHAT_TYPES else None
            await target.publish(
                aio_pika.Message(
                    orjson.dumps(event),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=event["id"],
                    headers={LANE: lane} if lane else None,
                ),
                routing_key=event["type"],
            )


@contextlib.asynccontextmanager
async def chat_subscriber(soketi: SoketiServer) -> AsyncIterator[PusherSubscriber]:
    """One browser-like subscriber on the admins' channel and every conversation's channel."""
    async with PusherSubscriber() as sub:
        await sub.connect(soketi.host, soketi.port, soketi.key)
        for channel in [ADMIN, *(f"private-chat-{c}" for c in CONVERSATIONS)]:
            await sub.subscribe(
                channel, lambda sid, ch: sign_channel(soketi.key, soketi.secret, sid, ch)
            )
        yield sub


def received_ids(sub: PusherSubscriber) -> Counter[str]:
    """How many times each event id reached the subscriber (on any of its channels)."""
    return Counter(r.data["eventId"] for r in sub.events())


def out_of_order(sub: PusherSubscriber) -> dict[str, list[int]]:
    """Per conversation, the received sequence numbers when they are not strictly increasing."""
    bad = {}
    for conversation in CONVERSATIONS:
        seqs = [sequence_of(r.data) for r in sub.events(f"private-chat-{conversation}")]
        if seqs != sorted(set(seqs)):
            bad[conversation] = seqs
    return bad


async def chat_settled(worker: WorkerProcess) -> float:
    """How many chat events ``worker`` delivered, from its ``/metrics``."""
    total = 0.0
    for event_type in CHAT_TYPES:
        value = await worker.metric(
            "bazaar_fanout_messages_total", event_type=event_type, outcome="delivered"
        )
        assert value is not None, worker.log_tail()
        total += value
    return total


async def wait_drained(url: str, names: Names, *workers: WorkerProcess) -> None:
    """Wait until the main and shard queues are empty and no worker holds a message."""
    queues = [names.queue, *(names.topology().shard(i) for i in range(names.shards))]

    async def idle() -> bool:
        for worker in workers:
            if await worker.metric("bazaar_fanout_in_flight_messages") != 0:
                return False
        return all([await depth(url, queue) == 0 for queue in queues])

    await workers[0].wait(idle, 20, "empty queues and nothing in flight")


async def test_two_workers_deliver_once_in_order_and_fail_over(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names, tmp_path: Path
) -> None:
    """Two sharded workers deliver once and in order; a SIGKILL hands its shards to the other."""
    names.shards = SHARDS
    env = worker_env(
        names,
        rabbitmq_url,
        mongo_url,
        soketi,
        SHARDS=str(SHARDS),
        PREFETCH_COUNT=str(PREFETCH),
        EPHEMERAL_MAX_AGE_S="300",  # typing events must not age out on a slow machine
    )
    stream = Stream(random.Random(5))
    async with (
        chat_subscriber(soketi) as sub,
        worker_process(env, tmp_path / "a.log") as first,
    ):
        await first.wait_ready()
        async with worker_process(env, tmp_path / "b.log") as second:
            await second.wait_ready()
            before = stream.batch(400, "before")
            await publish_in_order(rabbitmq_url, names.exchange, before)
            await sub.wait_for(lambda _: set(received_ids(sub)) >= {e["id"] for e in before}, 30)
            await wait_drained(rabbitmq_url, names, first, second)
            assert received_ids(sub) == Counter({e["id"]: 1 for e in before})
            assert out_of_order(sub) == {}
            assert await depth(rabbitmq_url, names.dlq) == 0

            workers = [first, second]
            chat_by = [await chat_settled(worker) for worker in workers]
            assert sum(chat_by) == len(stream.chat)
            # Kill the busier one: it is the active consumer of at least one shard.
            victim_index = chat_by.index(max(chat_by))
            victim, survivor = workers[victim_index], workers[1 - victim_index]
            print(f"chat events per worker before the kill: {chat_by}; killing #{victim_index}")
            code, _ = await victim.stop(signal.SIGKILL, 5)
            assert code == -signal.SIGKILL

            chat_before = len(stream.chat)
            after = stream.batch(400, "after")
            await publish_in_order(rabbitmq_url, names.exchange, after)
            expected = {e["id"] for e in before + after}
            await sub.wait_for(lambda _: set(received_ids(sub)) >= expected, 30)
            await wait_drained(rabbitmq_url, names, survivor)
            assert received_ids(sub) == Counter(dict.fromkeys(expected, 1))
            assert out_of_order(sub) == {}
            # Every shard, the victim's included, now delivers through the survivor.
            chat_after = len(stream.chat) - chat_before
            assert await chat_settled(survivor) == chat_by[1 - victim_index] + chat_after
            assert await depth(rabbitmq_url, names.dlq) == 0
            code, _ = await survivor.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
            assert code == 0, survivor.log_tail()


SPREAD_SHARDS = 6


async def active_owners(names: Names) -> dict[int, str]:
    """Shard index -> the worker id whose consumer the broker has active on it, read with
    ``rabbitmqctl list_consumers`` (a shard consumer's tag is ``{worker id}/{queue}/{n}``)."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "list_consumers",
        "-q",
        "--no-table-headers",
        "queue_name",
        "consumer_tag",
        "active",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    shards = {names.topology().shard(i): i for i in range(SPREAD_SHARDS)}
    owners = {}
    for line in out.decode().splitlines():
        queue, tag, active = [*line.split("\t"), "", "", ""][:3]
        if queue in shards and active == "true":
            owners[shards[queue]] = tag.split("/", 1)[0]
    return owners


def pid_of(worker_id: str) -> int:
    """The process id inside a worker id (``{host}:{pid}:{random}``)."""
    return int(worker_id.split(":")[1])


async def wait_spread(
    names: Names, workers: list[WorkerProcess], timeout_s: float
) -> dict[int, str]:
    """Wait until every shard's active consumer is the owner the fleet assigns among
    ``workers``, each of them active on at least one shard; return shard -> worker id."""

    async def spread() -> dict[int, str] | None:
        owners = await active_owners(names)
        live = set(owners.values())
        if len(owners) != SPREAD_SHARDS or {pid_of(w) for w in live} != {
            w.process.pid for w in workers
        }:
            return None
        return owners if owners == assign(SPREAD_SHARDS, sorted(live)) else None

    return await workers[0].wait(spread, timeout_s, "the shards spread over the workers")


async def wait_owning(worker: WorkerProcess, shards: int) -> None:
    """Wait until ``worker`` reports owning ``shards`` shards (its fleet view has settled)."""

    async def owning() -> bool:
        return await worker.metric("bazaar_fanout_shards_owned") == shards

    await worker.wait(owning, 10, f"bazaar_fanout_shards_owned == {shards}")


async def test_three_workers_spread_the_shards_and_keep_order_across_a_kill(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names, tmp_path: Path
) -> None:
    """Three sharded workers are each active on their share of the shards; after a SIGKILL
    the survivors take the victim's shards over while chat events flow, without reordering
    or repeating any, and a graceful stop hands its shards to the last worker."""
    names.shards = SPREAD_SHARDS
    env = worker_env(
        names,
        rabbitmq_url,
        mongo_url,
        soketi,
        SHARDS=str(SPREAD_SHARDS),
        PREFETCH_COUNT=str(PREFETCH),
        EPHEMERAL_MAX_AGE_S="300",  # typing events must not age out on a slow machine
        FLEET_HEARTBEAT_S="0.5",
        FLEET_STALE_S="2",
    )
    stream = Stream(random.Random(7))
    async with (
        chat_subscriber(soketi) as sub,
        worker_process(env, tmp_path / "a.log") as a,
        worker_process(env, tmp_path / "b.log") as b,
        worker_process(env, tmp_path / "c.log") as c,
    ):
        workers = [a, b, c]
        for worker in workers:
            await worker.wait_ready()
        owners = await wait_spread(names, workers, 30)
        for worker in workers:
            await wait_owning(worker, 2)

        before = stream.batch(300, "before")
        await publish_in_order(rabbitmq_url, names.exchange, before)
        await sub.wait_for(lambda _: set(received_ids(sub)) >= {e["id"] for e in before}, 30)
        await wait_drained(rabbitmq_url, names, *workers)
        assert received_ids(sub) == Counter({e["id"]: 1 for e in before})
        assert out_of_order(sub) == {}

        victim = next(w for w in workers if w.process.pid == pid_of(owners[0]))
        survivors = [w for w in workers if w is not victim]
        code, _ = await victim.stop(signal.SIGKILL, 5)
        assert code == -signal.SIGKILL
        killed = time.monotonic()
        # Published while the broker and then the fleet move the victim's shards: the
        # hand-overs happen under load.
        during = stream.batch(600, "during")
        publishing = asyncio.create_task(publish_in_order(rabbitmq_url, names.exchange, during))
        await wait_spread(names, survivors, 20)
        moved_s = time.monotonic() - killed
        await publishing
        print(f"the victim's shards moved to the survivors in {moved_s:.1f} s")
        assert moved_s < 15
        for worker in survivors:
            await wait_owning(worker, 3)

        expected = {e["id"] for e in before + during}
        await sub.wait_for(lambda _: set(received_ids(sub)) >= expected, 30)
        await wait_drained(rabbitmq_url, names, *survivors)
        assert received_ids(sub) == Counter(dict.fromkeys(expected, 1))
        assert out_of_order(sub) == {}
        assert await depth(rabbitmq_url, names.dlq) == 0

        # A graceful stop leaves the fleet: the last worker owns and has every shard.
        leaving, last = survivors
        code, _ = await leaving.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, leaving.log_tail()
        await wait_spread(names, [last], 20)
        code, _ = await last.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, last.log_tail()
