"""Fixtures shared by the integration tests: cuttable paths from the worker to each service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from devtools.devstack import SoketiServer
from tests.integration.proxy import TcpProxy


@pytest.fixture
async def soketi_proxy(soketi: SoketiServer) -> AsyncIterator[TcpProxy]:
    """A cuttable path from the worker to Soketi."""
    proxy = await TcpProxy(soketi.host, soketi.port).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def broker_proxy(rabbitmq_url: str) -> AsyncIterator[TcpProxy]:
    """A cuttable path from the worker to RabbitMQ."""
    parts = urlsplit(rabbitmq_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def mongo_proxy(mongo_url: str) -> AsyncIterator[TcpProxy]:
    """A cuttable path from the worker to MongoDB."""
    parts = urlsplit(mongo_url)
    proxy = await TcpProxy(parts.hostname or "127.0.0.1", parts.port or 27017).start()
    yield proxy
    await proxy.close()
