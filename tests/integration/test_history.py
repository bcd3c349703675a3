"""Channel history on the running worker: cursors in live payloads and the catch-up endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from pymongo import AsyncMongoClient

from devtools.devstack import SoketiServer
from devtools.watch import Received
from handlers.model import Delivery
from schemas import parse_event
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.proxy import TcpProxy
from worker.flow.lanes import UNORDERED
from worker.history.cursor import format_cursor, parse_cursor
from worker.history.recorder import History
from worker.mongo.gateway import MongoGateway
from worker.mongo.history import MARKER_CHANNEL, HistoryLog
from worker.mongo.processed import ProcessedLog
from worker.retry import RetryPolicy

JWT_SECRET = "history-jwt-secret-" + "7a" * 24
ADMIN = {"sub": "admin1", "role": "admin"}
U2 = {"sub": "u2", "role": "user"}
Headers = dict[str, str]


def bearer(sub: str, role: str) -> Headers:
    """An ``Authorization`` header carrying a token the backend would issue."""
    claims = {"sub": sub, "role": role, "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


def worker(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any, **overrides: Any
) -> Any:
    """``running_worker`` for this test's names, with AUTH_JWT_SECRET set."""
    return running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        auth_jwt_secret=JWT_SECRET,
        **overrides,
    )


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker with authorization on, and one conversation (u2 with shopA) seeded."""
    async with worker(rabbitmq_url, mongo_url, soketi, names) as running:
        await running.db.conversations.insert_one({"_id": "c1", "members": ["u2", "shopA"]})
        yield running


async def read(
    fanout: Fanout, channel: str, headers: Headers | None = None, **params: str
) -> tuple[int, Any]:
    """GET the channel's history from the worker; return status and JSON body."""
    address = f"http://127.0.0.1:{fanout.http_port}/channels/{channel}/events"
    async with (
        aiohttp.ClientSession() as session,
        session.get(address, params=params, headers=headers) as response,
    ):
        return response.status, await response.json()


def alert(title: str, audience: str = "public") -> dict[str, Any]:
    """A ``system.alert`` for ``audience`` (``public`` goes to the public channel)."""
    return envelope(
        "system.alert",
        {"severity": "info", "title": title, "message": title, "audience": audience},
    )


def as_history(received: list[Received]) -> list[dict[str, Any]]:
    """Live events in the shape the history endpoint answers, ordered by cursor."""
    entries = [{"cursor": r.data["cursor"], "event": r.event, "data": r.data} for r in received]
    return sorted(entries, key=lambda e: e["cursor"])


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    """Wait until the async ``condition`` holds, checking every few milliseconds, or fail."""
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110  # MongoDB offers nothing to await here
            await asyncio.sleep(0.02)


async def publish_one_by_one(fanout: Fanout, envelopes: list[dict[str, Any]]) -> None:
    """Publish each envelope only once the previous one was delivered, fixing their order."""
    for env in envelopes:
        before = fanout.settled("delivered")
        await fanout.publish(env)
        await fanout.wait_settled(int(before) + 1, "delivered")


async def test_disconnected_subscriber_catches_up_with_exactly_what_it_missed(
    fanout: Fanout,
) -> None:
    """A subscriber gone while three events are delivered reads exactly those, in order."""
    witness = await fanout.subscriber("private-admin")
    leaver = await fanout.subscriber("private-admin")
    seen = [envelope("user.registered", {"userId": f"u{i}"}) for i in range(2)]
    missed = [envelope("user.registered", {"userId": f"u{i}"}) for i in range(2, 5)]
    await publish_one_by_one(fanout, seen)
    await leaver.wait_for(lambda got: len(got) >= 2, 15)
    last_cursor = leaver.events()[-1].data["cursor"]
    await leaver.close()
    await publish_one_by_one(fanout, missed)
    await witness.wait_for(lambda got: len(got) >= 5, 15)

    status, body = await read(fanout, "private-admin", bearer(**ADMIN), after=last_cursor)

    assert status == 200
    assert [e["data"]["eventId"] for e in body["events"]] == [e["id"] for e in missed]
    assert body["events"] == as_history(witness.events()[2:])
    assert [e["cursor"] for e in body["events"]] == [format_cursor(n) for n in (3, 4, 5)]
    assert body["next"] is None
    assert fanout.sample("bazaar_fanout_history_requests_total", outcome="ok") == 1


async def test_pages_follow_next_through_every_entry_once(fanout: Fanout) -> None:
    """Seven public events read three at a time come back whole, once each, in cursor order."""
    sub = await fanout.subscriber("public")
    alerts = [alert(f"sale {i}") for i in range(7)]
    for env in alerts:
        await fanout.publish(env)
    await sub.wait_for(lambda got: len(got) >= 7, 15)

    pages: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "3"}
    while True:
        status, body = await read(fanout, "public", **params)
        assert status == 200
        pages.append(body)
        if body["next"] is None:
            break
        params["after"] = body["next"]

    assert [len(p["events"]) for p in pages] == [3, 3, 1]
    assert [p["next"] for p in pages] == [format_cursor(3), format_cursor(6), None]
    entries = [e for p in pages for e in p["events"]]
    assert entries == as_history(sub.events())
    assert [parse_cursor(e["cursor"]) for e in entries] == list(range(1, 8))
    assert {e["data"]["eventId"] for e in entries} == {env["id"] for env in alerts}


async def test_concurrent_events_on_one_channel_get_distinct_consecutive_cursors(
    fanout: Fanout,
) -> None:
    """Forty events to one channel at once are numbered 1..40 with no repeat or gap."""
    sub = await fanout.subscriber("private-admin")
    envelopes = [envelope("user.registered", {"userId": f"u{i}"}) for i in range(40)]
    await asyncio.gather(*(fanout.publish(env) for env in envelopes))
    await sub.wait_for(lambda got: len(got) >= 40, 20)

    status, body = await read(fanout, "private-admin", bearer(**ADMIN), limit="500")

    assert status == 200
    assert sorted(r.data["cursor"] for r in sub.events()) == [
        format_cursor(n) for n in range(1, 41)
    ]
    assert body == {"events": as_history(sub.events()), "next": None}


async def test_duplicate_publish_is_recorded_once(fanout: Fanout) -> None:
    """The same envelope published twice leaves one history entry per channel."""
    sub = await fanout.subscriber("private-admin")
    env = envelope("user.registered", {"userId": "u2"})
    await fanout.publish(env)
    await fanout.publish(env)
    await fanout.wait_settled(1, "duplicate")
    await fanout.wait_settled(1, "delivered")

    status, body = await read(fanout, "private-admin", bearer(**ADMIN))

    assert status == 200
    assert [e["data"]["eventId"] for e in body["events"]] == [env["id"]]
    assert await fanout.db.fanout_history.count_documents({"eventId": env["id"]}) == 1
    assert [r.data["cursor"] for r in sub.events()] == [format_cursor(1)]


async def test_retried_event_reuses_its_cursor(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """An event recorded before Soketi failed keeps its cursors on retry, numbered only once."""
    async with worker(
        rabbitmq_url, mongo_url, soketi, names, soketi_port=soketi_proxy.port
    ) as fanout:
        sub = await fanout.subscriber("private-admin")
        first = envelope("user.registered", {"userId": "u1"})
        await publish_one_by_one(fanout, [first])
        await soketi_proxy.cut()
        retried = envelope("order.created", _order("o1"))
        await fanout.publish(retried)
        history = fanout.db.fanout_history

        async def recorded() -> bool:
            return await history.count_documents({"eventId": retried["id"]}) == 4

        await until(recorded)
        await soketi_proxy.wait_rejected(soketi_proxy.rejected + 3, timeout_s=30)
        await soketi_proxy.restore()
        await sub.wait_for(lambda got: len(got) >= 2, 60)
        await fanout.wait_settled(2, "delivered")

        live = sub.events()[1]
        assert live.data["eventId"] == retried["id"]
        stored = await history.find({"eventId": retried["id"]}).to_list(None)
        by_channel = {doc["channel"]: doc["cursor"] for doc in stored}
        assert by_channel == {
            "private-admin": format_cursor(2),
            "private-order-o1": format_cursor(1),
            "private-seller-shopA": format_cursor(1),
            "private-user-u2": format_cursor(1),
        }
        assert live.data["cursor"] == format_cursor(2)

        # Floors follow the numbers handed out (written in the background).
        async def floors() -> list[tuple[str, int]]:
            counters = await fanout.db.fanout_cursors.find().sort("_id").to_list(None)
            return [(c["_id"], c["seq"]) for c in counters]

        expected = [
            ("private-admin", 2),
            ("private-order-o1", 1),
            ("private-seller-shopA", 1),
            ("private-user-u2", 1),
        ]
        await until(lambda: _equals(floors(), expected))
        # Not looked up on its first delivery (nothing can be recorded yet), on each retry yes
        # (how many retries the outage took depends on timing).
        retries = sum(
            fanout.sample("bazaar_fanout_retries_scheduled_total", tier=tier)
            for tier in ("1s", "2s")
        )
        assert retries >= 1
        assert queries(fanout, "history find") == retries


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


def queries(fanout: Fanout, operation: str) -> float:
    """How many MongoDB queries the worker ran as ``operation``."""
    return fanout.sample("bazaar_fanout_mongodb_query_seconds_count", operation=operation)


def _order(order_id: str) -> dict[str, Any]:
    """``order.created`` data: one item of shopA bought by u2."""
    return {
        "orderId": order_id,
        "customerId": "u2",
        "items": [{"productId": "p1", "shopId": "shopA", "quantity": 1, "price": 10}],
        "totalPrice": 10,
        "currency": "INR",
    }


async def test_typing_events_carry_no_cursor_and_stay_out_of_history(fanout: Fanout) -> None:
    """Typing events are delivered without a cursor and never recorded; chat messages are."""
    sub = await fanout.subscriber("private-chat-c1")
    typing = envelope(
        "typing.started", {"conversationId": "c1", "userId": "u2", "userType": "user"}
    )
    message = envelope(
        "message.created",
        {
            "messageId": "m1",
            "conversationId": "c1",
            "senderId": "u2",
            "senderType": "user",
            "recipientId": "shopA",
            "recipientType": "seller",
            "content": "Is it fresh?",
        },
    )
    await fanout.publish(typing)
    await fanout.publish(message)
    await sub.wait_for(lambda got: len(got) >= 2, 15)

    status, body = await read(fanout, "private-chat-c1", bearer(**U2))

    assert status == 200
    assert [e["event"] for e in body["events"]] == ["new-message"]
    assert "cursor" not in sub.events(event="typing-start")[0].data
    assert sub.events(event="new-message")[0].data["cursor"] == format_cursor(1)
    # Typing has no entry: only the marker that it was pushed (the duplicate check's).
    entries = {"eventId": typing["id"], "channel": {"$ne": MARKER_CHANNEL}}
    assert await fanout.db.fanout_history.count_documents(entries) == 0


async def test_cursor_older_than_the_retention_answers_410(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """Once entries age out, a cursor before them is refused with 410 and the oldest cursor."""
    retention_h = 3 / 3600  # three seconds; the worker sweeps every second
    async with worker(
        rabbitmq_url, mongo_url, soketi, names, history_retention_h=retention_h
    ) as fanout:
        sub = await fanout.subscriber("public")
        await publish_one_by_one(fanout, [alert("a"), alert("b")])
        await sub.wait_for(lambda got: len(got) >= 2, 15)
        cursor_a, cursor_b = (r.data["cursor"] for r in sub.events())
        history = fanout.db.fanout_history

        async def swept() -> bool:
            return await history.count_documents({"channel": "public"}) == 0

        await until(swept)

        everything_gone = await read(fanout, "public", after=cursor_a)
        caught_up = await read(fanout, "public", after=cursor_b)
        await publish_one_by_one(fanout, [alert("c")])
        await sub.wait_for(lambda got: len(got) >= 3, 15)
        cursor_c = sub.events()[2].data["cursor"]
        gap = await read(fanout, "public", after=cursor_a)
        no_gap = await read(fanout, "public", after=cursor_b)

    assert everything_gone == (410, {"error": "cursor_expired", "oldest": None})
    assert caught_up == (200, {"events": [], "next": None})
    assert gap == (410, {"error": "cursor_expired", "oldest": cursor_c})
    assert no_gap[0] == 200
    assert [e["cursor"] for e in no_gap[1]["events"]] == [cursor_c]
    assert fanout.sample("bazaar_fanout_history_requests_total", outcome="gone") == 2


@pytest.mark.parametrize(
    ("channel", "headers", "status", "error", "outcome"),
    [
        ("private-admin", None, 401, "missing_token", "unauthenticated"),
        (
            "private-admin",
            {"Authorization": "Bearer not-a-jwt"},
            401,
            "malformed_token",
            "unauthenticated",
        ),
        ("private-admin", bearer(**U2), 403, "admin_only", "forbidden"),
        ("private-user-u23", bearer(**U2), 403, "not_your_channel", "forbidden"),
        ("private-seller-u2", bearer(**U2), 403, "not_your_channel", "forbidden"),
        ("private-chat-c2", bearer(**U2), 403, "not_a_member", "forbidden"),
        ("presence-x", bearer(**ADMIN), 403, "unknown_channel", "forbidden"),
    ],
)
async def test_unauthorized_reads_are_refused(
    fanout: Fanout,
    channel: str,
    headers: Headers | None,
    status: int,
    error: str,
    outcome: str,
) -> None:
    """Without a valid token a read is 401; a channel the subject may not subscribe to is 403."""
    await publish_one_by_one(fanout, [envelope("user.registered", {"userId": "u2"})])

    answer = await read(fanout, channel, headers)

    assert answer == (status, {"error": error})
    assert fanout.sample("bazaar_fanout_history_requests_total", outcome=outcome) == 1


async def test_allowed_reads_and_invalid_parameters(fanout: Fanout) -> None:
    """Own and public channels are readable (public without a token); bad parameters are 400."""
    await publish_one_by_one(fanout, [envelope("user.registered", {"userId": "u2"})])

    assert await read(fanout, "public") == (200, {"events": [], "next": None})
    assert await read(fanout, "private-user-u2", bearer(**U2)) == (
        200,
        {"events": [], "next": None},
    )
    status, body = await read(fanout, "private-admin", bearer(**ADMIN))
    assert (status, len(body["events"])) == (200, 1)
    for params in ({"limit": "0"}, {"limit": "501"}, {"after": "12"}, {"limit": "x"}):
        status, body = await read(fanout, "public", **params)
        assert (status, body["error"]) == (400, "invalid_request")
    assert fanout.sample("bazaar_fanout_history_requests_total", outcome="invalid") == 4
    assert fanout.sample("bazaar_fanout_history_requests_total", outcome="ok") == 3


async def test_events_published_while_soketi_is_down_are_readable_by_polling(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, soketi_proxy: TcpProxy, names: Any
) -> None:
    """With Soketi's circuit open, new events still reach history; live delivery follows once."""
    async with worker(
        rabbitmq_url, mongo_url, soketi, names, soketi_port=soketi_proxy.port
    ) as fanout:
        sub = await fanout.subscriber("public")
        await soketi_proxy.cut()
        for n in range(6):  # enough failures to open the circuit
            await fanout.publish(alert(f"opening {n}"))

        def circuit_open() -> bool:
            return fanout.sample("bazaar_fanout_circuit_open", downstream="soketi") == 1

        await until(_sync(circuit_open))
        during = [alert(f"during outage {n}") for n in range(5)]
        for env in during:
            await fanout.publish(env)

        async def all_polled() -> bool:
            status, body = await read(fanout, "public", limit="100")
            ids = {e["data"]["eventId"] for e in body["events"]} if status == 200 else set()
            return {e["id"] for e in during} <= ids

        await until(all_polled)
        assert circuit_open()  # polling saw them while Soketi was still unreachable
        assert sub.events() == []
        await soketi_proxy.restore()
        await sub.wait_for(lambda got: len(got) >= 11, 60)
        ids = [r.data["eventId"] for r in sub.events()]
        assert len(ids) == len(set(ids)) == 11
        assert fanout.settled("dead_lettered") == 0


def _sync(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def test_two_workers_numbering_one_channel_never_share_a_number(
    mongo_url: str, names: Any
) -> None:
    """Two recorders (two worker processes) number the same channels from their own
    memory; the unique index makes the loser renumber, so every entry keeps a distinct
    number, the cursor each delivery carries is the one stored, and later numbers follow."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        gateway = MongoGateway(client[names.db], RetryPolicy.instant())
        # Two processes: each has its own log (and so its own batched writes).
        first, second = History(HistoryLog(gateway, 3600)), History(HistoryLog(gateway, 3600))
        await first.ensure_indexes()

        async def record(history: History, n: int) -> list[Delivery]:
            event = parse_event(orjson.dumps(alert(f"a{n}")))
            deliveries = [
                Delivery("private-admin", "system-alert", {"n": n}),
                Delivery(f"private-user-u{n % 3}", "system-alert", {"n": n}),
            ]
            return await history.stamp(event, deliveries, maybe_recorded=False)

        stamped = await asyncio.gather(*(record(first if n % 2 else second, n) for n in range(60)))
        stored = await client[names.db].fanout_history.find().to_list(None)
        numbers = [(doc["channel"], doc["seq"]) for doc in stored]
        assert len(stored) == 120
        assert len(set(numbers)) == 120, "two entries share a (channel, number)"
        by_payload = {(doc["channel"], doc["payload"]["n"]): doc["cursor"] for doc in stored}
        for deliveries in stamped:
            for d in deliveries:
                assert d.payload["cursor"] == by_payload[(d.channel, d.payload["n"])]
        # Whoever numbers next continues after everything written, never inside it.
        after, _ = await record(first, 1000)
        admin = [seq for channel, seq in numbers if channel == "private-admin"]
        assert parse_cursor(after.payload["cursor"]) > max(admin)
        await first.close()
        await second.close()
        floor = await client[names.db].fanout_cursors.find_one({"_id": "private-admin"})
        assert floor is not None and floor["seq"] >= max(admin)
    finally:
        await client.close()


async def test_two_workers_numbering_one_channel_in_batches_never_share_a_number(
    mongo_url: str, names: Any
) -> None:
    """The same race through ``stamp_batch`` (the batch path): each recorder numbers ten
    events at a time in one write; an entry the other worker's number refused is renumbered
    on its own, and every delivery carries the cursor that was stored for it."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        gateway = MongoGateway(client[names.db], RetryPolicy.instant())
        first, second = History(HistoryLog(gateway, 3600)), History(HistoryLog(gateway, 3600))
        await first.ensure_indexes()

        async def record(history: History, batch: int) -> list[list[Delivery]]:
            items = []
            for n in range(batch * 10, batch * 10 + 10):
                event = parse_event(orjson.dumps(alert(f"a{n}")))
                deliveries = [
                    Delivery("private-admin", "system-alert", {"n": n}),
                    Delivery(f"private-user-u{n % 3}", "system-alert", {"n": n}),
                ]
                items.append((event, deliveries, UNORDERED))
            return await history.stamp_batch(items)

        stamped = await asyncio.gather(*(record(first if b % 2 else second, b) for b in range(8)))
        stored = await client[names.db].fanout_history.find().to_list(None)
        numbers = [(doc["channel"], doc["seq"]) for doc in stored]
        assert len(stored) == 160
        assert len(set(numbers)) == 160, "two entries share a (channel, number)"
        by_payload = {(doc["channel"], doc["payload"]["n"]): doc["cursor"] for doc in stored}
        for batch in stamped:
            for deliveries in batch:
                for d in deliveries:
                    assert d.payload["cursor"] == by_payload[(d.channel, d.payload["n"])]
        await first.close()
        await second.close()
    finally:
        await client.close()


async def test_the_duplicate_check_rides_on_the_history_entries(mongo_url: str, names: Any) -> None:
    """Entries written before Soketi are not "pushed" until marked; an event with entries is
    recorded by marking them (no document of its own), one without by a marker that the
    feed never reads; ids in the legacy ``fanout_processed`` still count."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        db = client[names.db]
        gateway = MongoGateway(db, RetryPolicy.instant())
        await db.fanout_processed.insert_one({"_id": "old", "at": datetime.now(UTC)})
        log = HistoryLog(gateway, 3600)
        processed = ProcessedLog(gateway, 3600, history=log)
        await processed.ensure_indexes()
        history = History(log)
        event = parse_event(orjson.dumps(alert("a1")))
        deliveries = [Delivery("private-admin", "system-alert", {"n": 1})]
        await history.stamp(event, deliveries, maybe_recorded=False)

        assert await processed.seen([event.id, "typing1", "old"]) == {"old"}
        await processed.record([event.id])
        await processed.record(["typing1"])
        assert await processed.seen([event.id, "typing1", "old", "new"]) == {
            event.id,
            "typing1",
            "old",
        }
        assert await db.fanout_processed.count_documents({}) == 1
        lead = await db.fanout_history.find_one({"_id": event.id})
        assert lead is not None and lead["pushed"] and lead["channel"] == "private-admin"
        marker = await db.fanout_history.find_one({"_id": "typing1"})
        assert marker is not None and marker["channel"] == MARKER_CHANNEL
        assert await db.fanout_history.count_documents({"channel": "private-admin"}) == 1
        assert await HistoryLog(gateway, 3600).after("private-admin", None, 10) != []
        assert await HistoryLog(gateway, 3600).newest("private-admin") == 1
        await history.close()
    finally:
        await client.close()


async def test_an_event_whose_channels_change_between_attempts_keeps_each_cursor(
    mongo_url: str, names: Any
) -> None:
    """The lead ``_id`` (the event id) stays with the entry that took it; a retry deciding
    other channels stores its new entries under their keys and reuses the others' numbers."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        gateway = MongoGateway(client[names.db], RetryPolicy.instant())
        history = History(HistoryLog(gateway, 3600))
        await history.ensure_indexes()
        event = parse_event(orjson.dumps(alert("a1")))
        first = await history.stamp(
            event, [Delivery("private-admin", "system-alert", {})], maybe_recorded=False
        )
        again = await history.stamp(
            event,
            [
                Delivery("private-user-u1", "system-alert", {}),
                Delivery("private-admin", "system-alert", {}),
            ],
            maybe_recorded=False,
        )
        assert again[1].payload["cursor"] == first[0].payload["cursor"]
        stored = await client[names.db].fanout_history.find().to_list(None)
        assert sorted((doc["_id"], doc["channel"]) for doc in stored) == [
            (event.id, "private-admin"),
            (f"{event.id}:private-user-u1", "private-user-u1"),
        ]
        retried, _ = (
            await history.stamp(
                event, [Delivery("private-user-u1", "system-alert", {})], maybe_recorded=True
            ),
            None,
        )
        assert retried[0].payload["cursor"] == again[0].payload["cursor"]
        await history.close()
    finally:
        await client.close()
