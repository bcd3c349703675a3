"""The measured paths: three baselines, the worker (live and backlog), latency, long run.

Every path gets its own copy of the stream (fresh event ids), its own subscribers and,
for the worker, its own worker process, exchange and queue. Throughput counts from the
first send (or publish) to the last witness receipt at the subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiohttp
import orjson
import pusher

from bench.receipts import Receivers, Tally
from bench.stack import WORKER, Services, Usage, WorkerProcess, fresh_database
from bench.stream import BenchEvent, amqp_message, direct_payload, stamp, watched_channels
from worker.soketi.client import Credentials, sign_request

DIRECT_IN_FLIGHT = 32
BARE_PREFETCH = 200
_PUBLISH_WINDOW = 500


@dataclass(frozen=True, slots=True)
class Options:
    """What every path needs to know besides the stream."""

    subscribers: int
    prefetch: int
    worker_source: Path
    worker_log_level: str
    worker_env: dict[str, str]


@dataclass(frozen=True, slots=True)
class MongoShare:
    """Summed per-message durations from the worker's histograms over one run."""

    processing_s: float
    mongodb_s: float
    soketi_s: float
    messages: int
    operations: dict[str, tuple[int, float]]  # operation -> (count, summed seconds)
    soketi_calls: int = 0
    soketi_triggers: int = 0  # Pusher events those calls carried


@dataclass(slots=True)
class Result:
    """One path's measurement in one run."""

    path: str
    events: int
    rate: float | None = None  # events/s over the path's main window
    e2e_rate: float | None = None  # worker: from publish start to last receipt
    ages_s: list[float] = field(default_factory=list)
    cpu_s_per_1k: float | None = None
    peak_rss_mb: float | None = None
    # CPU s per 1,000 events by process (bench.stack.WORKER, STANDIN, ...): the worker and
    # the others that could be read at both ends of the window
    process_cpu_s_per_1k: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    receipts: int = 0
    unexpected: int = 0
    mongo: MongoShare | None = None
    note: str = ""

    def percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of event age in milliseconds, if ages were measured."""
        if len(self.ages_s) < 2:
            return None
        cuts = statistics.quantiles(self.ages_s, n=1000, method="inclusive")
        return cuts[min(998, max(0, round(q * 1000) - 1))] * 1000


def _timeout_s(events: int, floor_rate: float = 10.0) -> float:
    """The most a run may take; a run ends earlier when receipts stall (``Receivers.wait``)."""
    return 30.0 + events / floor_rate


def _with_tally(result: Result, tally: Tally) -> Result:
    if tally.dropped:
        result.note = "; ".join(
            filter(None, [result.note, f"{tally.dropped} stale typing events dropped"])
        )
    if tally.stalled:
        result.note = "; ".join(filter(None, [result.note, "STALLED: receipts stopped coming"]))
    result.lost, result.duplicated = tally.lost, tally.duplicated
    result.receipts, result.unexpected = tally.receipts, tally.unexpected
    return result


# --- baselines -------------------------------------------------------------------------


async def sync_trigger(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """The seed plan's way: ``pusher.Pusher.trigger`` per event, synchronously (requests)."""
    soketi = services.soketi
    client = pusher.Pusher(
        app_id=soketi.app_id,
        key=soketi.key,
        secret=soketi.secret,
        host=soketi.host,
        port=soketi.port,
        ssl=False,
    )
    async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
        rx.expect(events)

        def send_all() -> float:
            started = time.time()
            for event in events:
                rx.sent(event.event_id, stamp(event.envelope))
                client.trigger(event.witness, event.pusher_event, direct_payload(event))
            return started

        started = await asyncio.to_thread(send_all)
        tally = await rx.finish(_timeout_s(len(events)))
    result = Result("sync-trigger", len(events), ages_s=tally.ages_s)
    result.rate = _rate(len(events), started, tally.last_receive)
    return _with_tally(result, tally)


async def direct(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """One shared aiohttp session, 32 signed ``/events`` calls in flight, one per event."""
    soketi = services.soketi
    creds = Credentials(soketi.app_id, soketi.key, soketi.secret)
    path = f"/apps/{soketi.app_id}/events"
    pending = iter(events)
    failures: list[str] = []
    async with (
        Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session,
    ):
        rx.expect(events)

        async def sender() -> None:
            for event in pending:
                rx.sent(event.event_id, stamp(event.envelope))
                data = orjson.dumps(direct_payload(event)).decode()
                body = orjson.dumps(
                    {"name": event.pusher_event, "channels": [event.witness], "data": data}
                )
                request = sign_request(creds, "POST", path, body, timestamp=int(time.time()))
                async with session.post(
                    f"{soketi.url}{request.path}?{request.query}",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"HTTP {response.status}")

        started = time.time()
        await asyncio.gather(*(sender() for _ in range(DIRECT_IN_FLIGHT)))
        tally = await rx.finish(_timeout_s(len(events)))
    result = Result(f"direct-{DIRECT_IN_FLIGHT}", len(events), ages_s=tally.ages_s)
    result.rate = _rate(len(events), started, tally.last_receive)
    if failures:
        result.note = f"{len(failures)} calls failed ({failures[0]})"
    return _with_tally(result, tally)


async def aio_pika_bare(services: Services, events: Sequence[BenchEvent], _: Options) -> Result:
    """aio-pika consuming and acking with no work, prefetch 200, from a pre-filled quorum queue."""
    name = f"bench.bare.{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(services.rabbitmq_url)
    async with connection:
        publishing = await connection.channel(publisher_confirms=True)
        await publishing.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            await _publish_all(
                lambda m, _key: publishing.default_exchange.publish(m, routing_key=name),
                events,
                stamp_each=None,
            )
            consuming = await connection.channel()
            await consuming.set_qos(prefetch_count=BARE_PREFETCH)
            consumer_queue = await consuming.get_queue(name, ensure=False)
            times: list[float] = []
            done = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await message.ack()
                times.append(time.time())
                if len(times) >= len(events):
                    done.set()

            tag = await consumer_queue.consume(on_message)
            await asyncio.wait_for(done.wait(), _timeout_s(len(events)))
            await consumer_queue.cancel(tag)
        finally:
            await publishing.queue_delete(name)
    result = Result("aio-pika-bare", len(events))
    result.rate = _rate(len(events), times[0], times[-1])
    result.note = "pre-filled quorum queue, consume + ack only"
    return result


# --- the worker ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _events_exchange(
    services: Services, worker: WorkerProcess
) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    """The worker's events exchange on a connection of our own, publishing confirmed."""
    async with await aio_pika.connect(services.rabbitmq_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        yield await channel.get_exchange(worker.topology.exchange, ensure=False)


async def worker_live(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """The worker subprocess, warm; the stream published as fast as possible while it runs."""
    worker = await _worker(services, "live", opts)
    try:
        await asyncio.to_thread(worker.start)
        async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
            rx.expect(events)
            before, metrics_before = worker.usage(), worker.metrics()
            async with _events_exchange(services, worker) as exchange:
                started = time.time()
                await _publish_all(
                    lambda m, key: exchange.publish(m, routing_key=key), events, stamp_each=rx
                )
                published = time.time()
            tally = await rx.finish(_timeout_s(len(events)))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        await _stop(worker, services)
    result = Result("worker", len(events), ages_s=tally.ages_s)
    result.rate = _rate(len(events), tally.first_receive, tally.last_receive)
    result.e2e_rate = _rate(len(events), started, tally.last_receive)
    result.note = f"published in {published - started:.2f} s while the worker ran"
    _cost(result, before, after, len(events))
    result.mongo = _mongo_share(metrics_before, metrics_after)
    return _with_tally(result, tally)


async def worker_backlog(services: Services, events: Sequence[BenchEvent], opts: Options) -> Result:
    """The worker subprocess started on a pre-filled queue (as aio-pika-bare): drain rate."""
    worker = await _worker(services, "backlog", opts)
    try:
        await asyncio.to_thread(worker.start)  # declares the topology
        await asyncio.to_thread(worker.stop)
        async with _events_exchange(services, worker) as exchange:
            await _publish_all(
                lambda m, key: exchange.publish(m, routing_key=key), events, stamp_each=None
            )
        async with Receivers(services.endpoint, watched_channels(), opts.subscribers) as rx:
            rx.expect(events)
            at_first: list[Usage] = []
            rx.on_first_receipt = lambda: at_first.append(worker.usage())
            await asyncio.to_thread(worker.start)
            tally = await rx.finish(_timeout_s(len(events)))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        await _stop(worker, services)
    result = Result("worker-backlog", len(events))
    result.rate = _rate(len(events), tally.first_receive, tally.last_receive)
    result.note = "pre-filled queue, first to last receipt"
    if at_first:
        _cost(result, at_first[0], after, len(events))
    result.mongo = _mongo_share({}, metrics_after)
    return _with_tally(result, tally)


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
            async with _events_exchange(services, worker) as exchange:
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
            tally = await rx.finish(_timeout_s(len(events)))
            after, metrics_after = worker.usage(), worker.metrics()
    finally:
        await _stop(worker, services)
    result = Result("latency", len(events), ages_s=tally.ages_s)
    result.rate = achieved
    result.note = f"steady {rate:g}/s target, typing events included"
    _cost(result, before, after, len(events))
    result.mongo = _mongo_share(metrics_before, metrics_after)
    return _with_tally(result, tally)


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
            before = worker.usage()
            connection = await aio_pika.connect(services.rabbitmq_url)
            started = time.time()
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(worker.topology.exchange, ensure=False)
                for done in range(0, len(events), step):
                    chunk = events[done : done + step]
                    await _publish_all(
                        lambda m, key: exchange.publish(m, routing_key=key), chunk, stamp_each=rx
                    )
                    if not await rx.wait(done + len(chunk), _timeout_s(len(chunk))):
                        say(f"  long: receipts stalled before {done + len(chunk)} events")
                        break
                    now = worker.usage()
                    say(
                        f"  long: {done + len(chunk):>7} events  RSS {now.rss_kb / 1024:6.1f} MB"
                        f"  peak {now.hwm_kb / 1024:6.1f} MB  CPU {now.cpu_s - before.cpu_s:6.1f} s"
                    )
            tally = await rx.finish(_timeout_s(step))
            after = worker.usage()
    finally:
        await _stop(worker, services)
    result = Result(f"long-{len(events)}", len(events))
    result.e2e_rate = _rate(len(events), started, tally.last_receive)
    result.note = f"RSS at the end {after.rss_kb / 1024:.1f} MB"
    _cost(result, before, after, len(events))
    return _with_tally(result, tally)


# --- helpers ---------------------------------------------------------------------------


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


async def _stop(worker: WorkerProcess, services: Services) -> None:
    await asyncio.to_thread(worker.stop)
    await worker.delete_topology(services.rabbitmq_url)


async def _publish_all(
    publish: Callable[[aio_pika.Message, str], Awaitable[object]],
    events: Iterable[BenchEvent],
    *,
    stamp_each: Receivers | None,
) -> None:
    """Publish with confirms, ``_PUBLISH_WINDOW`` at a time; stamp ``occurredAt`` when asked."""
    window: list[Awaitable[object]] = []
    for event in events:
        if stamp_each is not None:
            stamp_each.sent(event.event_id, stamp(event.envelope))
        window.append(publish(amqp_message(event.envelope), event.type))
        if len(window) >= _PUBLISH_WINDOW:
            await asyncio.gather(*window)
            window = []
    await asyncio.gather(*window)


def _rate(count: int, start: float, end: float) -> float | None:
    return count / (end - start) if end > start else None


def _cost(result: Result, before: Usage, after: Usage, events: int) -> None:
    result.cpu_s_per_1k = (after.cpu_s - before.cpu_s) / events * 1000
    result.peak_rss_mb = after.hwm_kb / 1024
    result.process_cpu_s_per_1k = {WORKER: result.cpu_s_per_1k}
    for name, now in after.processes.items():
        then = before.processes.get(name, {})
        common = now.keys() & then.keys()  # a process that went away or is new is left out
        if common:
            spent = sum(now[pid] - then[pid] for pid in common)
            result.process_cpu_s_per_1k[name] = spent / events * 1000


def _mongo_share(before: dict[str, float], after: dict[str, float]) -> MongoShare:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    prefix = "bazaar_fanout_"
    operations: dict[str, tuple[int, float]] = {}
    for key in after:
        if key.startswith(f"{prefix}mongodb_query_seconds_sum{{operation="):
            operation = key.split("operation=", 1)[1].rstrip("}")
            count_key = key.replace("_sum{", "_count{")
            operations[operation] = (int(delta(count_key)), delta(key))
    return MongoShare(
        processing_s=delta(f"{prefix}processing_seconds_sum"),
        mongodb_s=delta(f"{prefix}mongodb_query_seconds_sum"),
        soketi_s=delta(f"{prefix}soketi_request_seconds_sum"),
        messages=int(delta(f"{prefix}processing_seconds_count")),
        operations=operations,
        soketi_calls=int(delta(f"{prefix}triggers_per_request_count")),
        soketi_triggers=int(delta(f"{prefix}triggers_per_request_sum")),
    )
