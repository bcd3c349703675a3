"""Trigger batching: the deliveries of concurrently processed messages share Soketi calls.

Deliveries go out in ``batch_events`` calls of up to ten Pusher events. A message's
deliveries always travel in one call when they fit, so a failed call never leaves a message
half-delivered; one with more than ten waits in the same line and goes out in calls of its
own, planned by ``worker.soketi.api.plan_requests``. An ordered channel (a lane's own
channel, ``handlers.ordering``) is never carried by two calls at once, and its deliveries go
out in the order they were handed over, so many calls in flight never reorder a
conversation or an order; messages on other channels go past one that waits. This is the
only way the worker triggers events.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from handlers.model import Delivery
from handlers.ordering import is_ordered_channel
from worker.errors import PermanentError
from worker.soketi.api import Limits, Planned, batch_entries, plan_requests
from worker.soketi.client import SoketiClient


@dataclass(slots=True)
class _Waiting:
    """One message's entries, handed over and not yet in a call."""

    entries: list[dict[str, Any]]
    future: asyncio.Future[int]
    ordered: frozenset[str]
    since: float
    #: A message too big for one call goes out alone, in these calls (empty: it shares one).
    planned: tuple[Planned, ...] = ()


class TriggerBatcher:
    """Coalesces the deliveries of concurrent messages into ``batch_events`` calls.

    Messages wait in hand-over order. A call is formed from the front of that line as soon
    as ten Pusher events are ready, or ``linger_s`` after the oldest ready one arrived, and
    only while fewer than ``max_in_flight`` calls run (busy, calls fill up by themselves). A
    message is ready unless one of its ``ordered`` channels (a conversation's) is carried by a
    call still running or by a message ahead of it that is not ready: a channel is never in
    two calls at once, so its events reach Soketi in the order ``deliver`` was called, while
    messages on other channels go past. If Soketi refuses a call that carried several
    messages, each message is sent again on its own, in order, so one bad message cannot
    take its neighbours to the dead-letter queue.
    """

    def __init__(
        self,
        client: SoketiClient,
        *,
        linger_s: float = 0.002,
        max_in_flight: int = 16,
        ordered: Callable[[str], bool] = is_ordered_channel,
    ) -> None:
        self._client = client
        self._max_batch = client.limits.max_batch
        self._linger_s = linger_s
        self._max_in_flight = max_in_flight
        self._ordered = ordered
        self._waiting: deque[_Waiting] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Ordered channels carried by a call still running.
        self._busy: set[str] = set()

    @property
    def limits(self) -> Limits:
        """The size limits of the underlying client."""
        return self._client.limits

    async def deliver(
        self,
        deliveries: Sequence[Delivery],
        socket_id: str | None = None,
        queued: Callable[[], None] | None = None,
    ) -> int:
        """Trigger one message's deliveries; return how many calls carried them alone (1 when
        they shared a call with other messages).

        ``queued`` is called as soon as the deliveries are in line: later ``deliver`` calls
        cannot overtake them on an ordered channel.
        """
        sent = self.enqueue(deliveries, socket_id)
        if queued is not None:
            queued()
        return await sent

    def enqueue(
        self, deliveries: Sequence[Delivery], socket_id: str | None = None
    ) -> asyncio.Future[int]:
        """Put one message's deliveries in line now (``deliver`` without the wait); the future
        answers what ``deliver`` returns, or its error. Later calls cannot overtake them on an
        ordered channel."""
        entries = batch_entries(deliveries, socket_id, self._client.limits)
        planned: tuple[Planned, ...] = ()
        if len(entries) > self._max_batch:  # its own calls, in line like any other message
            planned = tuple(plan_requests(deliveries, socket_id, self._client.limits))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        ordered = frozenset(c for e in entries if self._ordered(c := str(e["channel"])))
        self._waiting.append(_Waiting(entries, future, ordered, loop.time(), planned))
        self._pump()
        return future

    def _pump(self) -> None:
        """Start every call that may start now; arm the linger timer for what stays."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while len(self._tasks) < self._max_in_flight:
            call, full, oldest = self._ready()
            if not call:
                return
            wait_s = oldest + self._linger_s - loop.time()
            # (a timer may fire a little early: a tenth of a millisecond counts as due)
            if not full and wait_s > 1e-4:
                self._timer = loop.call_later(wait_s, self._pump)
                return
            self._start(call)

    def _ready(self) -> tuple[list[_Waiting], bool, float]:
        """The next call from the front of the line: its messages, whether it is full (ten
        events, or the next ready message does not fit), and when its oldest arrived."""
        call: list[_Waiting] = []
        count, oldest = 0, math.inf
        blocked = set(self._busy)
        for waiting in self._waiting:
            if waiting.future.done():  # its message was abandoned (shutdown): never sent
                continue
            if waiting.ordered & blocked:
                blocked |= waiting.ordered  # nobody behind it on those channels overtakes
                continue
            if waiting.planned:  # too big to share: a call of its own, next in line
                return (call, True, oldest) if call else ([waiting], True, waiting.since)
            if count + len(waiting.entries) > self._max_batch:
                return call, True, oldest
            call.append(waiting)
            count += len(waiting.entries)
            oldest = min(oldest, waiting.since)
        return call, count >= self._max_batch, oldest

    def _start(self, call: list[_Waiting]) -> None:
        taken = {id(w) for w in call}
        self._waiting = deque(
            w for w in self._waiting if id(w) not in taken and not w.future.done()
        )
        channels = frozenset().union(*(w.ordered for w in call))
        self._busy |= channels
        task = asyncio.create_task(self._send(call))
        self._tasks.add(task)
        task.add_done_callback(lambda _: self._finished(task, channels))

    def _finished(self, task: asyncio.Task[None], channels: frozenset[str]) -> None:
        self._tasks.discard(task)
        self._busy -= channels
        self._pump()

    async def _send(self, call: list[_Waiting]) -> None:
        if len(call) == 1 and call[0].planned:
            await self._send_planned(call[0])
            return
        try:
            await self._client.send_batch([e for w in call for e in w.entries])
        except PermanentError as error:
            if len(call) == 1:
                _resolve(call, error)
            else:
                for waiting in call:
                    await self._send_alone(waiting)
        except BaseException as error:  # every waiter settles its own message with it
            _resolve(call, error)
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            _resolve(call, None)

    async def _send_planned(self, waiting: _Waiting) -> None:
        """A message too big for one call: its planned calls, one after the other."""
        try:
            for planned in waiting.planned:
                await self._client.send(planned)
        except BaseException as error:  # handed to the message's own settle
            _resolve([waiting], error)
            if isinstance(error, asyncio.CancelledError):
                raise
        else:
            _resolve([waiting], None)

    async def _send_alone(self, waiting: _Waiting) -> None:
        try:
            await self._client.send_batch(waiting.entries)
        except Exception as error:  # handed to the message's own settle
            _resolve([waiting], error)
        else:
            _resolve([waiting], None)


def _resolve(call: Sequence[_Waiting], error: BaseException | None) -> None:
    """Wake every waiter of ``call`` with ``error``, or with success when it is ``None``."""
    for waiting in call:
        if waiting.future.done():
            continue
        if error is None:
            waiting.future.set_result(max(len(waiting.planned), 1))
        else:
            waiting.future.set_exception(error)
