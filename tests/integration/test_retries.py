"""Retry tiers, the delivery-limit backstop and DLQ headers, on the real broker (no fakes)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from devtools.devstack import SoketiServer
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.proxy import TcpProxy
from worker.broker.topology import Topology, declare
from worker.retry import RetryPolicy

FANOUT_HEADERS = {
    "fanout-reason",
    "fanout-error",
    "fanout-attempts",
    "fanout-first-failed-at",
}


def _status_changed(order_id: str) -> dict[str, Any]:
    data = {"orderId": order_id, "customerId": "u1", "shopId": "s1", "status": "shipped"}
    return envelope("order.status_changed", data)


async def _tap(fanout: Fanout, exchange: str, queue: str) -> AbstractQueue:
    """A test-only queue bound to fanout ``exchange``: it sees a copy of every message there."""
    channel = await fanout.connection.channel()
    tap = await channel.declare_queue(queue, durable=False, auto_delete=True)
    await tap.bind(exchange, routing_key="#")
    return tap


async def _get(
    queue: AbstractQueue, *, no_ack: bool, timeout_s: float = 15
) -> AbstractIncomingMessage:
    """The first message that arrives in ``queue``, waiting at most ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await queue.get(no_ack=no_ack, fail=False)
            if message is not None:
                return message
            await asyncio.sleep(0.02)  # basic.get cannot wait for a message: poll


def _deaths(message: AbstractIncomingMessage) -> list[dict[str, Any]]:
    """The broker's ``x-death`` records of ``message`` (one per queue it died in)."""
    deaths: Any = (message.headers or {}).get("x-death", [])
    return list(deaths)


def _iso(value: Any) -> datetime:
    text = value.decode() if isinstance(value, bytes) else value
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None
    return parsed


async def _depth(channel: AbstractChannel, queue: str) -> int:
    """Messages ready in ``queue`` now (a passive declare consumes nothing)."""
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_transient_failure_goes_through_a_tier_and_is_delivered_once(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """Soketi down for one attempt: the event waits in the 1 s tier, returns and arrives once."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        soketi_port=soketi_proxy.port,
        retry=RetryPolicy.instant(1),  # no in-process retry hides the failure
    ) as fanout:
        topology = names.topology()
        to_tier = await _tap(fanout, topology.tier(0), names.queue_named("tap-tier"))
        back = await _tap(fanout, topology.return_exchange, names.queue_named("tap-return"))
        sub = await fanout.subscriber("private-order-o1", "private-admin")
        env = _status_changed("o1")
        await soketi_proxy.cut()
        await fanout.publish(env)
        await fanout.wait_settled(1, "retried")
        await soketi_proxy.restore()
        await sub.wait_for(lambda got: len(got) >= 2, 15)
        await fanout.wait_settled(1, "delivered")

        scheduled = await _get(to_tier, no_ack=True)
        returned = await _get(back, no_ack=True)
        for copy in (scheduled, returned):
            assert copy.routing_key == "order.status_changed"
            assert copy.body == orjson.dumps(env)
            assert copy.message_id == env["id"]
            assert (copy.headers or {})["fanout-attempts"] == 1
            _iso((copy.headers or {})["fanout-first-failed-at"])
        [death] = _deaths(returned)  # the broker expired it from the tier
        assert (death["reason"], death["queue"]) == ("expired", topology.tier(0))
        assert fanout.sample("bazaar_fanout_retries_scheduled_total", tier="1s") >= 1
        assert sorted((r.channel, r.event, r.data["eventId"]) for r in sub.events()) == [
            ("private-admin", "order-update", env["id"]),
            ("private-order-o1", "order-update", env["id"]),
        ]
        assert fanout.settled("dead_lettered") == 0


async def _dead_letter(fanout: Fanout, timeout_s: float = 15) -> AbstractIncomingMessage:
    """The one message in the DLQ, read and put back (nothing consumed)."""
    async with fanout.connection.channel() as channel:
        queue = await channel.get_queue(fanout.settings.dlq_name, ensure=False)
        message = await _get(queue, no_ack=False, timeout_s=timeout_s)
        await message.nack(requeue=True)
    return message


async def test_retries_exhausted_after_the_last_tier(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """Soketi down throughout: after both tiers the event is parked as retries_exhausted, intact."""
    names.retry_delays_s = (0.2, 0.3)
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        soketi_port=soketi_proxy.port,
        retry=RetryPolicy.instant(1),
        retry_delays_s=names.retry_delays_s,
    ) as fanout:
        await soketi_proxy.cut()
        env = _status_changed("o2")
        await fanout.publish(env)
        await fanout.wait_settled(1, "dead_lettered", "retries_exhausted")
        dead = await _dead_letter(fanout)
        headers = dead.headers or {}
        assert headers["fanout-reason"] == "retries_exhausted"
        assert headers["fanout-attempts"] == 3
        assert "soketi_unavailable" in str(headers["fanout-error"])
        assert _iso(headers["fanout-first-failed-at"]) <= datetime.now(
            _iso(env["occurredAt"]).tzinfo
        )
        assert dead.routing_key == "order.status_changed"
        assert dead.body == orjson.dumps(env)
        assert dead.message_id == env["id"]
        assert fanout.sample("bazaar_fanout_retries_scheduled_total", tier="200ms") == 1
        assert fanout.sample("bazaar_fanout_retries_scheduled_total", tier="300ms") == 1
        assert fanout.sample("bazaar_fanout_circuit_open", downstream="soketi") == 0


async def test_retry_max_age_parks_the_event_before_the_tiers_run_out(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """With a 0.5 s maximum age, an event back from the 1 s tier is parked, not sent on to 60 s."""
    names.retry_delays_s = (1, 60)
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        soketi_port=soketi_proxy.port,
        retry=RetryPolicy.instant(1),
        retry_delays_s=names.retry_delays_s,
        retry_max_age_s=0.5,
    ) as fanout:
        await soketi_proxy.cut()
        env = _status_changed("o3")
        await fanout.publish(env)
        await fanout.wait_settled(1, "dead_lettered", "retries_exhausted")
        headers = (await _dead_letter(fanout)).headers or {}
        assert (headers["fanout-reason"], headers["fanout-attempts"]) == ("retries_exhausted", 2)
        assert fanout.sample("bazaar_fanout_retries_scheduled_total", tier="1s") == 1
        assert fanout.sample("bazaar_fanout_retries_scheduled_total", tier="1m") == 0


async def test_delivery_limit_dead_letters_a_message_that_keeps_coming_back(
    rabbitmq_url: str, names: Any
) -> None:
    """Without a worker, a message requeued past x-delivery-limit is dead-lettered by the broker."""
    topology = Topology(names.exchange, names.queue, delivery_limit=3, retry_delays_s=(1, 2))
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        declared = await declare(channel, topology)
        env = _status_changed("o4")
        await declared.events_exchange.publish(
            aio_pika.Message(
                orjson.dumps(env),
                message_id=env["id"],
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="order.status_changed",
        )
        dlq = await channel.get_queue(names.dlq, ensure=False)
        rejected = 0
        async with asyncio.timeout(15):
            while await _depth(channel, names.dlq) == 0:
                message = await declared.queue.get(no_ack=False, fail=False)
                if message is None:
                    await asyncio.sleep(0.02)  # the broker is moving it; not synchronisation
                    continue
                await message.reject(requeue=True)
                rejected += 1
        print(f"delivery limit 3: rejected {rejected} times before the broker dead-lettered it")
        # Limit 3: the first delivery and three redeliveries; the fourth return is one too many.
        assert rejected == topology.delivery_limit + 1
        dead = await _get(dlq, no_ack=False, timeout_s=5)
        assert dead.routing_key == "order.status_changed"
        assert dead.body == orjson.dumps(env)
        assert dead.message_id == env["id"]
        [death] = _deaths(dead)
        assert death["queue"] == names.queue
        assert (death["reason"], death["routing-keys"]) == (
            "delivery_limit",
            ["order.status_changed"],
        )
        assert "fanout-reason" not in (dead.headers or {})  # the broker's own dead-lettering
        await dead.ack()
        assert await _depth(channel, names.queue) == 0


async def test_dead_letter_headers_are_the_contracts_four_plus_the_originals(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """An invalid event is parked with the four fanout-* headers added to its own, ids kept."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as fanout:
        env = envelope("user.registered", {"userId": "not/an/id"})
        await fanout.exchange.publish(
            aio_pika.Message(
                orjson.dumps(env),
                headers={"x-trace": "abc"},
                message_id=env["id"],
                correlation_id="corr-1",
                content_type="application/vnd.bazaar+json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key="user.registered",
        )
        await fanout.wait_settled(1, "dead_lettered", "invalid_event")
        dead = await _dead_letter(fanout)
        headers = dead.headers or {}
        # RabbitMQ 3.10 stamps x-delivery-count on every delivery from a quorum queue, our read
        # of the DLQ included, so it says nothing about what the worker wrote.
        assert set(headers) - {"x-delivery-count"} == FANOUT_HEADERS | {"x-trace"}
        assert headers["x-trace"] == "abc"
        assert headers["fanout-reason"] == "invalid_event"
        assert headers["fanout-attempts"] == 1
        error = headers["fanout-error"]
        assert isinstance(error, str) and "userId" in error and "\n" not in error
        _iso(headers["fanout-first-failed-at"])
        assert dead.message_id == env["id"]
        assert dead.correlation_id == "corr-1"
        assert dead.content_type == "application/vnd.bazaar+json"
        assert dead.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert (dead.routing_key, dead.body) == ("user.registered", orjson.dumps(env))
