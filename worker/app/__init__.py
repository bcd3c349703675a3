"""The worker's lifecycle: connect, declare, consume, serve HTTP, drain on stop, close.

``run`` is the whole life of one worker process; ``worker.app.build`` builds each
collaborator once and ``worker.app.health`` holds the liveness and readiness answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import structlog

from worker.app import build
from worker.app.health import Heartbeat, cancel_all, downstream_check
from worker.broker.sampler import sample_queues
from worker.config import Settings
from worker.flow.consumer import Consumer
from worker.flow.shards import Fleet
from worker.flow.subscription import Subscription
from worker.metrics import Metrics
from worker.mongo.fleet import FleetStore
from worker.mongo.retention import sweeper
from worker.retry import RetryPolicy
from worker.web import server, setup
from worker.web.context import Task
from worker.web.stats import instance_id

log = structlog.get_logger("fanout")


@dataclass(frozen=True, slots=True)
class Started:
    """What a running worker exposes to its caller (tests, the demo): its bound HTTP port."""

    http_port: int


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
        soketi = await build.open_soketi(stack, settings, metrics, retry)
        mongo = await build.open_mongo(stack, settings, metrics, retry)
        rabbit = await build.open_broker(stack, settings, metrics)
        circuits, circuit_listeners = build.build_circuits(stack, metrics, soketi, mongo)
        consumer, soketi_gate = build.build_consumer(
            stack, settings, metrics, (soketi, mongo, rabbit), circuits
        )
        worker_id = instance_id()
        subscription = Subscription(
            rabbit.channel,
            rabbit.declared.queue,
            consumer.handle,
            metrics,
            # Consuming goes on while Soketi is merely down: the prefetch window bounds what
            # the worker holds, and what it holds is recorded in history for polling clients.
            wanted=lambda: circuits.may_process() and not stop.is_set(),
            # --- sharded mode ---: every shard on a channel of its own (none unless SHARDS > 0)
            shards=rabbit.topology.shards,
            open_shard=build.shard_opener(settings, rabbit),
            worker=worker_id,
            handover_cooldown_s=settings.shard_handover_cooldown_s,
        )
        circuit_listeners.append(subscription.poke)
        heartbeat = Heartbeat(metrics)
        web_routes, web_tasks = setup(build.web_context(settings, metrics, soketi, mongo, rabbit))
        await _start_background(
            stack, settings, metrics, rabbit, [heartbeat.run, *_sweepers(mongo), *web_tasks]
        )

        async def consuming() -> str | None:
            return None if await subscription.consuming() else "not consuming"

        checks = {
            "consumer": consuming,
            "soketi": downstream_check(circuits.soketi, soketi.client.probe),
            "mongodb": downstream_check(circuits.mongodb, mongo.gateway.probe),
        }
        alive = heartbeat.alive(settings.loop_blocked_limit_s)
        app = server.build_app(metrics, checks, alive=alive, routes=web_routes)
        http = await server.start(
            app,
            settings.http_host,
            settings.http_port,
            client_timeout_s=settings.http_client_timeout_s,
        )
        stack.push_async_callback(http.close)
        await subscription.start()
        # Announced only once its consumers are on every shard: whoever sees this worker in
        # the fleet re-registers behind it, so it is the oldest on the shards it owns.
        _start_fleet(stack, settings, mongo, worker_id, subscription)
        log.info(
            "fanout.started",
            queue=rabbit.topology.queue,
            exchange=rabbit.topology.exchange,
            bindings=list(rabbit.topology.bindings),
            prefetch=settings.prefetch_count,
            http_port=http.port,
        )
        if on_started is not None:
            on_started(Started(http_port=http.port))
        await stop.wait()
        await _drain(consumer, subscription, soketi_gate.release, settings.drain_timeout_s)


async def _drain(
    consumer: Consumer,
    subscription: Subscription,
    release_gate: Callable[[], None],
    timeout_s: float,
) -> None:
    """Stop consuming, let in-flight work finish within ``timeout_s``, hand back the rest."""
    log.info("fanout.stopping", in_flight=consumer.in_flight)
    await subscription.stop()
    consumer.stop()
    release_gate()
    drained = await consumer.drained(timeout_s)
    abandoned = await consumer.abandon()
    await subscription.closed()
    log.info("fanout.stopped", drained=drained, returned_to_queue=abandoned)


def _start_fleet(
    stack: AsyncExitStack,
    settings: Settings,
    mongo: build.Mongo,
    worker_id: str,
    subscription: Subscription,
) -> None:
    """Sharded mode: start the membership loop that spreads the shards over the live workers."""
    if not settings.shards:
        return
    fleet = Fleet(
        FleetStore(mongo.gateway),
        worker_id,
        settings.shards,
        subscription.assigned,
        interval_s=settings.fleet_heartbeat_s,
        stale_s=settings.fleet_stale_s,
    )
    task = asyncio.create_task(fleet.run(), name="fleet")
    stack.push_async_callback(cancel_all, [task])


def _sweepers(mongo: build.Mongo) -> list[Task]:
    """The retention sweeps of the collections that expire."""
    return [sweeper("processed", mongo.processed), sweeper("history", mongo.history)]


async def _start_background(
    stack: AsyncExitStack,
    settings: Settings,
    metrics: Metrics,
    rabbit: build.Broker,
    tasks: list[Task],
) -> None:
    """Start the queue sampler and ``tasks``; stopping cancels them all."""
    sampler = await rabbit.publishing.channel()
    background = [
        asyncio.create_task(
            sample_queues(sampler, rabbit.topology, metrics, settings.queue_sample_interval_s),
            name="queue-sampler",
        ),
        *(asyncio.create_task(task(), name=_name(task)) for task in tasks),
    ]
    stack.push_async_callback(cancel_all, background)


def _name(task: Task) -> str:
    return str(getattr(task, "__qualname__", task))
