"""The Coalescer: concurrent lookups share bulk calls; errors reach every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from worker.errors import StoreUnavailable
from worker.mongo.coalesce import Coalescer


class Bulk:
    """A bulk lookup that records its calls and answers ``key * 10`` for even keys."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: BaseException | None = None

    async def __call__(self, keys: list[int]) -> Mapping[int, int]:
        self.calls.append(keys)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {key: key * 10 for key in keys if key % 2 == 0}


async def test_concurrent_gets_share_one_call_and_get_their_own_answers() -> None:
    """Gets started in one loop turn become one bulk call; each gets only its found keys."""
    bulk = Bulk()
    coalescer: Coalescer[int, int] = Coalescer(bulk)
    answers = await asyncio.gather(*(coalescer.get([n, n + 1]) for n in range(0, 20, 2)))
    assert len(bulk.calls) == 1
    assert sorted(bulk.calls[0]) == list(range(20))
    assert answers == [{n: n * 10} for n in range(0, 20, 2)]


async def test_gets_arriving_while_a_call_runs_wait_and_go_together() -> None:
    """With one call in flight, later gets gather into the next call, not one each."""
    bulk = Bulk()
    bulk.release.clear()
    coalescer: Coalescer[int, int] = Coalescer(bulk, max_in_flight=1)
    first = asyncio.create_task(coalescer.get([0]))
    async with asyncio.timeout(1):
        while not bulk.calls:  # noqa: ASYNC110  # the call starts a few loop turns later
            await asyncio.sleep(0)
    assert bulk.calls == [[0]]
    later = [asyncio.create_task(coalescer.get([n])) for n in range(2, 12, 2)]
    await asyncio.sleep(0)
    assert len(bulk.calls) == 1  # held back while the first runs
    bulk.release.set()
    async with asyncio.timeout(1):
        await first
        results = await asyncio.gather(*later)
    assert len(bulk.calls) == 2
    assert sorted(bulk.calls[1]) == list(range(2, 12, 2))
    assert results == [{n: n * 10} for n in range(2, 12, 2)]


async def test_a_failed_call_fails_every_waiter_and_the_next_call_works() -> None:
    """Every caller in a failed batch sees the error; the coalescer recovers after it."""
    bulk = Bulk()
    bulk.fail = StoreUnavailable("MongoDB unreachable")
    coalescer: Coalescer[int, int] = Coalescer(bulk)
    results = await asyncio.gather(*(coalescer.get([n]) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    bulk.fail = None
    assert await coalescer.get([4]) == {4: 40}


async def test_batches_are_capped() -> None:
    """No bulk call carries more than ``max_batch`` keys."""
    bulk = Bulk()
    coalescer: Coalescer[int, int] = Coalescer(bulk, max_batch=7)
    await asyncio.gather(*(coalescer.get([n]) for n in range(30)))
    assert max(len(call) for call in bulk.calls) <= 7
    assert sorted(k for call in bulk.calls for k in call) == list(range(30))


@pytest.mark.parametrize("keys", [[], set()])
async def test_no_keys_no_call(keys: list[int] | set[int]) -> None:
    """Asking for nothing answers nothing without a call."""
    bulk = Bulk()
    assert await Coalescer(bulk).get(keys) == {}
    assert bulk.calls == []


async def test_ask_sends_before_it_is_awaited_and_may_be_given_up() -> None:
    """``ask`` joins the next call at once, so other work overlaps the query; an answer
    nobody awaits (the caller gave up) leaves no unread-failure noise behind."""
    bulk = Bulk()
    coalescer: Coalescer[int, int] = Coalescer(bulk)
    answer = coalescer.ask([2, 3])
    async with asyncio.timeout(1):
        while not bulk.calls:  # noqa: ASYNC110  # the call starts a few loop turns later
            await asyncio.sleep(0)
    assert await answer == {2: 20}
    bulk.fail = StoreUnavailable("MongoDB unreachable")
    coalescer.ask([4])  # and never awaited
    async with asyncio.timeout(1):
        while len(bulk.calls) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0)
    bulk.fail = None
    assert await coalescer.get([6]) == {6: 60}


async def test_a_lingering_coalescer_gathers_requests_from_several_loop_turns() -> None:
    """With ``linger_s``, requests made over several loop turns within it share one call,
    which starts no sooner than ``linger_s`` after the first."""
    bulk = Bulk()
    coalescer: Coalescer[int, int] = Coalescer(bulk, linger_s=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(coalescer.get([2]))
    for _ in range(5):  # later loop turns, well inside the linger
        await asyncio.sleep(0)
    second = asyncio.ensure_future(coalescer.get([4]))
    assert await first == {2: 20} and await second == {4: 40}
    assert bulk.calls == [[2, 4]]
    assert loop.time() - started >= 0.045
