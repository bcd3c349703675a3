"""Batching across messages: MongoDB lookups, the duplicate check and Soketi triggers.

Each message is still processed on its own (parse, load, decide, deliver, record), but the
I/O of concurrently processed messages is merged: ids into one ``$in`` query per collection,
processed-id checks and records into one query and one ``insert_many``, and deliveries
into ``batch_events`` calls of up to ten Pusher events. A message's deliveries always
travel in one call when they fit, so a failed call never leaves a message half-delivered.
Calls carrying an ordered channel (a conversation's) go out one after the other, in the
order their deliveries were handed over, so many calls in flight never reorder a chat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Generator, Mapping, Sequence
from typing import Any

from handlers.channels import is_chat
from handlers.model import Account, Delivery, Product, Store
from worker.coalesce import Answer, Coalescer
from worker.errors import PermanentError
from worker.mongo import ProcessedLog
from worker.soketi import SoketiClient, batch_entries


class BatchingStore:
    """A ``Store`` whose lookups from concurrent messages share bulk queries."""

    def __init__(self, store: Store) -> None:
        self._users: Coalescer[str, Account] = Coalescer(_bulk(store.users))
        self._shops: Coalescer[str, Account] = Coalescer(_bulk(store.shops))
        self._products: Coalescer[str, Product] = Coalescer(_bulk(store.products))

    async def users(self, ids: Collection[str]) -> Mapping[str, Account]:
        """Users by id."""
        return await self._users.get(ids)

    async def shops(self, ids: Collection[str]) -> Mapping[str, Account]:
        """Shops by id."""
        return await self._shops.get(ids)

    async def products(self, ids: Collection[str]) -> Mapping[str, Product]:
        """Products by id."""
        return await self._products.get(ids)


def _bulk(lookup: Any) -> Any:
    async def bulk(ids: list[str]) -> Mapping[str, Any]:
        found: Mapping[str, Any] = await lookup(ids)
        return found

    return bulk


class BatchingProcessedIds:
    """The processed-id log with checks and records of concurrent messages merged."""

    def __init__(self, log: ProcessedLog) -> None:
        self._log = log
        self._seen: Coalescer[str, bool] = Coalescer(self._bulk_seen)
        self._record: Coalescer[str, bool] = Coalescer(self._bulk_record)

    def seen(self, ids: Collection[str]) -> Awaitable[set[str]]:
        """The subset of ``ids`` already recorded; the check joins the next query at once."""
        return _Ids(self._seen.ask(ids))

    async def record(self, ids: Collection[str]) -> None:
        """Record ``ids`` as pushed (one ``insert_many`` for many messages)."""
        await self._record.get(ids)

    async def _bulk_seen(self, ids: list[str]) -> Mapping[str, bool]:
        return dict.fromkeys(await self._log.seen(ids), True)

    async def _bulk_record(self, ids: list[str]) -> Mapping[str, bool]:
        await self._log.record(ids)
        return {}


Batch = list[tuple[list[dict[str, Any]], asyncio.Future[None]]]


class _Ids:
    """The keys of an ``Answer``, as a set, when awaited (nothing runs before)."""

    __slots__ = ("_answer",)

    def __init__(self, answer: Answer[str, bool]) -> None:
        self._answer = answer

    def __await__(self) -> Generator[Any, None, set[str]]:
        found = yield from self._answer.__await__()
        return set(found)


class TriggerBatcher:
    """Coalesces the deliveries of concurrent messages into ``batch_events`` calls.

    A call goes out when ten Pusher events are waiting or ``linger_s`` after the first one;
    at most ``max_in_flight`` calls run at once. A call that carries an ``ordered`` channel
    starts only once the previous call carrying that channel has finished, so a channel's
    events reach Soketi in the order ``deliver`` was called. If Soketi refuses a call that
    carried several messages, each message is sent again on its own, in order, so one bad
    message cannot take its neighbours to the dead-letter queue.
    """

    def __init__(
        self,
        client: SoketiClient,
        *,
        linger_s: float = 0.002,
        max_in_flight: int = 16,
        ordered: Callable[[str], bool] = is_chat,
    ) -> None:
        self._client = client
        self._max_batch = client.limits.max_batch
        self._linger_s = linger_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._ordered = ordered
        self._pending: Batch = []
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Per ordered channel: the end of the last call carrying it, while it runs.
        self._tails: dict[str, asyncio.Future[None]] = {}

    @property
    def limits(self) -> Any:
        """The size limits of the underlying client."""
        return self._client.limits

    async def deliver(
        self,
        deliveries: Sequence[Delivery],
        socket_id: str | None = None,
        queued: Callable[[], None] | None = None,
    ) -> int:
        """Trigger one message's deliveries, batched with other messages'; return 1.

        ``queued`` is called as soon as the deliveries are in line: later ``deliver`` calls
        cannot overtake them on an ordered channel.
        """
        entries = batch_entries(deliveries, socket_id, self._client.limits)
        if len(entries) > self._max_batch:
            return await self._client.deliver(deliveries, socket_id, queued)
        if self._count + len(entries) > self._max_batch:
            self._flush()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entries, future))
        self._count += len(entries)
        if queued is not None:
            queued()
        if self._count >= self._max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._flush)
        await future
        return 1

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        batch, self._pending, self._count = self._pending, [], 0
        channels = {
            str(e["channel"])
            for entries, _ in batch
            for e in entries
            if self._ordered(str(e["channel"]))
        }
        after = {self._tails[c] for c in channels if c in self._tails}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for channel in channels:
            self._tails[channel] = done
        task = asyncio.create_task(self._send(batch, after))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._finished(channels, done))

    def _finished(self, channels: set[str], done: asyncio.Future[None]) -> None:
        done.set_result(None)
        for channel in channels:
            if self._tails.get(channel) is done:
                del self._tails[channel]

    async def _send(self, batch: Batch, after: set[asyncio.Future[None]]) -> None:
        try:
            if after:  # earlier calls on the same conversations first (they never fail)
                await asyncio.wait(after)
        except asyncio.CancelledError as error:
            _resolve(batch, error)
            raise
        async with self._slots:
            try:
                await self._client.send_batch([e for entries, _ in batch for e in entries])
            except PermanentError as error:
                if len(batch) == 1:
                    _resolve(batch, error)
                else:
                    for entries, future in batch:
                        await self._send_alone(entries, future)
            except BaseException as error:  # every waiter settles its own message with it
                _resolve(batch, error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                _resolve(batch, None)

    async def _send_alone(
        self, entries: list[dict[str, Any]], future: asyncio.Future[None]
    ) -> None:
        try:
            await self._client.send_batch(entries)
        except Exception as error:  # handed to the message's own settle
            _resolve([(entries, future)], error)
        else:
            _resolve([(entries, future)], None)


def _resolve(
    batch: Sequence[tuple[list[dict[str, Any]], asyncio.Future[None]]], error: BaseException | None
) -> None:
    """Wake every waiter of ``batch`` with ``error``, or with success when it is ``None``."""
    for _, future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
