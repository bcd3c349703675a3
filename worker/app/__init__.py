"""The worker's lifecycle: connect, declare, consume, serve HTTP, drain on stop, close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
import structlog

import worker.broker.topology as broker
import worker.history.recorder as history
import worker.mongo.gateway as mongo
import worker.web as browser
import worker.web.server as http
from worker.broker.connections import connect_robust
from worker.broker.sampler import Heartbeat, sample_queues
from worker.config import Settings
from worker.errors import FanoutError
from worker.flow.batching import BatchingProcessedIds, BatchingStore, TriggerBatcher
from worker.flow.circuit import Circuit, CircuitGate, Circuits
from worker.flow.consumer import Consumer, SettlePaths
from worker.flow.pipeline import Deps
from worker.flow.subscription import Subscription
from worker.metrics import Metrics
from worker.retry import RetryPolicy
from worker.soketi.client import Credentials, Limits, SoketiClient

log = structlog.get_logger("fanout")


@dataclass(frozen=True, slots=True)
class Started:
    """What a running worker exposes to its caller (tests, the demo): its bound HTTP port."""

    http_port: int


async def _sweep_processed(processed: mongo.ProcessedLog, interval_s: float = 3600) -> None:
    """Delete expired processed ids hourly (real MongoDB's TTL index does it too)."""
    while True:
        try:
            removed = await processed.sweep()
        except FanoutError as error:
            log.warning("fanout.sweep_failed", error=str(error))
        else:
            log.info("fanout.processed_swept", removed=removed)
        await asyncio.sleep(interval_s)


#: How long stopping waits for cancelled background tasks before going on without them.
CANCEL_TIMEOUT_S = 5.0


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT_S)
    if stuck:
        # A task ignoring its cancellation (e.g. a broker call during a reconnect) must not
        # keep the worker from stopping.
        log.warning("fanout.tasks_stuck_on_stop", tasks=sorted(t.get_name() for t in stuck))


def topology_of(settings: Settings) -> broker.Topology:
    """The broker topology the settings describe."""
    return broker.Topology(
        exchange=settings.events_exchange,
        queue=settings.worker_queue,
        bindings=settings.queue_bindings,
        delivery_limit=settings.delivery_limit,
        retry_delays_s=settings.retry_delays_s,
        shards=settings.shards,  # --- sharded mode ---
    )


async def run(
    settings: Settings,
    *,
    stop: asyncio.Event,
    metrics: Metrics | None = None,
    retry: RetryPolicy | None = None,
    on_started: Callable[[Started], None] | None = None,
) -> None:
    """Run the worker until ``stop`` is set, then drain in-flight work and close everything."""
    metrics = metrics or Metrics.create()
    retry = retry or RetryPolicy()
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            # Soketi closes every API connection after answering: not pooling them saves
            # aiohttp the bookkeeping of a connection that is gone (~12% CPU per call).
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, force_close=True))
        )
        soketi = SoketiClient(
            Credentials(
                settings.soketi_app_id,
                settings.soketi_app_key,
                settings.soketi_app_secret.get_secret_value(),
            ),
            settings.soketi_url,
            session,
            limits=Limits(max_payload_bytes=settings.max_payload_kb * 1024),
            retry=retry,
            timeout_s=settings.soketi_timeout_s,
            on_response=metrics.soketi_response,
            on_request=metrics.triggers_per_request.observe,
        )
        client = mongo.connect(
            settings.mongodb_url.get_secret_value(), timeout_s=settings.mongodb_timeout_s
        )
        stack.push_async_callback(client.close)
        gateway = mongo.MongoGateway(client[settings.mongodb_db], retry, metrics.mongodb_query)
        processed = mongo.ProcessedLog(
            gateway,
            settings.processed_retention_h * 3600,
            ttl_index=settings.mongodb_ttl_indexes,
        )
        recorder = history.recorder(gateway, settings)
        stack.push_async_callback(recorder.close)
        try:
            await processed.ensure_indexes()
            # Before the first entry: the unique (channel, seq) index arbitrates numbering.
            await recorder.ensure_indexes()
        except FanoutError as error:
            log.warning("fanout.index_setup_failed", error=str(error))

        url = settings.rabbitmq_url.get_secret_value()
        connection = await connect_robust(url, purpose="consumer")
        stack.push_async_callback(connection.close)
        connection.reconnect_callbacks.add(
            lambda *_: metrics.reconnects.labels(kind="connection").inc()
        )
        # Republishing (retry tiers, dead letters) has its own connection, so a consumer
        # channel in trouble never blocks the confirms that let us ack.
        publishing = await connect_robust(url, purpose="publisher")
        stack.push_async_callback(publishing.close)
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=settings.prefetch_count)
        topology = topology_of(settings)
        declared = await broker.declare(channel, topology)
        publisher = await publishing.channel(publisher_confirms=True)
        paths = SettlePaths(
            dead=await publisher.get_exchange(topology.dead_exchange, ensure=False),
            retries=tuple(
                [
                    await publisher.get_exchange(topology.tier(i), ensure=False)
                    for i in range(len(topology.retry_delays_s))
                ]
            ),
            max_retry_age_s=settings.retry_max_age_s,
        )

        subscription: Subscription | None = None

        def circuit_changed(circuit: Circuit) -> None:
            metrics.circuit_open.labels(downstream=circuit.name).set(
                1 if circuit.state == "open" else 0
            )
            if subscription is not None:
                subscription.poke()

        circuits = Circuits(
            soketi=Circuit("soketi", soketi.probe, on_change=circuit_changed),
            mongodb=Circuit("mongodb", gateway.probe, on_change=circuit_changed),
        )
        stack.push_async_callback(circuits.close)
        for circuit in circuits.all:
            circuit_changed(circuit)
        soketi_gate = CircuitGate(circuits.soketi)
        consumer = Consumer(
            deps=Deps(
                store=BatchingStore(mongo.MongoStore(gateway)),
                processed=BatchingProcessedIds(processed),
                soketi=TriggerBatcher(
                    soketi,
                    linger_s=settings.soketi_linger_ms / 1000,
                    max_in_flight=settings.soketi_max_in_flight,
                ),
                clock=time.time,
                ephemeral_max_age_s=settings.ephemeral_max_age_s,
                # --- history ---: numbers and records each non-ephemeral delivery
                history=recorder,
                soketi_gate=soketi_gate,
            ),
            paths=paths,
            metrics=metrics,
            circuits=circuits,
        )
        subscription = Subscription(
            channel,
            # --- sharded mode ---: the main queue, then every shard (none unless SHARDS > 0)
            declared.queues,
            consumer.handle,
            metrics,
            # Consuming goes on while Soketi is merely down: the prefetch window bounds what
            # the worker holds, and what it holds is recorded in history for polling clients.
            wanted=lambda: circuits.may_process() and not stop.is_set(),
        )

        async def check_consuming() -> str | None:
            return None if await subscription.consuming() else "not consuming"

        def downstream_check(circuit: Circuit, ping: Callable[[], Awaitable[None]]) -> http.Check:
            async def check() -> str | None:
                if circuit.state == "open":
                    return f"circuit open: {circuit.reason}"
                await ping()
                return None

            return check

        heartbeat = Heartbeat(metrics)

        def alive() -> str | None:
            silence_s = heartbeat.silence_s
            if silence_s > settings.loop_blocked_limit_s:
                return f"event loop blocked for {silence_s:.1f}s"
            return None

        background = [
            asyncio.create_task(heartbeat.run(), name="heartbeat"),
            asyncio.create_task(_sweep_processed(processed), name="processed-sweeper"),
            asyncio.create_task(
                sample_queues(
                    await publishing.channel(),
                    topology,
                    metrics,
                    settings.queue_sample_interval_s,
                ),
                name="queue-sampler",
            ),
        ]
        stack.push_async_callback(_cancel_all, background)

        browser_routes, browser_tasks = browser.setup(
            browser.BrowserContext(
                settings=settings,
                metrics=metrics,
                gateway=gateway,
                soketi=soketi,
                events=await publisher.get_exchange(topology.exchange, ensure=False),
            )
        )
        background += [
            asyncio.create_task(task(), name=f"browser:{getattr(task, '__qualname__', task)}")
            for task in browser_tasks
        ]

        server = await http.start(
            http.build_app(
                metrics,
                {
                    "consumer": check_consuming,
                    "soketi": downstream_check(circuits.soketi, soketi.probe),
                    "mongodb": downstream_check(circuits.mongodb, gateway.probe),
                },
                alive=alive,
                routes=browser_routes,
            ),
            settings.http_host,
            settings.http_port,
        )
        stack.push_async_callback(server.close)

        await subscription.start()
        log.info(
            "fanout.started",
            queue=topology.queue,
            exchange=topology.exchange,
            bindings=list(topology.bindings),
            prefetch=settings.prefetch_count,
            http_port=server.port,
        )
        if on_started is not None:
            on_started(Started(http_port=server.port))

        await stop.wait()
        log.info("fanout.stopping", in_flight=consumer.in_flight)
        await subscription.stop()
        consumer.stop()
        soketi_gate.release()
        drained = await consumer.drained(settings.drain_timeout_s)
        abandoned = await consumer.abandon()
        log.info("fanout.stopped", drained=drained, returned_to_queue=abandoned)
