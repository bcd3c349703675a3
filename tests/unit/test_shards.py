"""The fleet's shard assignment and liveness as pure tables (``worker/flow/shards.py``), and
a shard's hand-over against a fake channel (``worker/flow/handover.py: ShardSlot``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.flow.handover import ShardSlot
from worker.flow.shards import Liveness, assign, owned_by
from worker.mongo.fleet import Member

WORKERS = [f"host:{pid}:ab" for pid in range(100, 110)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("shards", "workers"),
    [(6, 3), (6, 4), (6, 1), (4, 2), (16, 5), (3, 5), (64, 10), (1, 2)],
)
def test_every_shard_has_one_owner_and_loads_differ_by_at_most_one(
    shards: int, workers: int
) -> None:
    """Every shard gets exactly one live owner, and each worker owns N // W or N // W + 1."""
    members = WORKERS[:workers]
    owners = assign(shards, members)
    assert sorted(owners) == list(range(shards))
    loads = Counter(owners.values())
    low = shards // workers
    assert all(loads.get(worker, 0) in (low, low + 1) for worker in members)
    assert set(owners.values()) <= set(members)


def test_the_assignment_depends_only_on_the_set_of_workers() -> None:
    """Every process computes the same owners, whatever order it lists the workers in."""
    members = WORKERS[:4]
    assert assign(12, members) == assign(12, list(reversed(members))) == assign(12, members * 2)


@pytest.mark.parametrize(("shards", "workers"), [(6, 3), (12, 4), (64, 8)])
def test_a_join_or_a_leave_moves_few_shards(shards: int, workers: int) -> None:
    """A worker leaving moves its own shards and at most a balancing few; one joining takes
    about its share."""
    members = WORKERS[:workers]
    owners = assign(shards, members)
    gone = members[0]
    after = assign(shards, members[1:])
    moved = {s for s in range(shards) if owners[s] != after[s]}
    assert owned_by(owners, gone) <= moved
    assert len(moved) <= len(owned_by(owners, gone)) + workers
    joined = assign(shards, [*members, WORKERS[workers]])
    moved_on_join = {s for s in range(shards) if owners[s] != joined[s]}
    assert owned_by(joined, WORKERS[workers]) <= moved_on_join
    assert len(moved_on_join) <= -(-shards // (workers + 1)) + workers


@pytest.mark.parametrize(("shards", "workers"), [(0, ["a"]), (6, [])])
def test_nothing_to_assign(shards: int, workers: list[str]) -> None:
    """No shards or no workers: no owners."""
    assert assign(shards, workers) == {}


def test_liveness_follows_the_beat_counter_not_the_clocks() -> None:
    """A member is alive while its beat changes within the stale window of our own clock;
    a first sighting counts only when its wall-clock announcement is recent."""
    live = Liveness(stale_s=3)
    skewed = T0 - timedelta(seconds=2)  # a host whose clock runs behind, within the window
    dead = T0 - timedelta(minutes=5)
    members = [Member("a", 1, T0), Member("b", 7, skewed), Member("c", 3, dead)]
    assert live.observe(members, now_mono=100, now_wall=T0) == ["a", "b"]
    # a keeps beating, b stops: b is gone once 3 s pass without a new beat.
    members = [Member("a", 2, T0), Member("b", 7, skewed), Member("c", 3, dead)]
    assert live.observe(members, now_mono=102, now_wall=T0) == ["a", "b"]
    members = [Member("a", 3, T0), Member("b", 7, skewed), Member("c", 4, dead)]
    assert live.observe(members, now_mono=103.5, now_wall=T0) == ["a", "c"]
    # A member whose document is gone (a graceful stop) is forgotten at once.
    assert live.observe([Member("a", 4, T0)], now_mono=104, now_wall=T0) == ["a"]


class FakeChannel:
    """A shard's channel: the consumer tags on it, and whether it was closed."""

    def __init__(self) -> None:
        self.consumers: dict[str, Any] = {}
        self.is_closed = False

    async def get_underlay_channel(self) -> FakeChannel:
        return self

    async def close(self) -> None:
        self.is_closed = True
        self.consumers.clear()


class FakeQueue:
    """A shard queue on one fake channel."""

    name = "q.shard.0"

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    async def consume(self, callback: Any, consumer_tag: str) -> str:
        self.channel.consumers[consumer_tag] = callback
        return consumer_tag

    async def cancel(self, tag: str) -> None:
        self.channel.consumers.pop(tag, None)


class Opener:
    """Opens a new fake channel per call, remembering them in order."""

    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []

    async def __call__(self, index: int) -> tuple[Any, Any]:
        channel = FakeChannel()
        self.channels.append(channel)
        return channel, FakeQueue(channel)


async def test_a_hand_over_withholds_new_messages_and_closes_only_once_settled() -> None:
    """A worker active on a shard it does not own passes nothing new on, closes the shard's
    channel only after the messages it passed on are settled, then registers again."""
    opener = Opener()
    release = asyncio.Event()
    handled: list[str] = []

    async def callback(message: Any) -> None:
        handled.append(message)
        await release.wait()  # settled when the test says so

    slot = ShardSlot(0, opener, callback, worker="me", wanted=lambda: True, cooldown_s=0)
    await slot.register()
    first = opener.channels[0]
    deliver = next(iter(first.consumers.values()))
    in_flight = asyncio.create_task(deliver("m1"))  # while owned: processed
    await asyncio.sleep(0)
    slot.owned = False
    await deliver("m2")  # the first message of another's shard starts the hand-over
    await deliver("m3")
    await asyncio.sleep(0.01)
    assert handled == ["m1"] and slot.handing_over and not first.is_closed
    release.set()
    await in_flight
    await asyncio.wait_for(slot.handed_over(), 1)
    assert first.is_closed and handled == ["m1"]
    assert len(opener.channels) == 2 and await slot.registered()


async def test_a_shard_bounces_at_most_once_per_cooldown() -> None:
    """After a hand-over, a non-owner keeps a shard that comes back within the cooldown
    (its owner may have no consumer), so messages are not redelivered over and over."""
    opener = Opener()
    handled: list[str] = []

    async def callback(message: Any) -> None:
        handled.append(message)

    now = [0.0]
    slot = ShardSlot(
        0, opener, callback, worker="me", wanted=lambda: True, cooldown_s=10, mono=lambda: now[0]
    )
    slot.owned = False
    await slot.register()
    await next(iter(opener.channels[0].consumers.values()))("m1")  # handed over
    await asyncio.wait_for(slot.handed_over(), 1)
    now[0] = 5
    await next(iter(opener.channels[1].consumers.values()))("m1")  # back within 10 s: kept
    assert handled == ["m1"] and not slot.handing_over
