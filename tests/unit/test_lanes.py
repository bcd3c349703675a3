"""Keyed lanes: per-conversation order under concurrency, parallel keys, no idle lanes kept."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from worker.lanes import Lanes, lane_key


async def handle(
    lanes: Lanes, key: str | None, seq: int, log: list[tuple[str | None, int]]
) -> None:
    """A message handler: take the lane first (before any await), then do uneven work."""
    async with lanes.hold(key):
        # Later messages often finish their own work sooner; the lane must not care.
        for _ in range(random.randint(0, 5)):
            await asyncio.sleep(0)
        await asyncio.sleep(random.random() / 1000)
        log.append((key, seq))


async def test_order_is_kept_per_key_under_concurrency() -> None:
    """Many interleaved messages started at once finish in arrival order within each key."""
    random.seed(7)
    lanes = Lanes()
    log: list[tuple[str | None, int]] = []
    arrivals = [(f"c{random.randrange(8)}", n) for n in range(800)]
    await asyncio.gather(*(handle(lanes, key, n, log) for key, n in arrivals))
    for key in {k for k, _ in arrivals}:
        done = [n for k, n in log if k == key]
        assert done == sorted(done), key
    assert len(log) == len(arrivals)


async def test_different_keys_and_no_key_run_in_parallel() -> None:
    """A busy lane blocks only its own key: other keys and unlaned messages pass it."""
    lanes = Lanes()
    release = asyncio.Event()
    order: list[str] = []

    async def slow(key: str | None, name: str) -> None:
        async with lanes.hold(key):
            await release.wait()
            order.append(name)

    async def fast(key: str | None, name: str) -> None:
        async with lanes.hold(key):
            order.append(name)

    tasks = [
        asyncio.create_task(slow("a", "a1")),
        asyncio.create_task(fast("a", "a2")),
        asyncio.create_task(fast("b", "b1")),
        asyncio.create_task(fast(None, "none1")),
        asyncio.create_task(slow(None, "none2")),
        asyncio.create_task(fast(None, "none3")),
    ]
    async with asyncio.timeout(1):
        while len(order) < 3:  # noqa: ASYNC110  # the handlers have no event of their own
            await asyncio.sleep(0)
    assert sorted(order) == ["b1", "none1", "none3"]
    release.set()
    await asyncio.gather(*tasks)
    assert order.index("a1") < order.index("a2")


async def test_idle_lanes_are_dropped() -> None:
    """Once nobody holds or waits for a key, its lane is gone; busy keys stay until done."""
    lanes = Lanes()
    release = asyncio.Event()

    async def hold(key: str) -> None:
        async with lanes.hold(key):
            await release.wait()

    tasks = [asyncio.create_task(hold(f"c{n % 50}")) for n in range(200)]
    await asyncio.sleep(0)
    assert len(lanes) == 50
    release.set()
    await asyncio.gather(*tasks)
    assert len(lanes) == 0
    for n in range(10_000):
        async with lanes.hold(f"once-{n}"):
            pass
    assert len(lanes) == 0


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    """Cancelling a message waiting in a lane neither blocks the next one nor leaks the lane."""
    lanes = Lanes()
    release = asyncio.Event()
    done: list[str] = []

    async def first() -> None:
        async with lanes.hold("a"):
            await release.wait()
            done.append("first")

    async def later(name: str) -> None:
        async with lanes.hold("a"):
            done.append(name)

    tasks = [asyncio.create_task(first()), asyncio.create_task(later("second"))]
    third = asyncio.create_task(later("third"))
    await asyncio.sleep(0)
    tasks[1].cancel()
    release.set()
    await asyncio.gather(*tasks, third, return_exceptions=True)
    assert done == ["first", "third"]
    assert len(lanes) == 0


async def test_an_error_inside_the_lane_releases_it() -> None:
    """A handler that raises frees its lane for the next message of the conversation."""
    lanes = Lanes()
    with pytest.raises(RuntimeError):
        async with lanes.hold("a"):
            raise RuntimeError("boom")
    async with asyncio.timeout(1), lanes.hold("a"):
        pass
    assert len(lanes) == 0


def body(envelope: object) -> bytes:
    """A raw message body."""
    return orjson.dumps(envelope)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (body({"type": "message.created", "data": {"conversationId": "c1", "x": 1}}), "c1"),
        (body({"type": "typing.started", "data": {"conversationId": "c2"}}), "c2"),
        (body({"type": "typing.stopped", "data": {"conversationId": "c2"}}), "c2"),
        (body({"type": "order.created", "data": {"conversationId": "c1"}}), None),
        (body({"type": "message.created", "data": {}}), None),
        (body({"type": "message.created", "data": {"conversationId": 7}}), None),
        (body({"type": "message.created", "data": {"conversationId": ""}}), None),
        (body({"type": "message.created", "data": ["c1"]}), None),
        (body({"type": 3, "data": {"conversationId": "c1"}}), None),
        (body(["message.created"]), None),
        (b"not json", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_lane_key(raw: bytes, expected: str | None) -> None:
    """The lane is the conversation of chat events and nothing for anything else or odd input."""
    assert lane_key(raw) == expected
