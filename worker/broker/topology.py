"""The only module that talks to RabbitMQ: topology, consuming and confirmed publishing.

Topology (declared idempotently at start)::

    EVENTS_EXCHANGE (topic) --QUEUE_BINDINGS--> WORKER_QUEUE (quorum, x-delivery-limit)
    WORKER_QUEUE.dead (fanout) ------------------> WORKER_QUEUE.dlq (quorum)
    WORKER_QUEUE.retry.5s (fanout) --> WORKER_QUEUE.retry.5s (quorum, x-message-ttl 5 s)
        ... one pair per delay tier; each tier queue dead-letters on expiry to
    WORKER_QUEUE.return (fanout) ----------------> WORKER_QUEUE

Every hop is a fanout exchange, so a message keeps its original routing key all the way.
Dead-lettered messages are published by the worker to ``WORKER_QUEUE.dead`` with their
original body and properties plus ``fanout-*`` headers; the broker itself dead-letters
there too when a message exceeds the delivery limit.

Sharded mode (``SHARDS=N``, opt-in) replaces the first line: events enter the worker's
queues through RabbitMQ's consistent-hash exchange, so each conversation always lands in
the same shard and a fleet keeps its order::

    EVENTS_EXCHANGE --QUEUE_BINDINGS--> WORKER_QUEUE.lanes (headers; alternate exchange
        WORKER_QUEUE.return, i.e. the main queue, for events without a ``fanout-lane`` header)
    WORKER_QUEUE.lanes --fanout-lane present--> WORKER_QUEUE.shards (x-consistent-hash on
        the ``fanout-lane`` header) --weight 1--> WORKER_QUEUE.shard.{0..N-1} (quorum,
        single active consumer, x-delivery-limit, dead-lettering like the main queue)

Every worker consumes every shard, each shard on a channel of its own
(``open_shard``); the broker lets one consumer per shard at a time have its messages and
hands the shard to another when that worker goes away. Which worker should be the active
one is the fleet's business (``flow/shards.py``, ``flow/handover.py``). The main queue
stays a plain competing-consumers queue for events without a lane and returning retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    ExchangeType,
)

from worker.errors import Misconfigured
from worker.events import LANE


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and arguments of everything the worker declares."""

    exchange: str
    queue: str
    bindings: tuple[str, ...] = ("#",)
    delivery_limit: int = 20
    retry_delays_s: tuple[float, ...] = (5, 30, 120, 600, 3600)
    shards: int = 0  # 0: not sharded

    def tier(self, index: int) -> str:
        """Name of retry tier ``index`` (0-based): exchange and queue share it."""
        return f"{self.queue}.retry.{tier_label(self.retry_delays_s[index])}"

    @property
    def return_exchange(self) -> str:
        """The fanout exchange into the main queue only: expired retries, unlaned events."""
        return f"{self.queue}.return"

    @property
    def lanes_exchange(self) -> str:
        """Sharded mode's entry: laned events go on to the shards, others to the main queue."""
        return f"{self.queue}.lanes"

    @property
    def shards_exchange(self) -> str:
        """The consistent-hash exchange in front of the shard queues."""
        return f"{self.queue}.shards"

    def shard(self, index: int) -> str:
        """Name of shard queue ``index`` (0-based)."""
        return f"{self.queue}.shard.{index}"

    def shard_arguments(self) -> dict[str, Any]:
        """Arguments of a shard queue: the main queue's plus a single active consumer."""
        return {**self.queue_arguments(), "x-single-active-consumer": True}

    @property
    def dlq(self) -> str:
        """The dead-letter queue."""
        return f"{self.queue}.dlq"

    @property
    def dead_exchange(self) -> str:
        """The fanout exchange in front of the dead-letter queue."""
        return f"{self.queue}.dead"

    def queue_arguments(self) -> dict[str, Any]:
        """Arguments of the main queue (quorum, delivery limit, broker dead-lettering)."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_exchange,
        }


@dataclass(frozen=True, slots=True)
class Declared:
    """Handles on the declared topology."""

    queue: AbstractQueue
    dead_exchange: AbstractExchange
    events_exchange: AbstractExchange
    retry_exchanges: tuple[AbstractExchange, ...]
    shards: tuple[AbstractQueue, ...] = ()

    @property
    def queues(self) -> tuple[AbstractQueue, ...]:
        """Every queue the worker consumes: the main queue, then the shards (if sharded)."""
        return (self.queue, *self.shards)


async def declare(channel: AbstractChannel, topology: Topology) -> Declared:
    """Declare exchange, main queue, bindings, dead-letter path and shards; safe to repeat.

    The mode in ``topology`` wins over what an earlier start declared: the new way in is
    bound before the old one is cut, so switching modes may route an event both ways for a
    moment (the processed-id log drops the copy) but never neither.
    """
    events = await channel.declare_exchange(topology.exchange, ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(topology.dead_exchange, ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(
        topology.dlq, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dlq.bind(dead, routing_key="#")
    queue = await channel.declare_queue(
        topology.queue, durable=True, arguments=topology.queue_arguments()
    )
    back = await channel.declare_exchange(
        topology.return_exchange, ExchangeType.FANOUT, durable=True
    )
    await queue.bind(back, routing_key="#")
    shards: tuple[AbstractQueue, ...] = ()
    if topology.shards:
        shards = await declare_shards(channel, topology)
        for pattern in topology.bindings:
            await queue.unbind(events, routing_key=pattern)
    else:
        for pattern in topology.bindings:
            await queue.bind(events, routing_key=pattern)
        # Deleting an absent exchange is a no-op; deleting ours cuts the sharded way in.
        await channel.exchange_delete(topology.lanes_exchange)
    tiers = []
    for index, delay_s in enumerate(topology.retry_delays_s):
        name = topology.tier(index)
        exchange = await channel.declare_exchange(name, ExchangeType.FANOUT, durable=True)
        tier_queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": int(delay_s * 1000),
                "x-dead-letter-exchange": topology.return_exchange,
            },
        )
        await tier_queue.bind(exchange, routing_key="#")
        tiers.append(exchange)
    return Declared(
        queue=queue,
        dead_exchange=dead,
        events_exchange=events,
        retry_exchanges=tuple(tiers),
        shards=shards,
    )


async def declare_shards(channel: AbstractChannel, topology: Topology) -> tuple[AbstractQueue, ...]:
    """Declare sharded mode's exchanges and ``topology.shards`` shard queues; safe to repeat.

    Returns the shard queues in index order. Shards beyond ``topology.shards`` left by an
    earlier, larger setting stay bound (and get their share of conversations) until an
    operator deletes them: nothing here removes a queue that may hold messages.
    """
    events = await channel.declare_exchange(topology.exchange, ExchangeType.TOPIC, durable=True)
    lanes = await channel.declare_exchange(
        topology.lanes_exchange,
        ExchangeType.HEADERS,
        durable=True,
        arguments={"alternate-exchange": topology.return_exchange},
    )
    try:
        hashed = await channel.declare_exchange(
            topology.shards_exchange,
            "x-consistent-hash",
            durable=True,
            arguments={"hash-header": LANE},
        )
    except aiormq.exceptions.ConnectionCommandInvalid as error:  # "unknown exchange type"
        raise Misconfigured(
            f"SHARDS={topology.shards} needs the broker's consistent-hash exchange: "
            f"rabbitmq-plugins enable rabbitmq_consistent_hash_exchange ({error})"
        ) from error
    # A void (None) value matches on the header's presence, whatever its value.
    await hashed.bind(lanes, routing_key="", arguments={"x-match": "any", LANE: None})
    shards = []
    for index in range(topology.shards):
        shard = await channel.declare_queue(
            topology.shard(index), durable=True, arguments=topology.shard_arguments()
        )
        await shard.bind(hashed, routing_key="1")  # the weight: every shard gets an equal share
        shards.append(shard)
    for pattern in topology.bindings:
        await lanes.bind(events, routing_key=pattern)
    return tuple(shards)


async def open_shard(
    connection: AbstractConnection, topology: Topology, index: int, prefetch_count: int
) -> tuple[AbstractChannel, AbstractQueue]:
    """A channel of its own for shard ``index`` (prefetch set) and the shard queue on it.

    A shard's consumer lives on its own channel so that closing the channel hands the
    shard over: the broker returns what the channel held, in order, to the front of the
    queue before the next consumer gets anything (``flow/handover.py``).
    """
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=prefetch_count)
    queue = await channel.declare_queue(
        topology.shard(index), durable=True, arguments=topology.shard_arguments()
    )
    return channel, queue


def tier_label(delay_s: float) -> str:
    """A short label for a delay: ``5s``, ``2m``, ``1h``, ``1500ms``."""
    if delay_s < 1 or delay_s != int(delay_s):
        return f"{int(delay_s * 1000)}ms"
    seconds = int(delay_s)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
