"""Coalescing concurrent lookups into one bulk call (a data loader).

Messages are processed concurrently; each asks for a few ids. A ``Coalescer`` gathers the ids
that many messages ask for while the previous bulk call is still running (or during one
event-loop turn when idle) and answers them all with one call. Idle, a request waits one
loop turn; busy, batches grow by themselves, so throughput rises without a fixed delay. Work
off a message's critical path (recording what was pushed) may linger a little longer for
bigger batches: every MongoDB call costs a fixed share of CPU, whatever it carries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Generator, Hashable, Mapping
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Bulk = Callable[[list[K]], Awaitable[Mapping[K, V]]]


class Coalescer(Generic[K, V]):
    """Answers ``get(keys)`` through ``bulk(keys)`` calls shared between concurrent callers."""

    def __init__(
        self,
        bulk: Bulk[K, V],
        *,
        max_batch: int = 500,
        max_in_flight: int = 1,
        linger_s: float = 0.0,
    ) -> None:
        self._bulk = bulk
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        # 0: a call starts on the next loop turn; more: requests gather that long first.
        self._linger_s = linger_s
        self._pending: dict[K, asyncio.Future[V | None]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, keys: Collection[K]) -> dict[K, V]:
        """The values ``bulk`` found for ``keys`` (absent keys are left out)."""
        return await self.ask(keys)

    def ask(self, keys: Collection[K]) -> Answer[K, V]:
        """Ask for ``keys`` now, collect the answer later: the request joins the next bulk
        call at once, so the caller can do other work before awaiting the ``Answer`` (or
        drop it)."""
        futures = {key: self._future(key) for key in keys}
        if futures:
            self._schedule()
        return Answer(futures)

    def _future(self, key: K) -> asyncio.Future[V | None]:
        future = self._pending.get(key)
        if future is None:
            future = self._pending[key] = asyncio.get_running_loop().create_future()
            # A caller that gave up (``ask`` then ``close``) never reads a failure: not an error.
            future.add_done_callback(_retrieved)
            if len(self._pending) >= self._max_batch:
                self._flush()
        return future

    def _schedule(self) -> None:
        if self._pending and not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            if self._linger_s > 0:
                asyncio.get_running_loop().call_later(self._linger_s, self._flush)
            else:
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= self._max_in_flight:
            return
        if len(self._pending) <= self._max_batch:
            batch, self._pending = self._pending, {}
        else:  # the oldest keys go now, the rest with the next call
            keys = list(self._pending)
            batch = {key: self._pending.pop(key) for key in keys[: self._max_batch]}
        self._in_flight += 1
        task = asyncio.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[K, asyncio.Future[V | None]]) -> None:
        try:
            found = await self._bulk(list(batch))
        except BaseException as error:  # every waiter gets the failure, e.g. StoreUnavailable
            for future in batch.values():
                if not future.done():
                    future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            for key, future in batch.items():
                if not future.done():
                    future.set_result(found.get(key))
        finally:
            self._in_flight -= 1
            self._schedule()


class Answer(Generic[K, V]):
    """What ``Coalescer.ask`` will answer: await it for the values found (absent keys left
    out). Nothing runs until it is awaited, so an answer nobody waits for leaves no trace."""

    __slots__ = ("_futures",)

    def __init__(self, futures: dict[K, asyncio.Future[V | None]]) -> None:
        self._futures = futures

    def __await__(self) -> Generator[Any, None, dict[K, V]]:
        found: dict[K, V] = {}
        for key, future in self._futures.items():
            # One batch answers them all at once: after the first, these are already done.
            value = yield from future.__await__()
            if value is not None:
                found[key] = value
        return found


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class BatchedInsert:
    """Documents from concurrent callers written by one ``insert_many`` (keyed by ``_id``).

    ``insert(docs)`` stages its documents and joins the next bulk call (after ``linger_s``
    when set); it answers the ``_id``s the store refused as duplicates.
    """

    def __init__(
        self,
        insert_many: Callable[[list[dict[str, Any]]], Awaitable[set[str]]],
        *,
        linger_s: float = 0.0,
    ) -> None:
        self._insert_many = insert_many
        # The documents waiting for the next bulk call, by id (a Coalescer passes only keys).
        self._staged: dict[str, dict[str, Any]] = {}
        self._written: Coalescer[str, bool] = Coalescer(self._bulk, linger_s=linger_s)

    async def insert(self, docs: Collection[dict[str, Any]]) -> set[str]:
        """Insert ``docs`` with other callers'; return the ids refused as duplicates."""
        ids = [str(doc["_id"]) for doc in docs]
        self._staged.update(zip(ids, docs, strict=True))
        try:
            written = await self._written.get(ids)
        finally:
            for key in ids:
                self._staged.pop(key, None)
        return {key for key in ids if not written.get(key)}

    async def _bulk(self, ids: list[str]) -> Mapping[str, bool]:
        docs = [self._staged[key] for key in ids if key in self._staged]
        refused = await self._insert_many(docs)
        return {str(doc["_id"]): str(doc["_id"]) not in refused for doc in docs}
