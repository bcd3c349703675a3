"""The worker's paths: live, on a backlog, at a steady rate (latency), and a long run.

Each starts its own worker subprocess (:class:`bench.worker_process.WorkerProcess`) with its
own exchange, queue and freshly seeded database, and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from aio_pika.abc import AbstractExchange

from bench.paths import (
    Options,
    Result,
    events_per_s,
    mongo_share,
    publish_all,
    record_cost,
    record_mongo,
    run_timeout_s,
    with_tally,
)
from bench.receipts import Receivers
from bench.stack import Services, fanout_documents, fresh_database
from bench.stream import BenchEvent, amqp_message, stamp, watched_channels
from bench.usage import Usage
from bench.worker_process import WorkerProcess
from worker.broker.connections import publishing


@contextlib.asynccontextmanager
async def _events_exchange(
    services: Services, worker: WorkerProcess, path: str
) -> AsyncIterator[AbstractExchange]:
    """The worker's events exchange on a connection of our own, publishing confirmed."""
    async with publishing(
        services.rabbitmq_url, worker.topology.exchange, purpose=f"bench {path}"
    ) as exchange:
        yield exchange


async def worker_live(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """The worker subprocess, warm; the stream published as fast as possible while it runs."""
    worker = await _worker(services, "live", opts)
    try:
        await asyncio.to_thread(worker.start)
        async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
            rx.expect(events)
            before, metrics_before = worker.usage(), worker.metrics()
            async with _events_exchange(services, worker, "live") as exchange:
                started = time.time()
                await publish_all(
                    lambda m, key: exchange.publish(m, routing_key=key), events, stamp_each=rx
                )
                published = time.time()
            tally = await rx.finish(run_timeout_s(len(events)))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        documents = await _stop(worker, services)
    result = Result("worker", len(events), ages_s=tally.ages_s)
    result.rate = events_per_s(len(events), tally.first_receive, tally.last_receive)
    result.e2e_rate = events_per_s(len(events), started, tally.last_receive)
    result.note = f"published in {published - started:.2f} s while the worker ran"
    record_cost(result, before, after, len(events))
    record_mongo(result, mongo_share(metrics_before, metrics_after), documents)
    return with_tally(result, tally)


async def worker_backlog(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """The worker subprocess started on a pre-filled queue (as aio-pika-bare): drain rate."""
    worker = await _worker(services, "backlog", opts)
    try:
        await asyncio.to_thread(worker.start)  # declares the topology
        await asyncio.to_thread(worker.stop)
        async with _events_exchange(services, worker, "backlog") as exchange:
            await publish_all(
                lambda m, key: exchange.publish(m, routing_key=key), events, stamp_each=None
            )
        async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
            rx.expect(events)
            at_first: list[Usage] = []
            rx.on_first_receipt = lambda: at_first.append(worker.usage())
            await asyncio.to_thread(worker.start)
            tally = await rx.finish(run_timeout_s(len(events)))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        documents = await _stop(worker, services)
    result = Result("worker-backlog", len(events))
    result.rate = events_per_s(len(events), tally.first_receive, tally.last_receive)
    result.note = "pre-filled queue, first to last receipt"
    if at_first:
        record_cost(result, at_first[0], after, len(events))
    record_mongo(result, mongo_share({}, metrics_after), documents)
    return with_tally(result, tally)


async def latency(
    services: Services, events: Sequence[BenchEvent], opts: Options, rate: float
) -> Result:
    """The worker at a steady publish rate: event age at receipt (receive time - occurredAt)."""
    worker = await _worker(services, "latency", opts)
    try:
        await asyncio.to_thread(worker.start)
        async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
            rx.expect(events)
            before, metrics_before = worker.usage(), worker.metrics()
            async with _events_exchange(services, worker, "latency") as exchange:
                tasks: list[asyncio.Task[object]] = []
                origin = time.monotonic()
                for index, event in enumerate(events):
                    delay_s = origin + index / rate - time.monotonic()
                    if delay_s > 0:
                        await asyncio.sleep(delay_s)
                    rx.sent(event.event_id, stamp(event.envelope))
                    message = amqp_message(event.envelope)
                    tasks.append(
                        asyncio.create_task(exchange.publish(message, routing_key=event.type))
                    )
                achieved = len(events) / max(1e-9, time.monotonic() - origin)
                await asyncio.gather(*tasks)
            tally = await rx.finish(run_timeout_s(len(events)))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        documents = await _stop(worker, services)
    result = Result("latency", len(events), ages_s=tally.ages_s)
    result.rate = achieved
    result.note = f"steady {rate:g}/s target, typing events included"
    record_cost(result, before, after, len(events))
    record_mongo(result, mongo_share(metrics_before, metrics_after), documents)
    return with_tally(result, tally)


async def long_run(
    services: Services,
    events: Sequence[BenchEvent],
    opts: Options,
    *,
    step: int = 10_000,
    say: Callable[[str], None] = print,
) -> Result:
    """Many events through one worker in steps of ``step``, printing its RSS after each."""
    worker = await _worker(services, "long", opts)
    try:
        await asyncio.to_thread(worker.start)
        async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
            rx.expect(events)
            before, metrics_before = worker.usage(), worker.metrics()
            async with _events_exchange(services, worker, "long") as exchange:
                started = time.time()
                for done in range(0, len(events), step):
                    chunk = events[done : done + step]
                    await publish_all(
                        lambda m, key: exchange.publish(m, routing_key=key), chunk, stamp_each=rx
                    )
                    if not await rx.wait(done + len(chunk), run_timeout_s(len(chunk))):
                        say(f"  long: receipts stalled before {done + len(chunk)} events")
                        break
                    now, sent = worker.usage(), done + len(chunk)
                    cpu_s = now.cpu_s - before.cpu_s
                    say(
                        f"  long: {sent:>7} events  RSS {now.rss_kb / 1024:6.1f} MB"
                        f"  peak {now.hwm_kb / 1024:6.1f} MB  CPU {cpu_s:6.1f} s"
                        f" ({cpu_s / sent * 1000:.2f} s/1k events)"
                    )
            tally = await rx.finish(run_timeout_s(step))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        documents = await _stop(worker, services)
    result = Result(f"long-{len(events)}", len(events))
    result.e2e_rate = events_per_s(len(events), started, tally.last_receive)
    result.note = f"RSS at the end {after.rss_kb / 1024:.1f} MB"
    record_cost(result, before, after, len(events))
    record_mongo(result, mongo_share(metrics_before, metrics_after), documents)
    return with_tally(result, tally)


async def _worker(services: Services, role: str, opts: Options) -> WorkerProcess:
    return WorkerProcess(
        services,
        name=f"{role}-{uuid.uuid4().hex[:6]}",
        database=await fresh_database(services),
        source=opts.worker_source,
        prefetch=opts.prefetch,
        log_level=opts.worker_log_level,
        extra_env=opts.worker_env,
    )


async def _stop(worker: WorkerProcess, services: Services) -> dict[str, int]:
    """Stop the worker (it drains), delete its topology; return its ``fanout_*`` documents."""
    await asyncio.to_thread(worker.stop)
    await worker.delete_topology(services.rabbitmq_url)
    return await fanout_documents(services, worker.database)
