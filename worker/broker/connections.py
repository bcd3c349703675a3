"""The only place that opens RabbitMQ connections, and declares the events exchange for them.

The worker keeps two robust connections (consuming, and republishing to retry tiers and the
dead-letter queue), named so the broker's management UI tells them apart; the operator
tools (``publish``, ``dlq``, ``check``), the demo and the bench open a plain one for as long
as they work.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractRobustConnection
from yarl import URL

#: The AMQP ``connection_name`` prefix, as the broker lists it.
NAME = "bazaar-fanout"


# --- several brokers: RABBITMQ_URL may list a cluster's nodes, comma-separated -----------
# aio-pika and aiormq connect to one URL. Given several (``amqp://a:5672/,amqp://b:5672/``),
# a connection tries them in the order listed and keeps the first that answers; the worker's
# robust connections then move to the next node in turn whenever theirs is lost or a
# reconnect attempt fails. A single URL (or a load balancer's) behaves exactly as before.

#: A comma starts another URL only when a scheme follows it (a password may hold commas).
_URL_SEPARATOR = re.compile(r"\s*,\s*(?=amqps?://)")


def split_urls(url: str) -> list[str]:
    """``RABBITMQ_URL`` as the list of broker URLs it names (one or several)."""
    return [part.strip() for part in _URL_SEPARATOR.split(url.strip()) if part.strip()]


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several nodes: each reconnect attempt goes to the next one."""

    def __init__(self, urls: Sequence[str], start: int, **kwargs: Any) -> None:
        self._urls = [URL(url) for url in urls]
        self._current = start
        super().__init__(self._urls[start], **kwargs)

    def _next_node(self) -> None:
        self._current = (self._current + 1) % len(self._urls)
        self.url = self._urls[self._current]

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed):
            self._next_node()  # the node we were on is likely gone: reconnect elsewhere
        await super()._on_connection_close(closing)

    # RobustConnection's reconnect loop calls this (name-mangled) method for every attempt
    # and reads ``self.url`` each time; aio-pika (pinned) offers no public hook for it.
    async def _RobustConnection__connect_transport(self) -> None:
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except Exception:
            if self.connection_attempt:  # after the first connect; connect_robust does that
                self._next_node()
            raise


async def connect(url: str, *, purpose: str, timeout_s: float | None = None) -> AbstractConnection:
    """A plain connection for a tool that works and closes (no reconnecting).

    With several URLs, the first that accepts a connection is used.
    """
    properties: dict[str, Any] = {"connection_name": f"{NAME} {purpose}"}
    urls = split_urls(url)
    for index, one in enumerate(urls):
        try:
            return await aio_pika.connect(one, timeout=timeout_s, client_properties=properties)
        except (ConnectionError, TimeoutError, aio_pika.exceptions.AMQPConnectionError):
            if index == len(urls) - 1:
                raise
    raise ValueError("RABBITMQ_URL names no broker")


async def connect_robust(url: str, *, purpose: str) -> AbstractRobustConnection:
    """A connection that reconnects by itself, for the worker's lifetime.

    With several URLs, the first that accepts a connection is used, and reconnects go round
    the others (``FailoverConnection``).
    """
    properties: dict[str, Any] = {"connection_name": f"{NAME} {purpose}"}
    urls = split_urls(url)
    if len(urls) == 1:
        return await aio_pika.connect_robust(urls[0], client_properties=properties)
    for index in range(len(urls)):
        connection = FailoverConnection(urls, index, client_properties=properties)
        try:
            await connection.connect()
        except (ConnectionError, TimeoutError, aio_pika.exceptions.AMQPConnectionError):
            await connection.close()
            if index == len(urls) - 1:
                raise
        else:
            return connection
    raise ValueError("RABBITMQ_URL names no broker")


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
