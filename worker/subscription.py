"""Keeping the consumer on the queue exactly when it should be, whatever the broker does.

One supervising task reconciles the wanted state (circuits closed, not stopping) with the
actual one: it cancels the consumer while a circuit is open, consumes again once it closes,
and re-consumes after the broker cancelled the consumer or a reconnect lost it. Readiness
and ``consumer_up`` read the actual state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from worker.metrics import Metrics

log = structlog.get_logger("fanout")

Callback = Callable[[AbstractIncomingMessage], Awaitable[Any]]


class Subscription:
    """The worker's consumer on its queue, supervised."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        callback: Callback,
        metrics: Metrics,
        *,
        wanted: Callable[[], bool],
        interval_s: float = 1.0,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._callback = callback
        self._metrics = metrics
        self._wanted = wanted
        self._interval_s = interval_s
        self._tag: str | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Consume now and start supervising."""
        await self._reconcile()
        self._task = asyncio.create_task(self._supervise(), name="subscription-supervisor")

    def poke(self) -> None:
        """Something changed (a circuit, shutdown): reconcile soon."""
        self._changed.set()

    async def consuming(self) -> bool:
        """True when our consumer is registered on an open channel."""
        if self._tag is None or self._channel.is_closed:
            return False
        try:
            underlay = await asyncio.wait_for(self._channel.get_underlay_channel(), 1)
        except Exception:  # a channel being restored is not consuming
            return False
        # aiormq drops a tag from ``consumers`` when the broker sends Basic.Cancel.
        consumers: dict[str, Any] = getattr(underlay, "consumers", {})
        return self._tag in consumers

    async def stop(self) -> None:
        """Stop supervising and cancel the consumer (in-flight messages stay ours to settle)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._cancel()
        self._metrics.consumer_up.set(0)

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval_s)
            self._changed.clear()
            try:
                await self._reconcile()
            except Exception as error:  # the broker may be gone; try again later
                log.warning("fanout.consumer_reconcile_failed", error=f"{type(error).__name__}")

    async def _reconcile(self) -> None:
        wanted = self._wanted()
        actual = await self.consuming()
        if wanted and not actual:
            if self._channel.is_closed:
                self._metrics.consumer_up.set(0)
                return  # the robust connection restores the channel and its consumer
            if self._tag is not None:
                log.warning(
                    "fanout.consumer_lost", consumer_tag=self._tag, action="consuming again"
                )
                self._metrics.reconnects.labels(kind="consumer").inc()
                await self._cancel()
            self._tag = await self._queue.consume(self._callback)
            log.info("fanout.consuming", queue=self._queue.name)
        elif not wanted and self._tag is not None:
            await self._cancel()
            log.warning("fanout.consuming_paused", queue=self._queue.name)
        self._metrics.consumer_up.set(1 if await self.consuming() else 0)

    async def _cancel(self) -> None:
        tag, self._tag = self._tag, None
        if tag is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(tag), 5)
