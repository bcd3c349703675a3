"""The Node publisher (clients/node) on the real broker, worker and Soketi."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devtools.devstack import SoketiServer
from handlers.ordering import lane_of
from schemas import EVENT_TYPES
from tests.conftest import Names
from tests.integration.harness import Fanout, running_worker
from worker.events import LANE

NODE_DIR = Path(__file__).parents[2] / "clients" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are not on PATH (Node 20+ is needed)"
)


@pytest.fixture(autouse=True)
def _node_modules_installed() -> None:
    """Fail with the fix, not a stack trace, when clients/node has no dependencies installed."""
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        pytest.fail("clients/node has no node_modules: run `make install`")


async def _run(
    *argv: str, env: dict[str, str], timeout_s: float = 120
) -> tuple[int | None, str, str]:
    """Run ``argv`` in clients/node with ``env`` added; return exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, out.decode(), err.decode()


async def test_node_test_suite_passes_against_the_real_broker(
    rabbitmq_url: str, mongo_url: str, names: Names
) -> None:
    """`npm test` in clients/node passes, its broker and outbox tests included (none skipped)."""
    names.exchange_named("unbound")  # the node test's unroutable exchange, cleaned up either way
    assert NPM is not None
    code, out, err = await _run(
        NPM,
        "test",
        "--silent",
        env={
            "FANOUT_TEST_AMQP_URL": rabbitmq_url,
            "FANOUT_TEST_EXCHANGE": names.exchange,
            "FANOUT_TEST_MONGODB_URL": mongo_url,
            "FANOUT_TEST_MONGODB_DB": names.db,
        },
    )
    report = f"stdout:\n{out[-6000:]}\nstderr:\n{err[-3000:]}"
    assert code == 0, report
    assert "# fail 0" in out, report
    assert "# SKIP" not in out, report
    assert "ok 1 - delivers a persistent JSON message" in out, report


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names
) -> AsyncIterator[Fanout]:
    """A worker on this test's own exchange, queue and database."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as running:
        yield running


async def test_event_published_from_node_reaches_a_websocket_subscriber(
    fanout: Fanout, rabbitmq_url: str
) -> None:
    """user.registered published by the Node module arrives at private-admin as new-user."""
    user_id = f"u-{uuid.uuid4().hex[:12]}"
    await fanout.db.users.insert_one({"_id": user_id, "name": "Meera", "email": "meera@example.in"})
    sub = await fanout.subscriber("private-admin")

    assert NODE is not None
    code, out, err = await _run(
        NODE,
        "examples/publish-one.js",
        env={
            "AMQP_URL": rabbitmq_url,
            "EXCHANGE": fanout.settings.events_exchange,
            "TYPE": "user.registered",
            "DATA": json.dumps({"userId": user_id}),
            "SOURCE": "node-integration-test",
        },
        timeout_s=60,
    )
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    envelope: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert envelope["type"] == "user.registered"
    assert envelope["source"] == "node-integration-test"

    def arrived(got: list[Any]) -> bool:
        return any(r.event == "new-user" and r.data["eventId"] == envelope["id"] for r in got)

    await sub.wait_for(arrived, timeout_s=20)
    [received] = sub.events("private-admin", "new-user")
    assert received.data["userId"] == user_id
    assert received.data["name"] == "Meera"
    assert received.data["email"] == "meera@example.in"
    await fanout.wait_settled(1, "delivered")
    assert fanout.settled("dead_lettered") == 0


#: Data that names both kinds of lane, and odd values, under every catalogue type.
LANE_DATA: list[Any] = [
    {"conversationId": "c1", "orderId": "o1", "userId": "u1"},
    {"orderId": "o2"},
    {"conversationId": "c3"},
    {"conversationId": "", "orderId": 7},
    ["o1"],
    None,
]


async def test_node_computes_the_same_lane_as_the_worker() -> None:
    """clients/node's ``laneOf`` and ``handlers.ordering.lane_of`` agree on every event type."""
    cases = [{"type": t, "data": d} for t in sorted(EVENT_TYPES) for d in LANE_DATA]
    cases += [{"type": None, "data": {"orderId": "o1"}}, {"type": "nope.never", "data": {}}]
    script = (
        'import { laneOf } from "./src/index.js";'
        "const cases = JSON.parse(process.env.CASES);"
        "console.log(JSON.stringify(cases.map((c) => laneOf(c) ?? null)));"
    )
    assert NODE is not None
    code, out, err = await _run(
        NODE, "--input-type=module", "-e", script, env={"CASES": json.dumps(cases)}
    )
    assert code == 0, err
    expected = [lane_of(c["type"], c["data"]) for c in cases]
    assert json.loads(out) == expected
    assert {"o1", "o2", "c1", "c3"} <= set(expected)  # both kinds of lane were exercised


async def test_an_order_event_from_node_carries_its_lane_header(
    fanout: Fanout, rabbitmq_url: str, names: Names
) -> None:
    """order.status_changed published by the Node module reaches the broker with
    ``fanout-lane`` = its orderId, so sharded workers keep the order's events in one shard."""
    channel = await fanout.connection.channel()
    tap = await channel.declare_queue(names.queue_named("tap"), durable=False, auto_delete=True)
    await tap.bind(fanout.settings.events_exchange, routing_key="order.#")
    data = {"orderId": "o-node-1", "customerId": "u1", "shopId": "s1", "status": "Shipping"}
    assert NODE is not None
    code, out, err = await _run(
        NODE,
        "examples/publish-one.js",
        env={
            "AMQP_URL": rabbitmq_url,
            "EXCHANGE": fanout.settings.events_exchange,
            "TYPE": "order.status_changed",
            "DATA": json.dumps(data),
        },
        timeout_s=60,
    )
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    async with asyncio.timeout(20):
        async with tap.iterator() as messages:
            async for message in messages:
                await message.ack()
                break
    assert message.routing_key == "order.status_changed"
    assert (message.headers or {}).get(LANE) == "o-node-1"
