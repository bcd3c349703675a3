"""Keyed lanes: per-conversation order at the ordered steps, parallel keys, no idle lanes."""

from __future__ import annotations

import asyncio
import random

from worker.flow.lanes import NUMBER, SEND, UNORDERED, Lanes


async def handle(
    lanes: Lanes, key: str | None, seq: int, log: list[tuple[str, str | None, int]]
) -> None:
    """A message handler: take the turn first (before any await), then do uneven work with
    the two ordered steps in between; finish the turn whatever happens."""
    turn = lanes.turn(key)
    try:
        await jitter()  # lookups: later messages often finish them sooner
        await turn.wait(NUMBER)
        log.append(("number", key, seq))
        turn.passed(NUMBER)
        await jitter()  # the history write
        await turn.wait(SEND)
        log.append(("send", key, seq))
        turn.passed(SEND)
        await jitter()  # waiting for Soketi's answer: unordered
    finally:
        turn.finish()


async def jitter() -> None:
    """Uneven work: a few loop turns and a random sub-millisecond sleep."""
    for _ in range(random.randint(0, 5)):
        await asyncio.sleep(0)
    await asyncio.sleep(random.random() / 1000)


async def test_order_is_kept_per_key_at_each_ordered_step() -> None:
    """Many interleaved messages started at once pass NUMBER and SEND in arrival order
    within each key, while the keys interleave freely."""
    random.seed(7)
    lanes = Lanes()
    log: list[tuple[str, str | None, int]] = []
    arrivals = [(f"c{random.randrange(8)}", n) for n in range(800)]
    await asyncio.gather(*(handle(lanes, key, n, log) for key, n in arrivals))
    for step in ("number", "send"):
        for key in {k for k, _ in arrivals}:
            done = [n for s, k, n in log if s == step and k == key]
            assert done == sorted(done), (step, key)
            assert len(done) == sum(1 for k, _ in arrivals if k == key)
    assert len(lanes) == 0


async def test_unordered_work_of_one_key_overlaps() -> None:
    """Only the ordered steps wait: a message's lookups run while the one ahead is stuck
    before its send, and it may number while the one ahead waits to send."""
    lanes = Lanes()
    first, second = lanes.turn("a"), lanes.turn("a")
    first.passed(NUMBER)
    async with asyncio.timeout(1):
        await second.wait(NUMBER)  # the first has numbered, not sent: enough
    waiting = asyncio.create_task(second.wait(SEND))
    await asyncio.sleep(0)
    assert not waiting.done()
    first.passed(SEND)
    async with asyncio.timeout(1):
        await waiting


async def test_different_keys_and_no_key_never_wait() -> None:
    """A stuck turn blocks only its own key: other keys and unlaned messages pass it."""
    lanes = Lanes()
    lanes.turn("a")  # never passes anything
    async with asyncio.timeout(1):
        for turn in (lanes.turn("b"), lanes.turn(None), lanes.turn(None)):
            await turn.wait(NUMBER)
            await turn.wait(SEND)
    assert lanes.turn(None) is UNORDERED


async def test_a_finished_turn_releases_the_ones_behind_it() -> None:
    """A message that stops early (a duplicate, an error, a cancel) finishes its turn, and
    the next message of the conversation goes on; idle lanes are dropped."""
    lanes = Lanes()
    first, second, third = lanes.turn("a"), lanes.turn("a"), lanes.turn("a")
    second.finish()  # e.g. a duplicate: done before the first even numbered
    waiting = asyncio.create_task(third.wait(SEND))
    await asyncio.sleep(0)
    assert not waiting.done()  # the third follows the second, which followed the first...
    first.finish()
    async with asyncio.timeout(1):
        await waiting
    assert len(lanes) == 1  # the third is the lane's last turn, unfinished
    third.finish()
    assert len(lanes) == 0


async def test_a_lane_outlives_finished_turns_while_one_ahead_is_unfinished() -> None:
    """The last turn finishing early does not drop the lane while a turn ahead of it is still
    on its way: a newcomer must queue behind that one, not start a fresh lane."""
    lanes = Lanes()
    first, second = lanes.turn("a"), lanes.turn("a")
    second.finish()
    newcomer = lanes.turn("a")
    waiting = asyncio.create_task(newcomer.wait(NUMBER))
    await asyncio.sleep(0)
    assert not waiting.done()
    first.passed(NUMBER)
    async with asyncio.timeout(1):
        await waiting
    first.finish()
    newcomer.finish()
    assert len(lanes) == 0


async def test_idle_lanes_are_dropped() -> None:
    """Once every turn of a key has finished, its lane is gone; busy keys stay until done."""
    lanes = Lanes()
    turns = [lanes.turn(f"c{n % 50}") for n in range(200)]
    assert len(lanes) == 50
    for turn in turns:
        turn.finish()
    assert len(lanes) == 0
    for n in range(10_000):
        lanes.turn(f"once-{n}").finish()
    assert len(lanes) == 0
