"""Admin live stats end to end: what was delivered, one sender for a fleet of worker processes,
and figures replayed at once to a new admin by Soketi's cache channel."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from pymongo import AsyncMongoClient

from devtools.devstack import SoketiServer, start_soketi
from devtools.watch import PusherSubscriber, Received, sign_channel
from tests.conftest import SOKETI_APP_ID, Names
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.test_lifecycle import WorkerProcess, worker_env, worker_process

ADMIN = "private-admin"
ADMIN_STATS = "private-cache-admin-stats"
EVENT = "stats-update"
P = "bazaar_fanout_"
INTERVAL_S = 0.4


def _stats(sub: PusherSubscriber, channel: str = ADMIN) -> list[dict[str, Any]]:
    return [r.data for r in sub.events(channel, EVENT)]


@pytest.fixture
async def with_stats(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker sending stats every 0.2 s and sampling queue depths as often."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        stats_interval_s=0.2,
        queue_sample_interval_s=0.2,
    ) as fanout:
        yield fanout


async def test_stats_update_counts_what_was_delivered(with_stats: Fanout) -> None:
    """After 3 user.registered, 1 seller.registered and 1 bad message, stats-update says so,
    with the accounts online split into customers and sellers."""
    fanout = with_stats
    admin = await fanout.subscriber(ADMIN)
    now = datetime.now(UTC)
    await fanout.db["fanout_presence"].insert_many(
        [
            {"_id": "user:u1", "online": True, "since": now},
            {"_id": "user:u2", "online": False, "since": now},
            {"_id": "seller:s1", "online": True, "since": now},
            {"_id": "seller:s2", "online": True, "since": now},
        ]
    )
    for user_id in ("u1", "u2", "u3"):
        await fanout.publish(envelope("user.registered", {"userId": user_id}))
    await fanout.publish(envelope("seller.registered", {"shopId": "s1"}))
    await fanout.publish(b"not json", routing_key="user.registered")
    await fanout.wait_settled(4, "delivered")
    await fanout.wait_settled(1, "dead_lettered")

    def complete(data: dict[str, Any]) -> bool:
        return data["eventsPerMinute"].get("user.registered") == 3 and data["dlqDepth"] == 1

    await admin.wait_for(lambda _: any(map(complete, _stats(admin))), timeout_s=15)
    stats = [data for data in _stats(admin) if complete(data)][-1]
    assert stats["eventsPerMinute"] == {"user.registered": 3, "seller.registered": 1}
    assert (stats["accountsOnline"], stats["customersOnline"], stats["sellersOnline"]) == (3, 1, 2)
    assert stats["workers"] == 1
    assert abs(stats["timestamp"] / 1000 - time.time()) < 10
    assert "eventId" not in stats  # not a domain event: no id, no history
    assert fanout.sample(f"{P}accounts_online") == 3


@pytest.fixture
async def rare_stats(rabbitmq_url: str, mongo_url: str, names: Any) -> AsyncIterator[Fanout]:
    """A worker that sends its figures at start and then only every minute, on a Soketi of
    its own: the cache channel's last event is per Soketi app, and the session's shared
    Soketi may still hold another test's figures."""
    own = start_soketi(
        SOKETI_APP_ID, key=f"key-{secrets.token_hex(8)}", secret=secrets.token_hex(24)
    )
    try:
        async with running_worker(
            rabbitmq_url=rabbitmq_url,
            mongo_url=mongo_url,
            soketi=own,
            names=names,
            stats_interval_s=60,
        ) as fanout:
            yield fanout
    finally:
        own.stop()


async def test_a_new_admin_receives_the_figures_at_once(rare_stats: Fanout) -> None:
    """An admin subscribing to private-cache-admin-stats gets the last stats-update from
    Soketi the moment it subscribes, long before the next one is due."""
    fanout = rare_stats
    first = await fanout.subscriber(ADMIN_STATS)  # replayed or live: the figures sent at start
    await first.wait_for(lambda _: bool(_stats(first, ADMIN_STATS)), timeout_s=10)
    [sent] = _stats(first, ADMIN_STATS)

    subscribed = time.monotonic()
    later = await fanout.subscriber(ADMIN_STATS)
    await later.wait_for(lambda _: bool(_stats(later, ADMIN_STATS)), timeout_s=5)
    [replayed] = later.events(ADMIN_STATS, EVENT)
    assert replayed.data == sent  # the same figures: Soketi's copy of the last event
    assert replayed.received_at_monotonic - subscribed < 5  # the next is a minute away


# --- two worker processes -------------------------------------------------------------------


async def _publish_registrations(rabbitmq_url: str, exchange: str, count: int) -> None:
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(exchange, ensure=True)
        for i in range(count):
            env = envelope("user.registered", {"userId": f"u{i}"})
            message = aio_pika.Message(
                orjson.dumps(env), content_type="application/json", message_id=env["id"]
            )
            await events.publish(message, routing_key=env["type"])


async def _delivered(worker: WorkerProcess) -> float:
    labels = {"event_type": "user.registered", "outcome": "delivered"}
    return await worker.metric(f"{P}messages_total", **labels) or 0.0


async def _admin(soketi: SoketiServer) -> PusherSubscriber:
    sub = PusherSubscriber()
    await sub.connect(soketi.host, soketi.port, soketi.key)
    await sub.subscribe(ADMIN, lambda sid, ch: sign_channel(soketi.key, soketi.secret, sid, ch))
    return sub


async def _lease_holder_pid(mongo_url: str, db: str) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
    try:
        lease = await client[db]["fanout_stats"].find_one({"_id": "lease"})
    finally:
        await client.close()
    assert lease is not None
    return int(str(lease["holder"]).split(":")[-2])  # {host}:{pid}:{random}


def _after(got: list[Received], since: float) -> list[Received]:
    return [r for r in got if r.event == EVENT and r.received_at_monotonic > since]


async def test_two_worker_processes_send_one_combined_figure(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names, tmp_path: Path
) -> None:
    """Two `python -m worker run` processes share the work; one of them sends stats-update
    with both workers' counts summed, and when it dies the other takes over with its own."""
    env = worker_env(names, rabbitmq_url, mongo_url, soketi, STATS_INTERVAL_S=str(INTERVAL_S))
    async with (
        worker_process(env, tmp_path / "a.log") as a,
        worker_process(env, tmp_path / "b.log") as b,
    ):
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        admin = await _admin(soketi)
        try:
            await _publish_registrations(rabbitmq_url, names.exchange, 20)

            async def shared() -> bool:
                counts = [await _delivered(a), await _delivered(b)]
                return sum(counts) == 20 and min(counts) > 0

            await a.wait(shared, 20, "20 deliveries shared by both workers")

            def combined(r: Received) -> bool:
                figures = r.data
                return figures["eventsPerMinute"].get("user.registered") == 20

            await admin.wait_for(lambda got: any(map(combined, _after(got, 0))), timeout_s=15)
            since = max(r.received_at_monotonic for r in _after(admin.events(), 0) if combined(r))

            # The next six: every one the fleet's sum, one sender's cadence (two would be twice).
            await admin.wait_for(lambda got: len(_after(got, since)) >= 6, timeout_s=15)
            following = _after(admin.events(), since)[:6]
            assert all(combined(r) and r.data["workers"] == 2 for r in following)
            spread_s = following[-1].received_at_monotonic - following[0].received_at_monotonic
            assert spread_s >= 5 * INTERVAL_S * 0.8

            holder = await _lease_holder_pid(mongo_url, names.db)
            assert holder in (a.process.pid, b.process.pid)
            sender, survivor = (a, b) if holder == a.process.pid else (b, a)
            own = await _delivered(survivor)
            sender.process.kill()
            killed = time.monotonic()

            def alone(r: Received) -> bool:
                figures = r.data
                return figures["workers"] == 1 and figures["eventsPerMinute"] == {
                    "user.registered": int(own)
                }

            await admin.wait_for(lambda got: any(map(alone, _after(got, killed))), timeout_s=15)
        finally:
            await admin.close()
