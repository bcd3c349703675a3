"""The baselines the worker is measured against: no RabbitMQ, or no work.

- ``sync-trigger``: the seed plan's way, ``pusher.Pusher.trigger`` per event, synchronously.
- ``direct-32``: signed ``/events`` calls on one aiohttp session, 32 in flight.
- ``aio-pika-bare``: aio-pika consuming and acking a pre-filled queue, no work at all.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

import aio_pika
import aiohttp
import orjson
import pusher

from bench.paths import (
    Options,
    Result,
    events_per_s,
    publish_all,
    run_timeout_s,
    with_tally,
)
from bench.receipts import Receivers
from bench.stack import Services
from bench.stream import BenchEvent, direct_payload, stamp, watched_channels
from worker.broker.connections import connect
from worker.soketi.api import Credentials, sign_request

DIRECT_IN_FLIGHT = 32
BARE_PREFETCH = 200


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
        tally = await rx.finish(run_timeout_s(len(events)))
    result = Result("sync-trigger", len(events), ages_s=tally.ages_s)
    result.rate = events_per_s(len(events), started, tally.last_receive)
    return with_tally(result, tally)


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
        tally = await rx.finish(run_timeout_s(len(events)))
    result = Result(f"direct-{DIRECT_IN_FLIGHT}", len(events), ages_s=tally.ages_s)
    result.rate = events_per_s(len(events), started, tally.last_receive)
    if failures:
        result.note = f"{len(failures)} calls failed ({failures[0]})"
    return with_tally(result, tally)


async def aio_pika_bare(services: Services, events: Sequence[BenchEvent], _: Options) -> Result:
    """aio-pika consuming and acking with no work, prefetch 200, from a pre-filled quorum queue."""
    name = f"bench.bare.{uuid.uuid4().hex[:8]}"
    connection = await connect(services.rabbitmq_url, purpose="bench aio-pika-bare")
    async with connection:
        publishing = await connection.channel(publisher_confirms=True)
        await publishing.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        try:
            await publish_all(
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
            await asyncio.wait_for(done.wait(), run_timeout_s(len(events)))
            await consumer_queue.cancel(tag)
        finally:
            await publishing.queue_delete(name)
    result = Result("aio-pika-bare", len(events))
    result.rate = events_per_s(len(events), times[0], times[-1])
    result.note = "pre-filled quorum queue, consume + ack only"
    return result
