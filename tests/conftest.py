"""Shared fixtures: the real services on loopback, started once per session, and unique names.

Generic on purpose; worker-specific fixtures build on these.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest
from pymongo import AsyncMongoClient

from devtools.devstack import SoketiServer, ensure_rabbitmq, start_mongo_standin, start_soketi
from worker.broker.topology import Topology

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
SOKETI_APP_ID = "4242"
_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration/ as ``integration``."""
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The broker URL (``RABBITMQ_URL`` or local guest), started locally when it is down."""
    url = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    parts = urlsplit(url)
    ensure_rabbitmq(parts.hostname or "127.0.0.1", parts.port or 5672)
    return url


@pytest.fixture(scope="session")
def soketi() -> Iterator[SoketiServer]:
    """One Soketi on loopback for the session, app id 4242, fresh key and secret per run."""
    server = start_soketi(
        SOKETI_APP_ID, key=f"key-{secrets.token_hex(8)}", secret=secrets.token_hex(24)
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """``MONGODB_URL`` when set, else an in-memory nx-27017 stand-in for the session."""
    if url := os.environ.get("MONGODB_URL"):
        yield url
        return
    standin = start_mongo_standin()
    try:
        yield standin.url
    finally:
        standin.stop()


@dataclass(slots=True)
class Names:
    """Unique per-test names for broker objects and the database, all sharing ``prefix``."""

    prefix: str
    extra_queues: list[str] = field(default_factory=list)
    extra_exchanges: list[str] = field(default_factory=list)
    retry_delays_s: tuple[float, ...] = (1, 2)
    shards: int = 0  # a sharded test sets it, so cleanup deletes the shard queues too

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def queue(self) -> str:
        return f"{self.prefix}.fanout"

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    @property
    def db(self) -> str:
        return self.prefix

    def queue_named(self, suffix: str) -> str:
        """Return ``queue.suffix`` and remember it, so the test's cleanup deletes it too."""
        name = f"{self.queue}.{suffix}"
        self.extra_queues.append(name)
        return name

    def exchange_named(self, suffix: str) -> str:
        """Return ``exchange.suffix`` and remember it, so the test's cleanup deletes it too."""
        name = f"{self.exchange}.{suffix}"
        self.extra_exchanges.append(name)
        return name

    def queues_to_delete(self) -> list[str]:
        # The worker's derived queues are listed even when unused: deleting is idempotent.
        topology = self.topology()
        tiers = [topology.tier(i) for i in range(len(topology.retry_delays_s))]
        shards = [topology.shard(i) for i in range(topology.shards)]
        return [self.queue, self.dlq, *tiers, *shards, *self.extra_queues]

    def exchanges_to_delete(self) -> list[str]:
        topology = self.topology()
        tiers = [topology.tier(i) for i in range(len(topology.retry_delays_s))]
        return [
            self.exchange,
            topology.dead_exchange,
            topology.return_exchange,
            topology.lanes_exchange,
            topology.shards_exchange,
            *tiers,
            *self.extra_exchanges,
        ]

    def topology(self) -> Topology:
        """The broker objects a worker declares for these names."""
        return Topology(
            self.exchange, self.queue, retry_delays_s=self.retry_delays_s, shards=self.shards
        )


@pytest.fixture
async def names(request: pytest.FixtureRequest) -> AsyncIterator[Names]:
    """Unique names for this test; afterwards its queues, exchanges and database are removed.

    Cleanup only touches the services the test itself requested (``rabbitmq_url``,
    ``mongo_url``), so a broker-only test never starts a database and vice versa.
    """
    found = Names(prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield found
    if "rabbitmq_url" in request.fixturenames:
        await _delete_broker_objects(request.getfixturevalue("rabbitmq_url"), found)
    if "mongo_url" in request.fixturenames:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            request.getfixturevalue("mongo_url"), serverSelectionTimeoutMS=5000
        )
        try:
            await client.drop_database(found.db)
        finally:
            await client.close()


async def _delete_broker_objects(url: str, found: Names) -> None:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        for queue in found.queues_to_delete():
            # A failed delete closes the AMQP channel, so each delete gets its own.
            async with connection.channel() as channel:
                await channel.queue_delete(queue)
        for exchange in found.exchanges_to_delete():
            async with connection.channel() as channel:
                await channel.exchange_delete(exchange)
