"""Presence end to end: Soketi's own signed webhooks, rejected forgeries, reconciliation, stats."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.devstack import SoketiServer, start_soketi
from devtools.processes import free_port
from devtools.watch import PusherSubscriber, Received
from tests.conftest import SOKETI_APP_ID
from tests.integration.harness import Fanout, envelope, running_worker, wait_until

WEBHOOK_TYPES = ["channel_occupied", "channel_vacated"]
P = "bazaar_fanout_"


@pytest.fixture
async def webhook_stack(rabbitmq_url: str, mongo_url: str, names: Any) -> AsyncIterator[Fanout]:
    """A dedicated Soketi that sends its webhooks to a worker on a port chosen beforehand."""
    http_port = free_port()
    hook = {"url": f"http://127.0.0.1:{http_port}/webhooks/soketi", "event_types": WEBHOOK_TYPES}
    server = await asyncio.to_thread(
        start_soketi,
        SOKETI_APP_ID,
        key=f"key-{secrets.token_hex(8)}",
        secret=secrets.token_hex(24),
        webhooks=[hook],
    )
    try:
        async with running_worker(
            rabbitmq_url=rabbitmq_url,
            mongo_url=mongo_url,
            soketi=server,
            names=names,
            http_port=http_port,
        ) as fanout:
            await fanout.db["users"].insert_many(
                [{"_id": "u7", "name": "Ayesha"}, {"_id": "u8", "name": "Bilal"}]
            )
            await fanout.db["shops"].insert_one({"_id": "s1", "name": "Karachi Crafts"})
            yield fanout
    finally:
        await asyncio.to_thread(server.stop)


def _presence(sub: PusherSubscriber, event: str, subject_id: str) -> list[Received]:
    return [r for r in sub.events("private-admin", event) if r.data["subjectId"] == subject_id]


async def _stored(fanout: Fanout, key: str) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await fanout.db["fanout_presence"].find_one({"_id": key})
    return doc


async def test_a_browser_on_its_channel_is_online_until_it_leaves(webhook_stack: Fanout) -> None:
    """Subscribing to private-user-u7 sends admins user-online with the name; leaving, offline."""
    fanout = webhook_stack
    admin = await fanout.subscriber("private-admin")
    browser = await fanout.subscriber("private-user-u7")

    await admin.wait_for(lambda _: bool(_presence(admin, "user-online", "u7")), timeout_s=15)
    [online] = _presence(admin, "user-online", "u7")
    assert online.data["name"] == "Ayesha"
    assert online.data["subjectType"] == "user"
    assert abs(online.data["timestamp"] / 1000 - time.time()) < 30
    assert (await _stored(fanout, "user:u7") or {}).get("online") is True
    assert fanout.sample(f"{P}accounts_online") == 1

    await browser.close()
    await admin.wait_for(lambda _: bool(_presence(admin, "user-offline", "u7")), timeout_s=15)
    [offline] = _presence(admin, "user-offline", "u7")
    assert offline.data["name"] == "Ayesha"
    assert offline.data["eventId"] != online.data["eventId"]
    assert (await _stored(fanout, "user:u7") or {}).get("online") is False
    assert fanout.sample(f"{P}accounts_online") == 0
    # private-admin's own occupied webhook and u7's two: all genuine, all accepted.
    assert fanout.sample(f"{P}webhooks_total", outcome="accepted") >= 3
    assert fanout.sample(f"{P}webhooks_total", outcome="forged") == 0


async def test_a_seller_with_two_tabs_goes_offline_after_the_last(webhook_stack: Fanout) -> None:
    """Two tabs of shop s1 bring one user-online, and user-offline only when the second closes."""
    fanout = webhook_stack
    admin = await fanout.subscriber("private-admin")
    first = await fanout.subscriber("private-seller-s1")
    second = await fanout.subscriber("private-seller-s1")
    await admin.wait_for(lambda _: bool(_presence(admin, "user-online", "s1")), timeout_s=15)

    await first.close()
    # A later account's online proves the worker has handled everything Soketi sent before it.
    marker = await fanout.subscriber("private-user-u8")
    await admin.wait_for(lambda _: bool(_presence(admin, "user-online", "u8")), timeout_s=15)
    assert _presence(admin, "user-offline", "s1") == []
    assert (await _stored(fanout, "seller:s1") or {}).get("online") is True

    await second.close()
    await admin.wait_for(lambda _: bool(_presence(admin, "user-offline", "s1")), timeout_s=15)
    assert len(_presence(admin, "user-online", "s1")) == 1
    assert len(_presence(admin, "user-offline", "s1")) == 1
    assert _presence(admin, "user-online", "s1")[0].data["name"] == "Karachi Crafts"
    assert _presence(admin, "user-offline", "s1")[0].data["subjectType"] == "seller"
    await marker.close()


async def _post(fanout: Fanout, body: bytes, key: str, signature: str) -> int:
    url = f"http://127.0.0.1:{fanout.http_port}/webhooks/soketi"
    headers = {"X-Pusher-Key": key, "X-Pusher-Signature": signature}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        return r.status


def _webhook(channel: str, *, age_s: float = 0) -> bytes:
    time_ms = int((time.time() - age_s) * 1000)
    events = [{"name": "channel_occupied", "channel": channel}]
    return orjson.dumps({"time_ms": time_ms, "events": events})


def _sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_forged_stale_and_replayed_webhooks_are_refused(webhook_stack: Fanout) -> None:
    """Bad signature or key, old or future time_ms and a replay get 401, bad JSON 400: counted."""
    fanout = webhook_stack
    key, secret = fanout.soketi.key, fanout.soketi.secret
    forged = _webhook("private-user-u7")
    genuine = _webhook("private-user-u8")
    old = _webhook("private-user-u7", age_s=6 * 60)
    future = _webhook("private-user-u7", age_s=-2 * 60)
    not_json = b'{"time_ms": 1, "events": ['

    assert await _post(fanout, forged, key, _sign("not-the-secret", forged)) == 401
    assert await _post(fanout, forged, "other-key", _sign(secret, forged)) == 401
    assert await _post(fanout, forged, key, "") == 401
    assert await _post(fanout, old, key, _sign(secret, old)) == 401
    assert await _post(fanout, future, key, _sign(secret, future)) == 401
    assert await _post(fanout, not_json, key, _sign(secret, not_json)) == 400
    assert await _post(fanout, genuine, key, _sign(secret, genuine)) == 200
    assert await _post(fanout, genuine, key, _sign(secret, genuine)) == 401  # the replay

    assert fanout.sample(f"{P}webhooks_total", outcome="forged") == 3
    assert fanout.sample(f"{P}webhooks_total", outcome="stale") == 3
    assert fanout.sample(f"{P}webhooks_total", outcome="invalid") == 1
    assert fanout.sample(f"{P}webhooks_total", outcome="accepted") == 1
    assert await _stored(fanout, "user:u7") is None
    assert (await _stored(fanout, "user:u8") or {}).get("online") is True


@pytest.fixture
async def reconciling(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker reconciling every 0.2 s against a Soketi that sends no webhooks (all are lost)."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        presence_reconcile_s=0.2,
    ) as fanout:
        yield fanout


async def test_reconciliation_repairs_lost_webhooks_both_ways(reconciling: Fanout) -> None:
    """Stored-online accounts Soketi lacks go offline; unannounced occupied channels go online."""
    fanout = reconciling
    admin = await fanout.subscriber("private-admin")
    since = datetime.now(UTC) - timedelta(minutes=1)
    await fanout.db["fanout_presence"].insert_one(
        {"_id": "user:ghost", "online": True, "since": since}
    )
    await admin.wait_for(lambda _: bool(_presence(admin, "user-offline", "ghost")), timeout_s=15)
    assert (await _stored(fanout, "user:ghost") or {}).get("online") is False

    await fanout.subscriber("private-user-u9")
    await admin.wait_for(lambda _: bool(_presence(admin, "user-online", "u9")), timeout_s=15)
    assert (await _stored(fanout, "user:u9") or {}).get("online") is True
    await wait_until(lambda: fanout.sample(f"{P}accounts_online") == 1, timeout_s=5)
    # Later cycles find nothing more to fix: each change was announced exactly once.
    cycles = fanout.sample(f"{P}soketi_responses_total", status_class="2xx")
    await wait_until(
        lambda: fanout.sample(f"{P}soketi_responses_total", status_class="2xx") >= cycles + 6,
        timeout_s=10,
    )
    assert len(_presence(admin, "user-offline", "ghost")) == 1
    assert len(_presence(admin, "user-online", "u9")) == 1


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
    """After 3 user.registered, 1 seller.registered and 1 bad message, stats-update says so."""
    fanout = with_stats
    admin = await fanout.subscriber("private-admin")
    await fanout.db["fanout_presence"].insert_one(
        {"_id": "user:u1", "online": True, "since": datetime.now(UTC)}
    )
    for user_id in ("u1", "u2", "u3"):
        await fanout.publish(envelope("user.registered", {"userId": user_id}))
    await fanout.publish(envelope("seller.registered", {"shopId": "s1"}))
    await fanout.publish(b"not json", routing_key="user.registered")
    await fanout.wait_settled(4, "delivered")
    await fanout.wait_settled(1, "dead_lettered")

    def complete(got: list[Received]) -> bool:
        return any(
            r.event == "stats-update"
            and r.data["eventsPerMinute"].get("user.registered") == 3
            and r.data["dlqDepth"] == 1
            for r in got
        )

    await admin.wait_for(complete, timeout_s=15)
    stats = [r.data for r in admin.events("private-admin", "stats-update") if complete([r])][-1]
    assert stats["eventsPerMinute"] == {"user.registered": 3, "seller.registered": 1}
    assert stats["accountsOnline"] == 1
    assert abs(stats["timestamp"] / 1000 - time.time()) < 10
