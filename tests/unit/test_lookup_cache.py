"""Cheaper per event: the lookup cache (hits skip MongoDB, misses share one query, entries
expire and are bounded), cached metric children and the log line's time stamp."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.processors import TimeStamper

from worker.errors import StoreUnavailable
from worker.logs import UtcStamper
from worker.metrics import Metrics
from worker.mongo.cache import CachedLookup
from worker.mongo.lookups import MongoStore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Names:
    """A bulk lookup of names that counts its calls; ids starting with ``x`` are not found."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.calls: list[list[str]] = []
        self.fail: BaseException | None = None

    async def __call__(self, ids: list[str]) -> Mapping[str, str]:
        self.calls.append(sorted(ids))
        if self.fail is not None:
            raise self.fail
        return {key: self.names.get(key, f"name of {key}") for key in ids if key[0] != "x"}


def cached(
    names: Names, clock: Clock, ttl_s: float = 60, size: int = 100
) -> CachedLookup[str, str]:
    """A lookup of ``names`` whose entries live ``ttl_s`` seconds of ``clock``."""
    return CachedLookup(names, ttl_s=ttl_s, max_size=size, clock=clock)


async def test_a_hit_does_not_query_again() -> None:
    """The second ask for a found id is answered from memory: one query in all."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock)
    assert await lookup.ask(["u1"]) == {"u1": "name of u1"}
    assert await lookup.ask(["u1"]) == {"u1": "name of u1"}
    assert names.calls == [["u1"]]


async def test_hits_do_not_join_the_coalesced_query_of_misses() -> None:
    """Asked together, cached ids stay out of the query; only the misses go, in one call."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock)
    await lookup.ask(["u1", "u2"])
    answers = await asyncio.gather(lookup.ask(["u1", "u3"]), lookup.ask(["u2", "u4"]))
    assert names.calls == [["u1", "u2"], ["u3", "u4"]]
    assert answers == [
        {"u1": "name of u1", "u3": "name of u3"},
        {"u2": "name of u2", "u4": "name of u4"},
    ]


async def test_concurrent_misses_of_one_id_share_one_query() -> None:
    """Misses still go through the Coalescer: the same id asked twice at once is one query."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock)
    first, second = await asyncio.gather(lookup.ask(["u1"]), lookup.ask(["u1"]))
    assert first == second == {"u1": "name of u1"}
    assert names.calls == [["u1"]]


async def test_an_entry_expires_after_the_ttl() -> None:
    """Within the TTL the old name is answered; after it, the new one is queried."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock, ttl_s=60)
    names.names["u1"] = "Aarav"
    assert await lookup.ask(["u1"]) == {"u1": "Aarav"}
    names.names["u1"] = "Aarav K."
    clock.now += 59.9
    assert await lookup.ask(["u1"]) == {"u1": "Aarav"}
    clock.now += 0.2
    assert await lookup.ask(["u1"]) == {"u1": "Aarav K."}
    assert len(names.calls) == 2


async def test_the_cache_is_bounded() -> None:
    """Past ``max_size`` entries the least recently used one is dropped and queried again."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock, size=2)
    await lookup.ask(["u1"])
    await lookup.ask(["u2"])
    await lookup.ask(["u1"])  # u1 is now the most recently used
    await lookup.ask(["u3"])  # evicts u2
    names.calls.clear()
    await lookup.ask(["u1", "u3"])
    assert names.calls == []
    await lookup.ask(["u2"])
    assert names.calls == [["u2"]]


async def test_ttl_zero_turns_the_cache_off() -> None:
    """With a TTL of 0 every ask queries (still coalesced)."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock, ttl_s=0)
    for _ in range(3):
        assert await lookup.ask(["u1"]) == {"u1": "name of u1"}
    assert names.calls == [["u1"]] * 3


async def test_a_missing_document_is_not_cached() -> None:
    """An id not found is absent from the answer and asked again next time (it may appear)."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock)
    assert await lookup.ask(["x1"]) == {}
    assert await lookup.ask(["x1"]) == {}
    assert names.calls == [["x1"], ["x1"]]


async def test_an_unreachable_database_is_never_cached() -> None:
    """A failed query raises to every asker and keeps nothing; the next ask queries again."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock)
    names.fail = StoreUnavailable("MongoDB find in users failed: AutoReconnect")
    with pytest.raises(StoreUnavailable):
        await lookup.ask(["u1"])
    names.fail = None
    assert await lookup.ask(["u1"]) == {"u1": "name of u1"}
    assert names.calls == [["u1"], ["u1"]]


async def test_an_answer_nobody_awaits_still_fills_the_cache() -> None:
    """An ask starts the query at once; a later ask finds the result in the cache."""
    names, clock = Names(), Clock()
    lookup = cached(names, clock)
    lookup.ask(["u1"])  # asked and dropped, like a handler that did not need it after all
    for _ in range(5):
        await asyncio.sleep(0)
    assert await lookup.ask(["u1"]) == {"u1": "name of u1"}
    assert names.calls == [["u1"]]


class Gateway:
    """A MongoGateway stand-in for ``find_by_ids``: documents per collection, queries counted."""

    def __init__(self, docs: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.docs = docs
        self.queries: list[str] = []

    async def find_by_ids(
        self, collection: str, ids: Collection[str], fields: Collection[str]
    ) -> dict[str, dict[str, Any]]:
        self.queries.append(collection)
        stored = self.docs.get(collection, {})
        return {key: stored[key] for key in ids if key in stored}


async def test_the_store_caches_each_collection_and_sees_a_rename_after_the_ttl() -> None:
    """MongoStore: users, shops and products each hit MongoDB once within the TTL; a rename
    shows once the TTL has passed."""
    gateway = Gateway(
        {
            "users": {"u1": {"name": "Aarav"}},
            "shops": {"s1": {"name": "Chai Point"}},
            "products": {"p1": {"name": "Masala Chai", "shopId": "s1", "images": ["c.jpg"]}},
        }
    )
    clock = Clock()
    store = MongoStore(gateway, cache_ttl_s=60, cache_size=10, clock=clock)  # type: ignore[arg-type]  # a stand-in
    for _ in range(3):
        users = await store.users(["u1"])
        shops = await store.shops(["s1"])
        products = await store.products(["p1"])
    assert users["u1"].name == "Aarav"
    assert shops["s1"].name == "Chai Point"
    assert products["p1"].image == "c.jpg"
    assert gateway.queries == ["users", "shops", "products"]
    gateway.docs["users"]["u1"]["name"] = "Aarav K."
    assert (await store.users(["u1"]))["u1"].name == "Aarav"
    clock.now += 61
    assert (await store.users(["u1"]))["u1"].name == "Aarav K."
    assert gateway.queries.count("users") == 2


async def test_the_store_without_cache_queries_every_time() -> None:
    """MongoStore's default (TTL 0, as in the seam tests) queries MongoDB for each ask."""
    gateway = Gateway({"users": {"u1": {"name": "Aarav"}}})
    store = MongoStore(gateway)  # type: ignore[arg-type]  # a stand-in
    await store.users(["u1"])
    await store.users(["u1"])
    assert gateway.queries == ["users", "users"]


def test_metric_children_are_looked_up_once_and_count_as_labels_does() -> None:
    """``Metrics.child`` returns the same child each time; counts land on the labelled series."""
    metrics = Metrics.create()
    first = metrics.child(metrics.messages, "user.registered", "delivered", "")
    assert metrics.child(metrics.messages, "user.registered", "delivered", "") is first
    first.inc()
    metrics.child(metrics.messages, "user.registered", "retried", "soketi").inc(2)
    metrics.mongodb_query("find in users", 0.01)
    metrics.mongodb_query("find in users", 0.02)
    metrics.soketi_response(200, 0.01)
    metrics.soketi_response(0, 0.01)
    sample = metrics.registry.get_sample_value
    p = "bazaar_fanout_"
    labels = {"event_type": "user.registered", "outcome": "delivered", "reason": ""}
    assert sample(f"{p}messages_total", labels) == 1
    assert sample(f"{p}messages_total", {**labels, "outcome": "retried", "reason": "soketi"}) == 2
    assert sample(f"{p}mongodb_query_seconds_count", {"operation": "find in users"}) == 2
    assert sample(f"{p}soketi_responses_total", {"status_class": "2xx"}) == 1
    assert sample(f"{p}soketi_responses_total", {"status_class": "error"}) == 1


def test_the_log_stamp_has_structlogs_iso_utc_form() -> None:
    """``UtcStamper`` writes what ``TimeStamper(fmt="iso", utc=True)`` writes, to the second."""
    ours = UtcStamper()(None, "info", {})["timestamp"]
    theirs = TimeStamper(fmt="iso", utc=True)(None, "info", {})["timestamp"]
    assert len(ours) == len("2026-12-05T06:58:34.070581Z")
    assert ours.endswith("Z") and ours[19] == "."
    assert abs(datetime.fromisoformat(ours) - datetime.fromisoformat(theirs)) < timedelta(seconds=1)


def test_the_log_stamp_follows_the_clock_across_seconds() -> None:
    """The cached second is renewed when the clock passes it; the fraction is microseconds."""
    now = [1_764_917_999_999_998_000]  # 2025-12-05T06:59:59.999998Z, in nanoseconds
    stamper = UtcStamper(lambda: now[0])

    def stamp() -> str:
        return str(stamper(None, "info", {})["timestamp"])

    assert stamp() == "2025-12-05T06:59:59.999998Z"
    now[0] += 1_000
    assert stamp() == "2025-12-05T06:59:59.999999Z"
    now[0] += 1_000
    assert stamp() == "2025-12-05T07:00:00.000000Z"
    now[0] += 86_400 * 10**9 + 42_000
    assert stamp() == "2025-12-06T07:00:00.000042Z"
