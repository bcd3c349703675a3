"""Handing a shard over without breaking its order: one shard's consumer and its hand-over.

RabbitMQ 3.x activates the oldest registration on a single-active-consumer queue (it
ignores ``x-priority`` there), and on a ``basic.cancel`` it activates the next consumer at
once, while the cancelled one still holds unsettled messages: a cancel could let two
workers run one conversation at the same time. So each shard's consumer lives on a channel
of its own, and a hand-over never cancels: it withholds every new delivery of the shard
(never passed to the callback, never settled), waits until the messages already passed on
are settled, then closes the channel. The broker returns the withheld messages to the front
of the queue, in order, and only then activates the next registration; the slot registers
again behind it, as a standby.

A worker that receives a message on a shard it does not own (a reconnect reshuffled the
registrations) hands that shard over too, at most once per ``cooldown_s``, so a shard whose
owner has no consumer is still consumed and its messages are not bounced for ever (each
hand-over counts one delivery of the withheld messages against ``x-delivery-limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

log = structlog.get_logger("fanout")

Callback = Callable[[AbstractIncomingMessage], Awaitable[Any]]
#: Opens shard ``index``'s own channel and returns it with the shard queue declared on it.
OpenShard = Callable[[int], Awaitable[tuple[AbstractChannel, AbstractQueue]]]


async def _tags_on(channel: AbstractChannel) -> set[str]:
    """The consumer tags alive on ``channel`` (none while it is closed or being restored)."""
    if channel.is_closed:
        return set()
    try:
        underlay = await asyncio.wait_for(channel.get_underlay_channel(), 1)
    except Exception:  # a channel being restored is not consuming
        return set()
    # aiormq drops a tag from ``consumers`` when the broker sends Basic.Cancel.
    return set(getattr(underlay, "consumers", {}))


async def _requeue(messages: Sequence[AbstractIncomingMessage]) -> None:
    """Hand withheld messages back (a channel that would not close), oldest first."""
    for message in messages:
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)


class ShardSlot:
    """One shard's consumer of this worker, on a channel of its own, and its hand-over."""

    def __init__(
        self,
        index: int,
        open_shard: OpenShard,
        callback: Callback,
        *,
        worker: str,
        wanted: Callable[[], bool],
        cooldown_s: float,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        #: Whether the fleet gives this shard to this worker (all are, before it speaks).
        self.owned = True
        self._open_shard = open_shard
        self._callback = callback
        self._worker = worker
        self._wanted = wanted
        self._cooldown_s = cooldown_s
        self._mono = mono
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._serial = itertools.count(1)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._handing_over: asyncio.Task[None] | None = None
        self._last_handover = -float("inf")
        self.handovers = 0
        # Registering and the close of a hand-over never interleave.
        self._lock = asyncio.Lock()
        self._withheld: list[AbstractIncomingMessage] = []

    @property
    def name(self) -> str:
        """The shard queue's name (known once registered)."""
        return self._queue.name if self._queue is not None else f"shard {self.index}"

    @property
    def tag(self) -> str | None:
        """Our consumer tag on the shard, while registered."""
        return self._tag

    @property
    def handing_over(self) -> bool:
        """True from the decision to hand over until the slot is registered again."""
        return self._handing_over is not None and not self._handing_over.done()

    async def registered(self) -> bool:
        """True while our consumer is on the shard (a hand-over under way counts as on)."""
        if self.handing_over:
            return True
        if self._channel is None or self._tag is None:
            return False
        return self._tag in await _tags_on(self._channel)

    async def register(self) -> None:
        """Put our consumer on the shard (a new channel unless ours is open), as the youngest."""
        async with self._lock:
            await self._register()

    async def _register(self) -> None:
        if self._channel is not None and self._channel.is_closed:
            return  # the robust connection restores the channel and its consumer
        if self._channel is None or self._queue is None:
            self._channel, self._queue = await self._open_shard(self.index)
        self._tag = f"{self._worker}/{self._queue.name}/{next(self._serial)}"
        await self._queue.consume(self._deliver, consumer_tag=self._tag)
        log.info("fanout.consuming", queue=self._queue.name, consumer_tag=self._tag)

    async def pause(self) -> None:
        """Cancel our consumer (messages passed on stay ours to settle); keep the channel."""
        tag, self._tag = self._tag, None
        channel, queue = self._channel, self._queue
        if tag is not None and queue is not None and channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 5)

    def hand_over(self, reason: str) -> None:
        """Start handing the shard over (no-op when one is under way or nothing is on it)."""
        if self.handing_over or self._channel is None:
            return
        log.info("fanout.shard_handover", queue=self.name, reason=reason)
        self._handing_over = asyncio.create_task(
            self._hand_over(), name=f"shard-handover-{self.index}"
        )

    async def handed_over(self) -> None:
        """Wait until a hand-over under way is done (the slot registered again, if wanted)."""
        if self._handing_over is not None:
            await asyncio.shield(self._handing_over)

    async def close(self, timeout_s: float = 0.0) -> None:
        """Let a hand-over under way finish within ``timeout_s``, else stop it; the messages
        it withheld then go back to the queue when the connection closes."""
        task = self._handing_over
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.pause()

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        if self.handing_over:
            # Withheld: the broker gets it back, first in line, when the channel closes.
            self._withheld.append(message)
            return
        if not self.owned and self._mono() - self._last_handover >= self._cooldown_s:
            # Active on a shard another worker owns: this message is the first withheld.
            self.hand_over("active on a shard of another worker")
            if self.handing_over:
                self._withheld.append(message)
                return
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._callback(message)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _hand_over(self) -> None:
        # ``_deliver`` withholds everything from now on; what it passed on must be settled
        # before the broker may give the shard's next messages to anyone else.
        await self._idle.wait()
        async with self._lock:
            channel, self._channel, self._queue, self._tag = self._channel, None, None, None
            if channel is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), 5)
                if not channel.is_closed:  # never leave withheld messages stuck on it
                    await _requeue(self._withheld)
            self._withheld = []
            self._last_handover = self._mono()
            self.handovers += 1
            if self._wanted():
                try:
                    await self._register()
                except Exception as error:  # the supervisor registers it later
                    log.warning("fanout.consumer_reconcile_failed", error=f"{type(error).__name__}")
