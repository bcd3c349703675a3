"""The dead-letter toolkit (`python -m worker dlq ...`) against the real broker and worker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest

from devtools.devstack import SoketiServer
from tests.integration.harness import Fanout, envelope, running_worker


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker on this test's own names."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as running:
        yield running


async def cli(fanout: Fanout, *args: str) -> tuple[int, str, str]:
    """Run `python -m worker ARGS` with the test's broker settings; return code, stdout, stderr."""
    env = {
        **os.environ,
        "RABBITMQ_URL": fanout.settings.rabbitmq_url.get_secret_value(),
        "EVENTS_EXCHANGE": fanout.settings.events_exchange,
        "WORKER_QUEUE": fanout.settings.worker_queue,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def park(fanout: Fanout, env: dict[str, Any], reason: str) -> None:
    """Put a valid envelope straight into the DLQ, as the worker would have after giving up."""
    async with fanout.connection.channel(publisher_confirms=True) as channel:
        dead = await channel.get_exchange(f"{fanout.settings.worker_queue}.dead", ensure=True)
        await dead.publish(
            aio_pika.Message(
                orjson.dumps(env),
                message_id=env["id"],
                content_type="application/json",
                headers={
                    "fanout-reason": reason,
                    "fanout-error": "Soketi timed out",
                    "fanout-attempts": 6,
                    "fanout-first-failed-at": "2026-11-29T05:00:00+00:00",
                },
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=env["type"],
        )


async def test_list_json_shows_every_dead_letter_without_consuming(fanout: Fanout) -> None:
    """`dlq list --json` reports each dead letter in the contract's shape and consumes nothing."""
    await fanout.publish(b"{broken", routing_key="order.created")
    parked = envelope("user.registered", {"userId": "u1"})
    await park(fanout, parked, "retries_exhausted")
    await fanout.wait_settled(1, "dead_lettered", "invalid_json")
    code, out, _ = await cli(fanout, "dlq", "list", "--json")
    assert code == 0
    listed = {item["id"]: item for item in json.loads(out)}
    assert listed[parked["id"]] == {
        "id": parked["id"],
        "reason": "retries_exhausted",
        "type": "user.registered",
        "error": "Soketi timed out",
        "attempts": 6,
        "firstFailedAt": "2026-11-29T05:00:00+00:00",
        "routingKey": "user.registered",
    }
    broken = next(item for item in listed.values() if item["reason"] == "invalid_json")
    assert broken["routingKey"] == "order.created"
    assert broken["type"] is None
    code, out, _ = await cli(fanout, "dlq", "list", "--reason", "invalid_json")
    assert code == 0 and broken["id"] in out and parked["id"] not in out
    assert len(await fanout.dead_letters()) == 2


async def test_show_prints_headers_and_body(fanout: Fanout) -> None:
    """`dlq show ID` prints the fanout headers and the pretty body; an unknown ID exits 1."""
    parked = envelope("user.registered", {"userId": "u1"})
    await park(fanout, parked, "retries_exhausted")
    code, out, _ = await cli(fanout, "dlq", "show", parked["id"])
    assert code == 0
    assert "fanout-reason: retries_exhausted" in out and '"userId": "u1"' in out
    assert (await cli(fanout, "dlq", "show", "no-such-id"))[0] == 1


async def test_replay_delivers_once_and_removes_it(fanout: Fanout) -> None:
    """`dlq replay --id` sends a parked event back: delivered once, removed, others stay."""
    sub = await fanout.subscriber("private-admin")
    parked = envelope("user.registered", {"userId": "u1"})
    other = envelope("seller.registered", {"shopId": "s1"})
    await park(fanout, parked, "retries_exhausted")
    await park(fanout, other, "retries_exhausted")
    code, out, _ = await cli(fanout, "dlq", "replay", "--id", parked["id"], "--dry-run")
    assert code == 0 and "would replay 1" in out
    assert len(await fanout.dead_letters()) == 2
    code, out, err = await cli(fanout, "dlq", "replay", "--id", parked["id"])
    assert code == 0, err
    assert "replayed 1 of 1" in out
    assert "fanout.dlq_replayed" in err and "operator" in err
    await sub.wait_for(lambda got: len(got) >= 1, 15)
    await fanout.wait_settled(1, "delivered")
    assert [r.data["eventId"] for r in sub.events()] == [parked["id"]]
    assert [d.message_id for d in await fanout.dead_letters()] == [other["id"]]


async def test_purge_needs_confirmation(fanout: Fanout) -> None:
    """`dlq purge` without --yes removes nothing; with --yes it removes only the selection."""
    keep = envelope("user.registered", {"userId": "u1"})
    drop = envelope("seller.registered", {"shopId": "s1"})
    await park(fanout, keep, "retries_exhausted")
    await park(fanout, drop, "rejected_by_soketi")
    code, out, _ = await cli(fanout, "dlq", "purge", "--reason", "rejected_by_soketi")
    assert code == 0 and "would delete 1" in out
    assert len(await fanout.dead_letters()) == 2
    assert (await cli(fanout, "dlq", "purge"))[0] == 2
    code, out, _ = await cli(fanout, "dlq", "purge", "--reason", "rejected_by_soketi", "--yes")
    assert code == 0 and "deleted 1" in out
    assert [d.message_id for d in await fanout.dead_letters()] == [keep["id"]]
