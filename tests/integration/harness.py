"""A running worker on the real services, with helpers to publish, subscribe and read the DLQ."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aio_pika
import orjson
from pymongo import AsyncMongoClient

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber, sign_channel
from worker import app
from worker.config import Settings
from worker.metrics import Metrics
from worker.retry import RetryPolicy


class TestNames(Protocol):
    """The per-test names a worker runs under (``tests.conftest.Names``)."""

    @property
    def exchange(self) -> str: ...

    @property
    def queue(self) -> str: ...

    @property
    def db(self) -> str: ...


def envelope(event_type: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A fresh envelope of ``event_type`` that occurred just now."""
    return {
        "id": extra.pop("id", uuid.uuid4().hex),
        "type": event_type,
        "occurredAt": extra.pop("occurredAt", datetime.now(UTC).isoformat()),
        "data": data,
        **extra,
    }


def iso_ago(seconds: float) -> str:
    """An ISO-8601 UTC time ``seconds`` in the past."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


@dataclass
class DeadLetter:
    """One message read back from the DLQ."""

    body: bytes
    routing_key: str
    headers: dict[str, Any]
    message_id: str | None


@dataclass
class Fanout:
    """Handles on a worker started for one test."""

    settings: Settings
    soketi: SoketiServer
    metrics: Metrics
    http_port: int
    connection: aio_pika.abc.AbstractRobustConnection
    exchange: aio_pika.abc.AbstractExchange
    db: Any
    subscribers: list[PusherSubscriber] = field(default_factory=list)

    async def publish(self, env: dict[str, Any] | bytes, routing_key: str | None = None) -> None:
        """Publish an envelope (or raw bytes) persistently, as the backend does."""
        if isinstance(env, bytes):
            body, key, message_id = env, routing_key or "raw", None
        else:
            body, key, message_id = orjson.dumps(env), routing_key or env["type"], env.get("id")
        await self.exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id if isinstance(message_id, str) else None,
            ),
            routing_key=key,
        )

    async def subscriber(self, *channels: str) -> PusherSubscriber:
        """A browser-like WebSocket subscriber on ``channels`` (private ones authenticated)."""
        sub = PusherSubscriber()
        await sub.connect(self.soketi.host, self.soketi.port, self.soketi.key)
        self.subscribers.append(sub)

        def authorize(socket_id: str, channel: str) -> str:
            return sign_channel(self.soketi.key, self.soketi.secret, socket_id, channel)

        for channel in channels:
            await sub.subscribe(channel, None if channel == "public" else authorize)
        return sub

    def sample(self, name: str, **labels: str) -> float:
        """The current value of metric sample ``name`` (0 when absent)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def settled(self, outcome: str, reason: str | None = None) -> float:
        """How many messages the worker settled with ``outcome`` (and ``reason``), from metrics."""
        total = 0.0
        for metric in self.metrics.messages.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                labels = sample.labels
                if labels["outcome"] == outcome and reason in (None, labels["reason"]):
                    total += sample.value
        return total

    async def wait_settled(
        self, count: int, outcome: str, reason: str | None = None, timeout_s: float = 20
    ) -> None:
        """Wait until at least ``count`` messages settled with ``outcome``."""
        await wait_until(lambda: self.settled(outcome, reason) >= count, timeout_s)

    async def dead_letters(self) -> list[DeadLetter]:
        """Every message now in the DLQ, read and returned to the queue (nothing consumed)."""
        found: list[DeadLetter] = []
        async with self.connection.channel() as channel:
            queue = await channel.get_queue(self.settings.dlq_name, ensure=False)
            taken = []
            while (message := await queue.get(no_ack=False, fail=False)) is not None:
                taken.append(message)
                found.append(
                    DeadLetter(
                        message.body,
                        message.routing_key or "",
                        dict(message.headers or {}),
                        message.message_id,
                    )
                )
            for message in taken:
                await message.nack(requeue=True)
        return found


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    """Wait until ``condition()`` holds, checking every few milliseconds, or fail."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  # metrics have no change notification to await
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_worker(
    *,
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    names: TestNames,
    retry: RetryPolicy | None = None,
    **overrides: Any,
) -> AsyncIterator[Fanout]:
    """Start ``worker.app.run`` in this event loop with test names; stop and drain afterwards.

    ``names`` (the ``names`` fixture) gives the test's own exchange, queue and database.

    ``worker_rabbitmq_url``, ``worker_mongo_url`` and ``soketi_port`` point the worker (only)
    elsewhere, e.g. through a ``TcpProxy``; the test's own connections stay direct.
    Other keyword arguments are ``Settings`` fields.
    """
    settings = Settings(
        rabbitmq_url=overrides.pop("worker_rabbitmq_url", rabbitmq_url),
        mongodb_url=overrides.pop("worker_mongo_url", mongo_url),
        mongodb_db=names.db,
        events_exchange=names.exchange,
        worker_queue=names.queue,
        soketi_app_id=soketi.app_id,
        soketi_app_key=soketi.key,
        soketi_app_secret=overrides.pop("soketi_app_secret", soketi.secret),
        soketi_host=soketi.host,
        soketi_port=overrides.pop("soketi_port", soketi.port),
        http_host="127.0.0.1",
        http_port=overrides.pop("http_port", 0),
        # Off unless a test asks: they call Soketi and post to private-admin on their own.
        presence_reconcile_s=overrides.pop("presence_reconcile_s", 0),
        stats_interval_s=overrides.pop("stats_interval_s", 0),
        retry_delays_s=overrides.pop("retry_delays_s", (1, 2)),
        # The stand-in purges TTL collections on every query (real MongoDB does not).
        mongodb_ttl_indexes=overrides.pop("mongodb_ttl_indexes", "MONGODB_URL" in os.environ),
        **overrides,
    )
    metrics = Metrics.create()
    stop = asyncio.Event()
    overrides_retry = retry or RetryPolicy.instant()
    started: asyncio.Future[app.Started] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        app.run(
            settings,
            stop=stop,
            metrics=metrics,
            retry=overrides_retry,
            on_started=started.set_result,
        )
    )
    pending: set[asyncio.Future[Any]] = {task, started}
    done, _ = await asyncio.wait(pending, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    info = started.result()
    connection = await aio_pika.connect_robust(rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)
    events = await channel.get_exchange(names.exchange, ensure=True)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    fanout = Fanout(settings, soketi, metrics, info.http_port, connection, events, client[names.db])
    try:
        yield fanout
    finally:
        for sub in fanout.subscribers:
            await sub.close()
        stop.set()
        await asyncio.wait_for(task, 30)
        await connection.close()
        await client.close()
