"""What operators read: /metrics values after a known scenario, and readiness through an outage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from devtools.devstack import SoketiServer
from tests.integration.harness import Fanout, envelope, iso_ago, running_worker, wait_until
from tests.integration.proxy import TcpProxy


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> AsyncIterator[Fanout]:
    """A worker reaching Soketi through the proxy, sampling queue depths quickly."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        soketi_port=soketi_proxy.port,
        queue_sample_interval_s=0.2,
    ) as running:
        yield running


async def _get(fanout: Fanout, path: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{fanout.http_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await (response.json() if path != "/metrics" else response.text())
        return response.status, body


async def test_metrics_count_what_happened(fanout: Fanout) -> None:
    """After 3 deliveries, a duplicate, a stale typing event and a bad message, /metrics says so."""
    sub = await fanout.subscriber("private-admin")
    first = envelope("user.registered", {"userId": "u1"})
    for env in (
        first,
        first,
        envelope("user.registered", {"userId": "u2"}),
        envelope(
            "payment.received",
            {
                "orderId": "o1",
                "paymentId": "p1",
                "customerId": "u1",
                "shopIds": ["s1", "s2"],
                "amount": 10,
            },
        ),
    ):
        await fanout.publish(env)
    await fanout.publish(
        envelope(
            "typing.started",
            {"conversationId": "c", "userId": "u1", "userType": "user"},
            occurredAt=iso_ago(30),
        )
    )
    await fanout.publish(b"not json", routing_key="user.registered")
    await fanout.wait_settled(3, "delivered")
    await fanout.wait_settled(1, "dead_lettered")
    await fanout.wait_settled(1, "dropped")
    await sub.wait_for(lambda got: len(got) >= 3, 15)
    await wait_until(lambda: fanout.sample("bazaar_fanout_queue_messages", queue="dlq") == 1, 15)
    status, text = await _get(fanout, "/metrics")
    assert status == 200
    p = "bazaar_fanout_"
    s = fanout.sample
    assert (
        s(f"{p}messages_total", event_type="user.registered", outcome="delivered", reason="") == 2
    )
    assert (
        s(f"{p}messages_total", event_type="payment.received", outcome="delivered", reason="") == 1
    )
    assert (
        s(f"{p}messages_total", event_type="user.registered", outcome="duplicate", reason="") == 1
    )
    assert (
        s(f"{p}messages_total", event_type="typing.started", outcome="dropped", reason="stale") == 1
    )
    assert (
        s(
            f"{p}messages_total",
            event_type="invalid",
            outcome="dead_lettered",
            reason="invalid_json",
        )
        == 1
    )
    assert s(f"{p}processing_seconds_count", event_type="user.registered") == 3
    assert s(f"{p}event_age_seconds_count") == 3
    # 2 new-user events + payment.received to 2 sellers, the customer, the order and admins:
    # 7 Pusher events, in 1 to 3 calls depending on how the batcher coalesced them.
    assert s(f"{p}triggers_per_request_sum") == 1 + 1 + 5
    assert 1 <= s(f"{p}triggers_per_request_count") <= 3
    assert s(f"{p}soketi_responses_total", status_class="2xx") == s(
        f"{p}triggers_per_request_count"
    )
    assert s(f"{p}soketi_request_seconds_count") == s(f"{p}triggers_per_request_count")
    # Checks of concurrent messages share queries: at most one per message.
    assert 1 <= s(f"{p}mongodb_query_seconds_count", operation="dedup check") <= 4
    # Four messages look users up, at most once each: both copies of ``first`` (the copy's
    # lookup goes out with its duplicate check), u2 and the payment.
    assert 1 <= s(f"{p}mongodb_query_seconds_count", operation="find in users") <= 4
    assert s(f"{p}in_flight_messages") == 0
    assert s(f"{p}consumer_up") == 1
    assert s(f"{p}circuit_open", downstream="soketi") == 0
    assert s(f"{p}queue_messages", queue="main") == 0
    assert f'{p}queue_messages{{queue="retry_1s"}} 0.0' in text
    assert f"{p}event_loop_lag_seconds" in text


async def test_readiness_flips_with_a_soketi_outage(fanout: Fanout, soketi_proxy: TcpProxy) -> None:
    """/readyz is 200, turns 503 naming Soketi while it is cut, and 200 again once restored."""
    assert (await _get(fanout, "/readyz"))[0] == 200
    await soketi_proxy.cut()
    await fanout.publish(envelope("user.registered", {"userId": "u1"}))
    for _ in range(5):  # enough failures to open the circuit
        await fanout.publish(envelope("user.registered", {"userId": "u1"}))
    await wait_until(
        lambda: fanout.sample("bazaar_fanout_circuit_open", downstream="soketi") == 1, 20
    )
    status, body = await _get(fanout, "/readyz")
    assert status == 503
    assert body["checks"]["soketi"].startswith("circuit open")
    assert body["checks"]["mongodb"] == "ok"
    # Consuming goes on (bounded by the prefetch window): held events reach history.
    assert body["checks"]["consumer"] == "ok"
    assert (await _get(fanout, "/healthz"))[0] == 200
    await soketi_proxy.restore()
    await wait_until(
        lambda: fanout.sample("bazaar_fanout_circuit_open", downstream="soketi") == 0, 30
    )
    await wait_until(lambda: fanout.sample("bazaar_fanout_consumer_up") == 1, 10)
    status, body = await _get(fanout, "/readyz")
    assert status == 200, body
    await fanout.wait_settled(6, "delivered")
