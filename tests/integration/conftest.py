"""Fixtures shared by the integration tests: cuttable paths from the worker to each service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from devtools.devstack import SoketiServer
from tests.conftest import Names
from tests.integration.proxy import TcpProxy
from tests.integration.session_backend import SessionBackend, redis_server, running_backend


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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The local Redis (or ``REDIS_URL``, or one started for the session)."""
    with redis_server() as url:
        yield url


@pytest.fixture
async def backend(redis_url: str, names: Names) -> AsyncIterator[SessionBackend]:
    """The session backend for this test, its sessions under the test's own key prefix."""
    async with running_backend(redis_url, f"{names.prefix}:sess:") as running:
        yield running
