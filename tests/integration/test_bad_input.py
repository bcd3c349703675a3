"""Hostile input on the real services: every bad message parked once with its reason, no loops."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from devtools.devstack import SoketiServer
from tests.integration.harness import Fanout, envelope, running_worker

_DROP = object()  # a field value meaning "leave this field out"
_USER = object()  # the default data: a valid user.registered payload
_serial = itertools.count()


@dataclass(frozen=True, slots=True)
class Bad:
    """One malformed message: what it is, its body, the ``fanout-reason`` it must get."""

    label: str
    body: bytes
    reason: str
    routing_key: str = "bad.input"


def _env(event_type: Any = "user.registered", data: Any = _USER, **fields: Any) -> dict[str, Any]:
    """An envelope with a unique id (so every body differs) and the given fields overridden."""
    env: dict[str, Any] = {
        "id": f"bad-{next(_serial)}",
        "type": event_type,
        "occurredAt": datetime.now(UTC).isoformat(),
        "data": {"userId": "u1"} if data is _USER else data,
    }
    for name, value in fields.items():
        if value is _DROP:
            env.pop(name, None)
        else:
            env[name] = value
    return {name: value for name, value in env.items() if value is not _DROP}


def _json(
    label: str, reason: str, event_type: Any = "user.registered", data: Any = _USER, **fields: Any
) -> Bad:
    """A JSON envelope published with its type as routing key (when that is a usable key)."""
    env = _env(event_type, data, **fields)
    key = env["type"] if isinstance(env.get("type"), str) and env["type"] else "bad.input"
    return Bad(label, orjson.dumps(env), reason, key)


def _chat(content: str) -> dict[str, Any]:
    return {
        "messageId": "m1",
        "conversationId": "c1",
        "senderId": "u1",
        "senderType": "user",
        "recipientId": "s1",
        "recipientType": "seller",
        "content": content,
    }


def _order(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"orderId": "o1", "customerId": "u1", "items": items, "totalPrice": 10}


def _item(product_id: str = "p1", **fields: Any) -> dict[str, Any]:
    return {"productId": product_id, "shopId": "s1", "quantity": 1, "price": 1, **fields}


def corpus() -> list[Bad]:
    """At least forty malformed messages, one of each kind of trouble, with their reasons."""
    valid = orjson.dumps(_env())
    nested = b"[" * 2000 + b"]" * 2000
    return [
        # -- not JSON at all --
        Bad("not json", b"{not json", "invalid_json"),
        Bad("non-utf8 bytes", b"\xff\xfe\x00", "invalid_json"),
        Bad(
            "latin-1 envelope",
            '{"id":"x1","type":"user.registered","n":"café"}'.encode("latin-1"),
            "invalid_json",
        ),
        Bad("empty body", b"", "invalid_json"),
        Bad("whitespace body", b" \n\t ", "invalid_json"),
        Bad("truncated", valid[: len(valid) // 2], "invalid_json"),
        Bad("trailing garbage", valid + b" {}", "invalid_json"),
        Bad("NaN", b'{"id": "x2", "type": "user.registered", "n": NaN}', "invalid_json"),
        Bad("utf-16", '{"id":"x3","type":"user.registered"}'.encode("utf-16"), "invalid_json"),
        Bad("single quotes", b"{'id': 'x4', 'type': 'user.registered'}", "invalid_json"),
        Bad("utf-8 BOM", b"\xef\xbb\xbf" + orjson.dumps(_env()), "invalid_json"),
        Bad("lone surrogate", b'{"id": "x5", "type": "\\ud800"}', "invalid_json"),
        Bad("nested 2000 deep", nested, "invalid_json"),
        # -- JSON, but not an object, or no usable type --
        Bad("array", b"[1, 2]", "invalid_event"),
        Bad("empty array", b"[]", "invalid_event"),
        Bad("array of an envelope", b"[" + orjson.dumps(_env()) + b"]", "invalid_event"),
        Bad("number", b"42", "invalid_event"),
        Bad("string", b'"user.registered"', "invalid_event"),
        Bad("null", b"null", "invalid_event"),
        Bad("boolean", b"true", "invalid_event"),
        Bad("empty object", b"{}", "invalid_event"),
        _json("type is a number", "invalid_event", event_type=5),
        _json("type is null", "invalid_event", event_type=None),
        _json("type is a list", "invalid_event", event_type=["user.registered"]),
        # -- the envelope's fields --
        _json("id missing", "invalid_event", id=_DROP, n=1),
        _json("id is a number", "invalid_event", id=12345),
        _json("id with comma", "invalid_event", id="a,b"),
        _json("id with slash", "invalid_event", id="a/b"),
        _json("id with space", "invalid_event", id="a b"),
        _json("id with unicode", "invalid_event", id="ünï-çødé"),
        _json("id of 65 chars", "invalid_event", id="x" * 65),
        _json("id empty", "invalid_event", id=""),
        _json("occurredAt missing", "invalid_event", occurredAt=_DROP),
        _json("occurredAt without timezone", "invalid_event", occurredAt="2026-11-29T05:00:00"),
        _json("occurredAt a number", "invalid_event", occurredAt=1764392400000),
        _json("occurredAt not a date", "invalid_event", occurredAt="yesterday"),
        _json("socketId letters", "invalid_event", socketId="abc"),
        _json("socketId without dot", "invalid_event", socketId="1234"),
        _json("socketId two dots", "invalid_event", socketId="1.2.3"),
        _json("version zero", "invalid_event", version=0),
        # -- data --
        _json("data null", "invalid_event", data=None),
        _json("data missing", "invalid_event", data=_DROP),
        _json("data a list", "invalid_event", data=[{"userId": "u1"}]),
        _json("data a string", "invalid_event", data="u1"),
        _json("required field missing", "invalid_event", data={"name": "Aarav"}),
        _json("field of the wrong type", "invalid_event", data={"userId": 42}),
        _json("operator object as id", "invalid_event", data={"userId": {"$ne": None}}),
        _json("nested garbage as id", "invalid_event", data={"userId": [[[["u1"]]]]}),
        _json("path in an id", "invalid_event", data={"userId": "../admin"}),
        _json(
            "bad enum",
            "invalid_event",
            "system.alert",
            {"severity": "panic", "title": "t", "message": "m"},
        ),
        _json(
            "bad account kind",
            "invalid_event",
            "message.created",
            {**_chat("hi"), "senderType": "robot"},
        ),
        _json("quantity a string", "invalid_event", "order.created", _order([_item(quantity="2")])),
        _json("negative price", "invalid_event", "order.created", _order([_item(price=-1)])),
        _json("no items", "invalid_event", "order.created", _order([])),
        _json(
            "5000 items",
            "invalid_event",
            "order.created",
            _order([_item(f"p{i}") for i in range(5000)]),
        ),
        _json("1 MB body", "invalid_event", "message.created", _chat("x" * 1_000_000)),
        # -- types the worker does not know --
        _json("unknown type", "unknown_type", "coupon.issued", {}),
        _json("empty type", "unknown_type", ""),
        _json("upper-case type", "unknown_type", "USER.REGISTERED"),
        _json("type with trailing space", "unknown_type", "user.registered "),
        _json("versioned type", "unknown_type", "order.created.v2"),
        _json("unicode type", "unknown_type", "ordér.créé"),
        _json("prototype type", "unknown_type", "__proto__"),
        # -- valid, but too large for Soketi (UTF-8 bytes, not characters) --
        _json("150 KB chat", "payload_too_large", "message.created", _chat("x" * 150_000)),
        _json("120 KB of Devanagari", "payload_too_large", "message.created", _chat("नम" * 20_000)),
        _json(
            "1000 items of long ids",
            "payload_too_large",
            "order.created",
            _order([_item(f"{i:064d}") for i in range(1000)]),
        ),
    ]


def _valid(i: int) -> dict[str, Any]:
    """Valid event ``i``: each kind reaches ``private-admin`` exactly once."""
    kind = i % 4
    if kind == 0:
        return envelope("user.registered", {"userId": f"u{i}"})
    if kind == 1:
        return envelope("seller.registered", {"shopId": f"s{i}"})
    if kind == 2:
        data = {"severity": "info", "title": f"t{i}", "message": "all good"}
        return envelope("system.alert", data)
    data = {"orderId": f"o{i}", "customerId": f"u{i}", "shopId": "s1", "status": "shipped"}
    return envelope("order.status_changed", data)


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker on this test's own exchange, queue and database."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as running:
        yield running


async def _dlq_depth(fanout: Fanout) -> int:
    """Messages in the DLQ now, asked of the broker (a passive declare consumes nothing)."""
    async with fanout.connection.channel() as channel:
        queue = await channel.declare_queue(fanout.settings.dlq_name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def _watch_health(port: int, statuses: Counter[tuple[str, int]], stop: asyncio.Event) -> None:
    """Poll ``/healthz`` and ``/readyz`` until ``stop``, counting each (path, status) answer."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for path in ("/healthz", "/readyz"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    statuses[path, response.status] += 1
            await asyncio.sleep(0.05)  # a polling period, not synchronisation


async def test_malformed_corpus_is_parked_once_and_valid_events_flow(fanout: Fanout) -> None:
    """66 malformed messages among 132 valid ones: each valid event delivered once, each bad one
    parked once with its reason, the worker healthy throughout and the DLQ count stable."""
    bad = corpus()
    assert len(bad) >= 40
    assert len({b.body for b in bad}) == len(bad), "bodies identify corpus entries in the DLQ"
    sub = await fanout.subscriber("private-admin")
    statuses: Counter[tuple[str, int]] = Counter()
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_health(fanout.http_port, statuses, stop))
    valid: list[dict[str, Any]] = []
    try:
        for entry in bad:
            for _ in range(2):
                valid.append(_valid(len(valid)))
                await fanout.publish(valid[-1])
            await fanout.publish(entry.body, routing_key=entry.routing_key)
        await fanout.wait_settled(len(bad), "dead_lettered", timeout_s=30)
        await fanout.wait_settled(len(valid), "delivered", timeout_s=30)
        await sub.wait_for(lambda got: len(got) >= len(valid), 15)
    finally:
        stop.set()
        await watcher

    # Nothing loops: the DLQ holds one copy of each, and still does after a later event.
    depth = await _dlq_depth(fanout)
    marker = envelope("user.registered", {"userId": "marker"})
    await fanout.publish(marker)
    await sub.wait_for(lambda got: any(r.data["eventId"] == marker["id"] for r in got), 15)
    assert (depth, await _dlq_depth(fanout)) == (len(bad), len(bad))

    counts = Counter(r.data["eventId"] for r in sub.events())
    assert counts == Counter({e["id"]: 1 for e in [*valid, marker]})

    dead = await fanout.dead_letters()
    by_body = {b.body: b for b in bad}
    assert Counter(d.body for d in dead) == Counter(b.body for b in bad)
    mismatched = [
        (by_body[d.body].label, d.headers.get("fanout-reason"), by_body[d.body].reason)
        for d in dead
        if d.headers.get("fanout-reason") != by_body[d.body].reason
        or d.routing_key != by_body[d.body].routing_key
        or d.headers.get("fanout-attempts") != 1
    ]
    assert mismatched == []
    want = Counter(b.reason for b in bad)
    assert {r: fanout.settled("dead_lettered", r) for r in want} == dict(want)
    assert fanout.settled("retried") == 0

    print(f"health answers during the stream: {dict(statuses)}; reasons: {dict(want)}")
    assert {path for path, _ in statuses} == {"/healthz", "/readyz"}
    assert {status for _, status in statuses} == {200}
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(f"http://127.0.0.1:{fanout.http_port}{path}") as response:
                assert response.status == 200, (path, await response.text())
