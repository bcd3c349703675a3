"""A three-node RabbitMQ cluster loses the node leading the worker's queue, under load.

Opt-in (it starts three brokers, about a minute in all)::

    FANOUT_CLUSTER_TEST=1 .venv/bin/python -m pytest tests/integration/test_cluster.py

The worker is given every node in ``RABBITMQ_URL`` (comma-separated, its own node first). Its
quorum queue has a member on each node and its leader where the worker declared it; that node
is stopped while events stream in. The queue elects a new leader, the worker reconnects to a
surviving node, and a Pusher subscriber sees every event exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.devstack import SoketiServer
from tests.integration import cluster as rabbit
from tests.integration.harness import Fanout, envelope, running_worker, wait_until

pytestmark = pytest.mark.skipif(
    os.environ.get("FANOUT_CLUSTER_TEST") != "1" or not rabbit.available(),
    reason="starts a three-node RabbitMQ cluster: set FANOUT_CLUSTER_TEST=1 to run",
)

EVENTS = 900


@pytest.fixture
def rabbit_cluster() -> Iterator[rabbit.Cluster]:
    """Three fresh nodes joined into one cluster; every one stopped afterwards, even on failure."""
    cluster = rabbit.Cluster(Path(tempfile.mkdtemp(prefix="fanout-cluster-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()
        cluster.remove()


def _delivered_ids(fanout: Fanout) -> Counter[str]:
    return Counter(r.data["eventId"] for sub in fanout.subscribers for r in sub.events())


def _reconnects(fanout: Fanout) -> float:
    return fanout.sample("bazaar_fanout_reconnects_total", kind="connection")


async def _publish_all(fanout: Fanout, envelopes: list[dict[str, Any]]) -> int:
    """Publish at a steady pace; a publish that fails mid-failover is sent again (the worker
    drops repeats by event id). Returns how many publishes had to be repeated."""
    repeated = 0
    for i, env in enumerate(envelopes):
        for _attempt in range(50):
            try:
                await asyncio.wait_for(fanout.publish(env), 10)
                break
            except Exception:  # any broker error: try again shortly
                repeated += 1
                await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"could not publish event {i}")
        if i % 10 == 9:
            await asyncio.sleep(0.01)
    return repeated


def _worker_connections(cluster: rabbit.Cluster, via: rabbit.Node) -> list[tuple[str, str]]:
    """(node, ``connection_name``) of every bazaar-fanout connection in the cluster.

    ``list_connections`` has no node column: the AMQP port a connection reached tells it.
    """
    out = cluster.ctl(via, "list_connections", "port", "client_properties", "--formatter", "json")
    by_port = {node.amqp_port: node.name for node in cluster.nodes}
    found = []
    for row in json.loads(out):
        text = json.dumps(row["client_properties"])
        for name in ("bazaar-fanout consumer", "bazaar-fanout publisher"):
            if name in text:
                found.append((by_port[int(row["port"])], name))
    return sorted(found)


async def test_leader_node_stopped_under_load_delivers_everything_once(
    rabbit_cluster: rabbit.Cluster, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    cluster = rabbit_cluster
    first, _, last = cluster.nodes
    # reconnect_interval: aio-pika's default 5 s would only make the test slower.
    worker_url = ",".join(f"{node.url}?reconnect_interval=0.5" for node in cluster.nodes)
    print(f"\ncluster: {', '.join(f'{n.name}:{n.amqp_port}' for n in cluster.nodes)}")
    async with running_worker(
        rabbitmq_url=last.url,  # the test publishes through the last node
        worker_rabbitmq_url=worker_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as fanout:
        leader, members = await asyncio.to_thread(cluster.queue_placement, last, names.queue)
        print(f"queue {names.queue}: leader {leader}, members {sorted(members)}")
        assert sorted(members) == sorted(n.name for n in cluster.nodes)
        # The worker connected to the first URL and declared the queue there (client-local).
        assert leader == first.name
        assert await asyncio.to_thread(_worker_connections, cluster, last) == [
            (first.name, "bazaar-fanout consumer"),
            (first.name, "bazaar-fanout publisher"),
        ]

        sub = await fanout.subscriber("private-admin")
        envelopes = [envelope("user.registered", {"userId": f"u{i}"}) for i in range(EVENTS)]
        publishing = asyncio.create_task(_publish_all(fanout, envelopes))
        await sub.wait_for(lambda got: len(got) >= EVENTS // 4, 30)
        stopping = cluster.node_named(leader)
        print(f"stopping {stopping.name} after {len(sub.events())} delivered")
        await asyncio.to_thread(cluster.stop_node, stopping)

        repeated = await asyncio.wait_for(publishing, 120)
        new_leader = await asyncio.to_thread(cluster.wait_leader, last, names.queue, leader)
        _, members = await asyncio.to_thread(cluster.queue_placement, last, names.queue)
        print(f"new leader {new_leader}; publishes repeated: {repeated}")
        await wait_until(lambda: _reconnects(fanout) >= 1, 30)
        await sub.wait_for(lambda got: len(set(_delivered_ids(fanout))) >= EVENTS, 60)
        await wait_until(
            lambda: (
                fanout.sample("bazaar_fanout_in_flight_messages") == 0
                and fanout.sample("bazaar_fanout_consumer_up") == 1
            ),
            30,
        )
        # A marker published last queues behind anything the broker redelivers, so once it
        # has arrived, any repeat has shown up at the subscriber too.
        marker = envelope("user.registered", {"userId": "marker"})
        await _publish_all(fanout, [marker])
        await sub.wait_for(lambda got: marker["id"] in _delivered_ids(fanout), 60)

        counts = _delivered_ids(fanout)
        counts.pop(marker["id"], None)
        lost = {e["id"] for e in envelopes} - set(counts)
        twice = {event: n for event, n in counts.items() if n > 1}
        print(
            f"delivered {len(counts)} of {EVENTS}: lost {len(lost)}, duplicated {len(twice)}; "
            f"worker reconnects {_reconnects(fanout):.0f}"
        )
        assert not lost
        assert not twice
        assert await fanout.dead_letters() == []
        # The worker now runs on the survivors: both its connections, nowhere else.
        now = await asyncio.to_thread(_worker_connections, cluster, last)
        print(f"worker connections now: {now}")
        assert [name for _, name in now] == ["bazaar-fanout consumer", "bazaar-fanout publisher"]
        assert all(node != stopping.name for node, _ in now)
