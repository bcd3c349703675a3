"""Consuming: one callback per message; ``settle`` is the only place a message is settled."""

from __future__ import annotations

import asyncio
import contextlib
import time
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
from worker.flow.circuit import Circuits, first_of
from worker.flow.lanes import Lanes, Turn
from worker.flow.pipeline import Pipeline, Result
from worker.flow.settle import (
    SETTLE_RETRY_INITIAL_S,
    SETTLE_RETRY_MAX_S,
    AckFailed,
    Settled,
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

    def __post_init__(self) -> None:
        self._idle.set()

    def stop(self) -> None:
        """Release held messages back to the queue instead of waiting for circuits to close."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled."""
        return self._in_flight

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process and settle one message; never raises (an unsettled message is redelivered).

        The work runs in a task of our own, shielded from the caller: aiormq cancels its
        consumer callbacks when the channel closes (a broker connection loss), and a cancel
        between Soketi accepting a trigger and the id being recorded would push the
        redelivered copy a second time. Only ``abandon`` (shutdown) cancels the work. (A plain
        function returning the task would not do: aio-pika awaits what such a callback returns,
        so the cancel would reach the work; the broker-cut test catches it.)
        """
        work = asyncio.create_task(self._handle(message), name=f"handle-{message.message_id}")
        self._tasks.add(work)
        work.add_done_callback(self._tasks.discard)
        await asyncio.shield(work)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        self._enter()
        # Both taken before the first await, so in arrival order: the lane turn keeps one
        # conversation's cursors and triggers in publish order however many messages run at
        # once, and a second copy of an id waits for the first to be settled.
        lane, event_id = peek(message.body)
        turn = self._lanes.turn(lane)
        own_id = self.pipeline.in_flight.hold(event_id) if event_id else contextlib.nullcontext()
        result: Result | BaseException | None = None
        try:
            try:
                async with own_id:
                    result = await self._attempt(message, turn)
            finally:
                turn.finish()
            settled = await settle(message, result, self.paths)
            self._observe(message, result, settled, time.perf_counter() - started)
        except AckFailed as failed:
            # Done, whatever became of the ack: the redelivered copy will only count as a
            # duplicate, so count what was done now or never.
            assert result is not None  # only settle raises it
            self._observe(message, result, failed.settled, time.perf_counter() - started)
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
            if result is None:  # failed before settling: nothing was done, hand it back
                await give_back(message)
            else:
                await self._settle_later(message, result, started)
        finally:
            self._leave()

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
                self._observe(message, result, failed.settled, time.perf_counter() - started)
                await give_back(message)
                return
            except Exception as error:
                log.info("fanout.settle_retry_failed", error=f"{type(error).__name__}: {error}")
                continue
            self._observe(message, result, settled, time.perf_counter() - started)
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
        self, message: AbstractIncomingMessage, turn: Turn
    ) -> Result | BaseException:
        """Process the message; hold it while the circuit its failure belongs to is open."""
        held: FanoutError | None = None
        # A first delivery cannot have been recorded in history by an earlier attempt.
        maybe_recorded = message.redelivered or broker.attempts_of(message) > 0
        # Soketi accepted it already (an earlier attempt, here or in another process): only mark.
        pushed = broker.pushed_of(message)
        while True:
            if not await self._gate():
                interrupted = Interrupted("worker stopping while a downstream was unavailable")
                if held is not None:  # it parsed: count the requeue under its type, not "invalid"
                    interrupted.event_type, interrupted.event_id = held.event_type, held.event_id
                # Settle republishes it with ``fanout-pushed`` instead of requeueing it bare.
                interrupted.pushed = pushed
                return interrupted
            try:
                result = await self.pipeline.process(
                    message.body, turn, maybe_recorded=maybe_recorded, pushed=pushed
                )
            except Exception as error:  # settle decides by the error's class
                maybe_recorded = True
                if isinstance(error, FanoutError) and error.pushed is not None:
                    pushed = error.pushed
                circuit = self.circuits.owner(error)
                if circuit is None or not isinstance(error, FanoutError):
                    return error
                circuit.record_failure(error)
                if circuit.state == "open" and not self._stopping.is_set():
                    held = error
                    continue
                return error
            self.circuits.mongodb.record_success()
            if result.outcome == "delivered" and result.deliveries:
                self.circuits.soketi.record_success()
            return result

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

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.inc()

    def _leave(self) -> None:
        self._in_flight -= 1
        self.metrics.in_flight.dec()
        if self._in_flight == 0:
            self._idle.set()

    def _observe(
        self,
        message: AbstractIncomingMessage,
        result: Result | BaseException,
        settled: Settled,
        duration_s: float,
    ) -> None:
        metrics = self.metrics
        # Children looked up once per label set (``Metrics.child``): ~1.3 us less a message.
        metrics.child(metrics.messages, settled.event_type, settled.outcome, settled.reason).inc()
        metrics.child(metrics.processing_seconds, settled.event_type).observe(duration_s)
        if isinstance(result, Result) and result.outcome == "delivered":
            metrics.event_age_seconds.observe(max(result.age_s, 0.0))
        if settled.outcome == "retried":
            metrics.child(metrics.retries_scheduled, settled.reason).inc()
        fields = {
            "event_id": settled.event_id or message.message_id,
            "event_type": settled.event_type,
            "outcome": settled.outcome,
            "attempts": broker.attempts_of(message) + 1,
            "duration_ms": round(duration_s * 1000, 2),
            "routing_key": message.routing_key,
        }
        if isinstance(result, Result):  # the envelope's own bookkeeping (contract section 2)
            fields["correlation_id"] = result.event.correlation_id
            fields["source"] = result.event.source
            fields["version"] = result.event.version
        if settled.reason:
            fields["reason"] = settled.reason
        if isinstance(result, BaseException):
            fields["error"] = str(result)[:300]
        level = "info" if settled.outcome in ("delivered", "duplicate", "dropped") else "warning"
        getattr(log, level)("fanout.message_settled", **fields)
