"""The wiring: each collaborator built once, from the settings, and handed to who needs it.

Every builder registers what it opens on the caller's ``AsyncExitStack``, so closing the
stack closes everything in reverse order of opening.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

import worker.broker.topology as broker
from worker.broker.connections import connect_robust
from worker.config import Settings
from worker.errors import FanoutError
from worker.flow.circuit import Circuit, CircuitGate, Circuits
from worker.flow.consumer import Consumer
from worker.flow.pipeline import Pipeline
from worker.flow.settle import SettlePaths
from worker.history.recorder import History
from worker.metrics import Metrics
from worker.mongo.access import AccessStore
from worker.mongo.gateway import MongoGateway, connect
from worker.mongo.history import HistoryLog
from worker.mongo.lookups import MongoStore
from worker.mongo.presence import PresenceStore
from worker.mongo.processed import ProcessedLog
from worker.mongo.stats import StatsStore
from worker.retry import RetryPolicy
from worker.soketi.batcher import TriggerBatcher
from worker.soketi.client import SoketiClient
from worker.web.context import WebContext

log = structlog.get_logger("fanout")

ShardChannel = tuple[AbstractChannel, AbstractQueue]


@dataclass(frozen=True, slots=True)
class Soketi:
    """The Soketi side: the signed client (reads, probes) and the one way to trigger."""

    client: SoketiClient
    batcher: TriggerBatcher


@dataclass(frozen=True, slots=True)
class Mongo:
    """The MongoDB side: the gateway and one object per collection family."""

    gateway: MongoGateway
    lookups: MongoStore
    processed: ProcessedLog
    history: HistoryLog
    presence: PresenceStore
    access: AccessStore
    stats: StatsStore


@dataclass(frozen=True, slots=True)
class Broker:
    """The RabbitMQ side: the consuming channel, the declared topology, the ways out."""

    channel: AbstractChannel
    topology: broker.Topology
    declared: broker.Declared
    paths: SettlePaths
    #: The events exchange on the publishing connection (confirmed publishes).
    events: AbstractExchange
    publishing: AbstractRobustConnection
    #: The consuming connection (sharded mode opens one channel per shard on it).
    consuming: AbstractRobustConnection


def topology_of(settings: Settings) -> broker.Topology:
    """The broker topology the settings describe."""
    return broker.Topology(
        exchange=settings.events_exchange,
        queue=settings.worker_queue,
        bindings=settings.queue_bindings,
        delivery_limit=settings.delivery_limit,
        retry_delays_s=settings.retry_delays_s,
        shards=settings.shards,
    )


async def open_soketi(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics, retry: RetryPolicy
) -> Soketi:
    """The Soketi client over one HTTP session, and the trigger batcher in front of it."""
    session = await stack.enter_async_context(
        # Soketi closes every API connection after answering: not pooling them saves
        # aiohttp the bookkeeping of a connection that is gone (~12% CPU per call).
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
    )
    client = SoketiClient.from_settings(
        settings,
        session,
        retry=retry,
        timeout_s=settings.soketi_timeout_s,
        on_response=metrics.soketi_response,
        on_request=metrics.triggers_per_request.observe,
    )
    batcher = TriggerBatcher(
        client,
        linger_s=settings.soketi_linger_ms / 1000,
        max_in_flight=settings.soketi_max_in_flight,
    )
    return Soketi(client, batcher)


async def open_mongo(
    stack: AsyncExitStack, settings: Settings, metrics: Metrics, retry: RetryPolicy
) -> Mongo:
    """The gateway and the collections; indexes created before the first write."""
    client = connect(settings.mongodb_url.get_secret_value(), timeout_s=settings.mongodb_timeout_s)
    stack.push_async_callback(client.close)
    gateway = MongoGateway(client[settings.mongodb_db], retry, metrics.mongodb_query)
    ttl = settings.mongodb_ttl_indexes
    history = HistoryLog(gateway, settings.history_retention_h * 3600, ttl_index=ttl)
    mongo = Mongo(
        gateway=gateway,
        lookups=MongoStore(
            gateway,
            cache_ttl_s=settings.lookup_cache_ttl_s,
            cache_size=settings.lookup_cache_size,
        ),
        # The duplicate check and record ride on the history's documents and writes.
        processed=ProcessedLog(
            gateway, settings.processed_retention_h * 3600, history=history, ttl_index=ttl
        ),
        history=history,
        presence=PresenceStore(gateway),
        access=AccessStore(gateway),
        stats=StatsStore(gateway),
    )
    try:
        await mongo.processed.ensure_indexes()
        # Before the first entry: the unique (channel, seq) index arbitrates numbering.
        await mongo.history.ensure_indexes()
    except FanoutError as error:
        log.warning("fanout.index_setup_failed", error=str(error))
    return mongo


async def open_broker(stack: AsyncExitStack, settings: Settings, metrics: Metrics) -> Broker:
    """Two robust connections (consuming; republishing), the topology declared on them."""
    url = settings.rabbitmq_url.get_secret_value()
    consuming = await connect_robust(url, purpose="consumer")
    stack.push_async_callback(consuming.close)
    consuming.reconnect_callbacks.add(lambda *_: metrics.reconnects.labels(kind="connection").inc())
    # Republishing (retry tiers, dead letters) has its own connection, so a consumer
    # channel in trouble never blocks the confirms that let us ack.
    publishing = await connect_robust(url, purpose="publisher")
    stack.push_async_callback(publishing.close)
    channel = await consuming.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=settings.prefetch_count)
    topology = topology_of(settings)
    declared = await broker.declare(channel, topology)
    publisher = await publishing.channel(publisher_confirms=True)
    tiers = [
        await publisher.get_exchange(topology.tier(i), ensure=False)
        for i in range(len(topology.retry_delays_s))
    ]
    paths = SettlePaths(
        dead=await publisher.get_exchange(topology.dead_exchange, ensure=False),
        retries=tuple(tiers),
        max_retry_age_s=settings.retry_max_age_s,
    )
    events = await publisher.get_exchange(topology.exchange, ensure=False)
    return Broker(channel, topology, declared, paths, events, publishing, consuming)


def shard_opener(settings: Settings, broker_: Broker) -> Callable[[int], Awaitable[ShardChannel]]:
    """Opens shard ``index``'s own channel on the consuming connection (sharded mode)."""

    async def open_shard(index: int) -> ShardChannel:
        return await broker.open_shard(
            broker_.consuming, broker_.topology, index, settings.prefetch_count
        )

    return open_shard


def build_consumer(
    stack: AsyncExitStack,
    settings: Settings,
    metrics: Metrics,
    parts: tuple[Soketi, Mongo, Broker],
    circuits: Circuits,
) -> tuple[Consumer, CircuitGate]:
    """The consumer around one pipeline; the gate it holds Soketi calls at while open."""
    soketi, mongo, broker_ = parts
    history = History(mongo.history)
    stack.push_async_callback(history.close)
    gate = CircuitGate(circuits.soketi)
    pipeline = Pipeline(
        store=mongo.lookups,
        processed=mongo.processed,
        soketi=soketi.batcher,
        clock=time.time,
        ephemeral_max_age_s=settings.ephemeral_max_age_s,
        history=history,
        soketi_gate=gate,
    )
    consumer = Consumer(
        pipeline=pipeline,
        paths=broker_.paths,
        metrics=metrics,
        circuits=circuits,
        batch_max=settings.batch_max,
        batches_in_flight=settings.batches_in_flight,
    )
    return consumer, gate


def build_circuits(
    stack: AsyncExitStack, metrics: Metrics, soketi: Soketi, mongo: Mongo
) -> tuple[Circuits, list[Callable[[], None]]]:
    """The two circuit breakers, and the list of callbacks told of every state change (the
    subscription adds its ``poke`` once it exists)."""
    listeners: list[Callable[[], None]] = []

    def changed(circuit: Circuit) -> None:
        open_ = circuit.state == "open"
        metrics.circuit_open.labels(downstream=circuit.name).set(1 if open_ else 0)
        for listener in listeners:
            listener()

    circuits = Circuits(
        soketi=Circuit("soketi", soketi.client.probe, on_change=changed),
        mongodb=Circuit("mongodb", mongo.gateway.probe, on_change=changed),
    )
    stack.push_async_callback(circuits.close)
    for circuit in circuits.all:
        changed(circuit)
    return circuits, listeners


def web_context(
    settings: Settings, metrics: Metrics, soketi: Soketi, mongo: Mongo, broker_: Broker
) -> WebContext:
    """What the browser side shares, from the collaborators built above."""
    return WebContext(
        settings=settings,
        metrics=metrics,
        soketi=soketi.client,
        deliverer=soketi.batcher,
        events=broker_.events,
        access=mongo.access,
        presence=mongo.presence,
        history=mongo.history,
        stats=mongo.stats,
    )
