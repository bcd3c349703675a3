"""Outages injected at the network with a loopback TCP proxy: nothing lost, nothing twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.harness import Fanout, envelope, running_worker, wait_until
from tests.integration.proxy import TcpProxy
from worker.devstack import SoketiServer


@pytest.fixture
async def soketi_proxy(soketi: SoketiServer) -> AsyncIterator[TcpProxy]:
    """A cuttable path from the worker to Soketi."""
    proxy = await TcpProxy(soketi.host, soketi.port).start()
    yield proxy
    await proxy.close()


def _delivered_ids(fanout: Fanout) -> Counter[str]:
    return Counter(r.data["eventId"] for sub in fanout.subscribers for r in sub.events())


async def test_soketi_outage_delivers_everything_once(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """Soketi unreachable for seconds while 300 events arrive: all delivered once, DLQ empty."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        exchange=names.exchange,
        queue=names.queue,
        db=names.db,
        soketi_port=soketi_proxy.port,
    ) as fanout:
        sub = await fanout.subscriber("private-admin")
        envelopes = [envelope("user.registered", {"userId": f"u{i}"}) for i in range(300)]
        for env in envelopes[:50]:
            await fanout.publish(env)
        await sub.wait_for(lambda got: len(got) >= 50, 20)
        await soketi_proxy.cut()
        for env in envelopes[50:]:
            await fanout.publish(env)
        await wait_until(
            lambda: fanout.sample("bazaar_fanout_circuit_open", downstream="soketi") == 1, 20
        )
        # The outage lasts until the worker's probes have been turned away several times.
        await soketi_proxy.wait_rejected(soketi_proxy.rejected + 5, timeout_s=30)
        await soketi_proxy.restore()
        await sub.wait_for(lambda got: len(got) >= 300, 60)
        await fanout.wait_settled(300, "delivered")
        counts = _delivered_ids(fanout)
        assert set(counts) == {e["id"] for e in envelopes}
        assert max(counts.values()) == 1
        assert await fanout.dead_letters() == []
        retried = fanout.settled("retried")
        print(f"retried through tiers: {retried:.0f} of 300")
        assert retried <= 10
