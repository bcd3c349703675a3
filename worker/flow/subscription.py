"""Keeping the consumers on the queues exactly when they should be, whatever the broker does.

One supervising task reconciles the wanted state (circuits closed, not stopping) with the
actual one: it cancels the consumers while a circuit is open, consumes again once it closes,
and re-consumes after the broker cancelled a consumer or a reconnect lost it. Readiness
and ``consumer_up`` read the actual state: up only while every queue has our consumer.
The worker consumes one queue, or in sharded mode the main queue and every shard.

In sharded mode each shard's consumer is a ``flow.handover.ShardSlot`` on a channel of its
own; when the fleet's assignment (``flow/shards.py``) changes, a worker re-registers, as a
standby, every shard whose owner changed and which is not its own (a hand-over, safe for
order), so the owner ends up the oldest registration and the broker activates it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from worker.flow.handover import Callback, OpenShard, ShardSlot
from worker.metrics import Metrics

log = structlog.get_logger("fanout")


class Subscription:
    """The worker's consumers on its queues (one callback for all), supervised."""

    def __init__(
        self,
        channel: AbstractChannel,
        queues: AbstractQueue | Sequence[AbstractQueue],
        callback: Callback,
        metrics: Metrics,
        *,
        wanted: Callable[[], bool],
        interval_s: float = 1.0,
        shards: int = 0,
        open_shard: OpenShard | None = None,
        worker: str = "",
        handover_cooldown_s: float = 10.0,
    ) -> None:
        self._channel = channel
        self._queues = (queues,) if isinstance(queues, AbstractQueue) else tuple(queues)
        self._callback = callback
        self._metrics = metrics
        self._wanted = wanted
        self._interval_s = interval_s
        self._worker = worker
        self._tags: dict[str, str] = {}  # queue name -> our consumer tag
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._slots: tuple[ShardSlot, ...] = ()
        if shards and open_shard is not None:
            self._slots = tuple(
                ShardSlot(
                    index,
                    open_shard,
                    callback,
                    worker=worker,
                    wanted=wanted,
                    cooldown_s=handover_cooldown_s,
                )
                for index in range(shards)
            )
        self._owners: Mapping[int, str] | None = None

    @property
    def slots(self) -> tuple[ShardSlot, ...]:
        """The shard consumers (none unless sharded)."""
        return self._slots

    def assigned(self, owners: Mapping[int, str]) -> None:
        """The fleet's new assignment: re-register, as standby, each changed shard not ours.

        So the owner of a shard becomes its oldest registration: the broker activates it once
        the active consumer is gone or has handed the shard over. An empty assignment (no
        fleet view) makes every shard ours and moves nothing.
        """
        previous, self._owners = self._owners, owners
        me = {slot.index: slot for slot in self._slots}
        for index, slot in me.items():
            owner = owners.get(index)
            slot.owned = owner is None or owner == self._worker
            changed = previous is None or previous.get(index) != owner
            if changed and not slot.owned:
                slot.hand_over("the fleet gave the shard to another worker")
        owned = sum(1 for slot in self._slots if slot.owned)
        self._metrics.shards_owned.set(owned)

    async def start(self) -> None:
        """Consume now and start supervising."""
        await self._reconcile()
        self._task = asyncio.create_task(self._supervise(), name="subscription-supervisor")

    def poke(self) -> None:
        """Something changed (a circuit, shutdown): reconcile soon."""
        self._changed.set()

    async def consuming(self) -> bool:
        """True when our consumer is registered on every queue, on an open channel."""
        if await self._missing():
            return False
        return all([await slot.registered() for slot in self._slots])

    async def _missing(self) -> list[AbstractQueue]:
        """The queues without a live consumer of ours."""
        if self._channel.is_closed:
            return list(self._queues)
        try:
            underlay = await asyncio.wait_for(self._channel.get_underlay_channel(), 1)
        except Exception:  # a channel being restored is not consuming
            return list(self._queues)
        # aiormq drops a tag from ``consumers`` when the broker sends Basic.Cancel.
        consumers: dict[str, Any] = getattr(underlay, "consumers", {})
        return [q for q in self._queues if self._tags.get(q.name) not in consumers]

    async def stop(self) -> None:
        """Stop supervising and cancel the consumer (in-flight messages stay ours to settle)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._cancel()
        for slot in self._slots:
            # Not a cancel (the next worker would start while ours are in flight): withhold,
            # and close the shard's channel once what it passed on is settled (``closed``).
            slot.hand_over("stopping")
        self._metrics.consumer_up.set(0)

    async def closed(self, timeout_s: float = 5.0) -> None:
        """Wait for the shards' hand-overs started by ``stop``; cut them off after ``timeout_s``."""
        for slot in self._slots:
            await slot.close(timeout_s)

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
        missing = await self._missing()
        if wanted and missing:
            if self._channel.is_closed:
                self._metrics.consumer_up.set(0)
                return  # the robust connection restores the channel and its consumers
            for queue in missing:
                if (tag := self._tags.get(queue.name)) is not None:
                    log.warning(
                        "fanout.consumer_lost",
                        queue=queue.name,
                        consumer_tag=tag,
                        action="consuming again",
                    )
                    self._metrics.reconnects.labels(kind="consumer").inc()
                    await self._cancel_one(queue)
                self._tags[queue.name] = await queue.consume(self._callback)
                log.info("fanout.consuming", queue=queue.name)
        elif not wanted and self._tags:
            await self._cancel()
            log.warning("fanout.consuming_paused", queues=[q.name for q in self._queues])
        await self._reconcile_slots(wanted)
        self._metrics.consumer_up.set(1 if await self.consuming() else 0)

    async def _reconcile_slots(self, wanted: bool) -> None:
        for slot in self._slots:
            if wanted and not await slot.registered():
                if slot.tag is not None:
                    log.warning(
                        "fanout.consumer_lost",
                        queue=slot.name,
                        consumer_tag=slot.tag,
                        action="consuming again",
                    )
                    self._metrics.reconnects.labels(kind="consumer").inc()
                await slot.register()
            elif not wanted:
                await slot.pause()

    async def _cancel(self) -> None:
        for queue in self._queues:
            await self._cancel_one(queue)

    async def _cancel_one(self, queue: AbstractQueue) -> None:
        tag = self._tags.pop(queue.name, None)
        if tag is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 5)
