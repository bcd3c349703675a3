"""Consuming: one callback per message; ``settle`` is the only place a message is settled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

import worker.broker.messages as broker
from worker.errors import (
    FanoutError,
    Interrupted,
)
from worker.events import peek
from worker.flow.acks import OpenTags
from worker.flow.batch import Item
from worker.flow.batching import Arrived, Batches, Held
from worker.flow.circuit import Circuits, first_of
from worker.flow.lanes import UNORDERED, Lanes, Turn
from worker.flow.observe import observe
from worker.flow.pipeline import Pipeline, Result
from worker.flow.settle import (
    SETTLE_RETRY_INITIAL_S,
    SETTLE_RETRY_MAX_S,
    AckFailed,
    SettlePaths,
    channel_closed,
    give_back,
    settle,
)
from worker.metrics import Metrics

log = structlog.get_logger("fanout")


@dataclass
class Consumer:
    """The consume callback: process, settle, count and log each message; tracks in-flight work.

    While a failure's circuit is open the message is held, not retried through the broker:
    it is processed again once the downstream is back, or returned to the queue on shutdown.
    """

    pipeline: Pipeline
    paths: SettlePaths
    metrics: Metrics
    circuits: Circuits
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _lanes: Lanes = field(default_factory=Lanes)
    #: At most this many first deliveries per batch; 1 turns batching off.
    batch_max: int = 100
    #: At most this many batches run at once; more first deliveries keep gathering.
    batches_in_flight: int = 2
    _open_tags: OpenTags = field(default_factory=OpenTags)
    _batches: Batches = field(init=False)

    def __post_init__(self) -> None:
        self._idle.set()
        self._batches = Batches(
            self,
            self.pipeline,
            self.circuits,
            self.metrics,
            self._open_tags,
            batch_max=self.batch_max,
            batches_in_flight=self.batches_in_flight,
        )

    def stop(self) -> None:
        """Release held messages back to the queue instead of waiting for circuits to close."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled."""
        return self._in_flight

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process and settle one message; never raises (an unsettled message is redelivered).

        A first delivery joins the gathering batch (``worker.flow.batching``); a redelivery,
        a retry, a copy of an id in flight or an open circuit takes the per-message path.
        Either way the work runs in tasks of ours: aiormq cancels its callbacks when the
        channel closes, and a cancel between Soketi accepting and the mark would push the
        redelivered copy again (the broker-cut test catches it). Only ``abandon`` cancels.
        """
        started = time.perf_counter()
        self._enter(message)
        # Taken before the first await, so in arrival order: the lane turn keeps a lane's
        # cursors and triggers in publish order. A copy of an id in flight takes no turn (it
        # is a duplicate, or late anyway): nobody may wait for it while it waits for the id.
        lane, event_id = peek(message.body)
        copy = event_id is not None and event_id in self.pipeline.in_flight
        turn = UNORDERED if copy else self._lanes.turn(lane)
        if (
            event_id is not None
            and not copy
            and self._batchable(message)
            and self.pipeline.in_flight.try_hold(event_id)
        ):
            arrived = Arrived(message, Item(message.body, turn), event_id, started)
            batch = self._batches.add(arrived)
            # Returns once it is settled: a shard's hand-over waits for its callbacks
            # (``worker.flow.handover``). A cancel (the channel closed) only stops the wait.
            await batch.done.wait()
            if arrived.fallback is not None:
                await asyncio.shield(arrived.fallback)
            return
        held = self.pipeline.in_flight.hold(event_id) if event_id else contextlib.nullcontext()
        await asyncio.shield(self.spawn(self._handle(message, turn, held, started)))

    def _batchable(self, message: AbstractIncomingMessage) -> bool:
        return (
            self.batch_max > 1
            and not message.redelivered
            and not self._stopping.is_set()
            and self.circuits.may_process()
            and broker.attempts_of(message) == 0
            and broker.pushed_of(message) is None
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in a task of ours (``abandon`` cancels what is left of them)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def alone(self, arrived: Arrived) -> Coroutine[Any, Any, None]:
        """The per-message path of a message that left its batch, with what the batch knew."""
        item, event = arrived.item, arrived.item.event
        return self._handle(
            arrived.message,
            item.turn,
            Held(self.pipeline.in_flight, arrived.event_id),  # taken at arrival
            arrived.started,
            pushed=item.pushed,
            from_batch=True,
            failed=item.error,
            identity=(event.type, event.id) if event is not None else None,
        )

    async def _handle(
        self,
        message: AbstractIncomingMessage,
        turn: Turn,
        held: contextlib.AbstractAsyncContextManager[None],
        started: float,
        *,
        pushed: tuple[int, float] | None = None,
        from_batch: bool = False,
        failed: BaseException | None = None,
        identity: tuple[str, str] | None = None,
    ) -> None:
        """The per-message path; ``pushed``, ``failed`` and ``identity`` come from a batch
        the message left (``_attempt``)."""
        result: Result | BaseException | None = None
        try:
            try:
                async with held:
                    result = await self._attempt(
                        message, turn, pushed, from_batch, failed, identity
                    )
            finally:
                turn.finish()
            await self.settle(message, result, started)
        except Exception as error:  # nothing settled: hand it back
            log.warning(
                "fanout.settle_failed",
                message_id=message.message_id,
                error=f"{type(error).__name__}: {error}",
            )
            if result is None:
                await give_back(message)
        finally:
            self.leave(message)

    async def settle(
        self, message: AbstractIncomingMessage, result: Result | BaseException, started: float
    ) -> None:
        """Settle, count and log; never raises."""
        try:
            settled = await settle(message, result, self.paths)
            observe(self.metrics, message, result, settled, time.perf_counter() - started)
        except AckFailed as failed:
            # Done, whatever became of the ack: the redelivered copy will only count as a
            # duplicate, so count what was done now or never.
            observe(self.metrics, message, result, failed.settled, time.perf_counter() - started)
            log.warning(
                "fanout.ack_failed",
                message_id=message.message_id,
                outcome=failed.settled.outcome,
                error=str(failed),
            )
            await give_back(message)
        except Exception as error:  # e.g. the republishing connection failed mid-settle
            log.warning(
                "fanout.settle_failed",
                message_id=message.message_id,
                error=f"{type(error).__name__}: {error}",
            )
            await self._settle_later(message, result, started)

    async def _settle_later(
        self, message: AbstractIncomingMessage, result: Result | BaseException, started: float
    ) -> None:
        """Settle again, with backoff, until it works, the message's channel closes, or the
        worker stops.

        The republishing connection reconnects on its own schedule and can be down while the
        consuming channel lives on. Left unsettled, the message would sit unacked on that
        channel for good; handed straight back, it would loop through the queue (each return
        counts towards the delivery limit) for as long as the outage lasts.
        """
        delay_s = SETTLE_RETRY_INITIAL_S
        while not self._stopping.is_set():
            if channel_closed(message):
                return  # the broker requeues it; the redelivery is settled afresh
            with contextlib.suppress(TimeoutError):  # back off, but wake up for a stop
                async with asyncio.timeout(delay_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                break
            delay_s = min(delay_s * 2, SETTLE_RETRY_MAX_S)
            try:
                settled = await settle(message, result, self.paths)
            except AckFailed as failed:
                observe(
                    self.metrics, message, result, failed.settled, time.perf_counter() - started
                )
                await give_back(message)
                return
            except Exception as error:
                log.info("fanout.settle_retry_failed", error=f"{type(error).__name__}: {error}")
                continue
            observe(self.metrics, message, result, settled, time.perf_counter() - started)
            return
        await give_back(message)

    async def abandon(self) -> int:
        """Cancel work still running after the drain budget; its messages return to the queue."""
        running = [task for task in self._tasks if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        return len(running)

    async def _attempt(
        self,
        message: AbstractIncomingMessage,
        turn: Turn,
        pushed: tuple[int, float] | None = None,
        from_batch: bool = False,
        failed: BaseException | None = None,
        identity: tuple[str, str] | None = None,
    ) -> Result | BaseException:
        """Process the message; hold it while the circuit its failure belongs to is open.

        ``failed``: the error a batch met for this message (``worker.flow.batch``): handled
        as if this method's first attempt had raised it. ``identity`` (the event's type and
        id) labels it: one error may be shared by every message of a failed call.
        """
        held: FanoutError | None = None
        # A first delivery cannot have been recorded in history by an earlier attempt (a
        # batch it left may have).
        maybe_recorded = from_batch or message.redelivered or broker.attempts_of(message) > 0
        # Soketi accepted it already (an earlier attempt, here or in another process): only mark.
        pushed = pushed or broker.pushed_of(message)
        while True:
            error, failed = failed, None
            if error is None:
                if not await self._gate():
                    interrupted = Interrupted("worker stopping while a downstream was unavailable")
                    if held is not None:  # it parsed: count the requeue under its type
                        interrupted.event_type, interrupted.event_id = (
                            held.event_type,
                            held.event_id,
                        )
                    # Settle republishes it with ``fanout-pushed`` instead of requeueing it bare.
                    interrupted.pushed = pushed
                    return interrupted
                try:
                    result = await self.pipeline.process(
                        message.body, turn, maybe_recorded=maybe_recorded, pushed=pushed
                    )
                except Exception as raised:  # settle decides by the error's class
                    error = raised
                else:
                    self.circuits.mongodb.record_success()
                    if result.outcome == "delivered" and result.deliveries:
                        self.circuits.soketi.record_success()
                    return result
            maybe_recorded = True
            if isinstance(error, FanoutError):
                if identity is not None:
                    error.event_type, error.event_id = identity
                if error.pushed is not None:
                    pushed = error.pushed
            circuit = self.circuits.owner(error)
            if circuit is None or not isinstance(error, FanoutError):
                return error
            circuit.record_failure(error)
            if circuit.state == "open" and not self._stopping.is_set():
                held = error
                continue
            return error

    async def _gate(self) -> bool:
        """Wait until every circuit is closed (True) or the worker stops (False)."""
        if self.circuits.may_process():
            return True
        await first_of(self.circuits.wait_may_process(), self._stopping.wait())
        return self.circuits.may_process() and not self._stopping.is_set()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no message is in flight, at most ``timeout_s``; say whether it happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _enter(self, message: AbstractIncomingMessage) -> None:
        self._open_tags.add(message)
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.inc()

    def leave(self, message: AbstractIncomingMessage) -> None:
        """``message``'s work is over: it is no longer in flight."""
        self._open_tags.discard(message)
        self._in_flight -= 1
        self.metrics.in_flight.dec()
        if self._in_flight == 0:
            self._idle.set()
