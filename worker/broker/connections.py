"""The only place that opens RabbitMQ connections, and declares the events exchange for them.

The worker keeps two robust connections (consuming, and republishing to retry tiers and the
dead-letter queue), named so the broker's management UI tells them apart; the operator
tools (``publish``, ``dlq``, ``check``), the demo and the bench open a plain one for as long
as they work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractRobustConnection

#: The AMQP ``connection_name`` prefix, as the broker lists it.
NAME = "bazaar-fanout"


async def connect(url: str, *, purpose: str, timeout_s: float | None = None) -> AbstractConnection:
    """A plain connection for a tool that works and closes (no reconnecting)."""
    return await aio_pika.connect(
        url, timeout=timeout_s, client_properties={"connection_name": f"{NAME} {purpose}"}
    )


async def connect_robust(url: str, *, purpose: str) -> AbstractRobustConnection:
    """A connection that reconnects by itself, for the worker's lifetime."""
    return await aio_pika.connect_robust(
        url, client_properties={"connection_name": f"{NAME} {purpose}"}
    )


async def declare_events_exchange(
    channel: aio_pika.abc.AbstractChannel, name: str
) -> AbstractExchange:
    """The durable topic exchange the backend publishes to (declared idempotently)."""
    return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)


@asynccontextmanager
async def publishing(url: str, exchange: str, *, purpose: str) -> AsyncIterator[AbstractExchange]:
    """The events exchange on a confirming channel of a fresh connection, closed on exit."""
    connection = await connect(url, purpose=purpose)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield await declare_events_exchange(channel, exchange)
