"""Consuming: one callback per message; ``settle`` is the only place a message is settled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
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
from worker.flow.batch import Item, process_batch
from worker.flow.circuit import Circuits, first_of
from worker.flow.ids import InFlightIds
from worker.flow.lanes import UNORDERED, Lanes, Turn
from worker.flow.pipeline import Pipeline, Result
from worker.flow.settle import (
    SETTLE_RETRY_INITIAL_S,
    SETTLE_RETRY_MAX_S,
    AckFailed,
    Settled,
    SettlePaths,
    ack_through,
    channel_closed,
    give_back,
    settle,
    settled_of,
)
from worker.metrics import Metrics

log = structlog.get_logger("fanout")


@dataclass(slots=True)
class _Arrived:
    """A message waiting in the batch that is gathering."""

    message: AbstractIncomingMessage
    item: Item
    event_id: str
    started: float
    #: Its per-message work, once it left the batch.
    fallback: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Batch:
    """The messages of one batch, gathered for a loop turn; ``done`` once it is settled."""

    arrived: list[_Arrived] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _Held(contextlib.AbstractAsyncContextManager[None]):
    """An id a batch took on arrival (``InFlightIds.try_hold``), released on leaving."""

    def __init__(self, ids: InFlightIds, event_id: str) -> None:
        self._ids = ids
        self._event_id = event_id

    async def __aexit__(self, *_: object) -> None:
        self._ids.release(self._event_id)


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
    _gathering: _Batch | None = None
    _batches_running: int = 0
    _open_tags: OpenTags = field(default_factory=OpenTags)

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

        A first delivery joins the batch that is gathering (``worker.flow.batch``), which
        starts on the next loop turn or once ``batch_max`` messages are in; anything else
        (a redelivery, a retry, a second copy of an id in flight, an open circuit) takes the
        per-message path at once.

        The work runs in tasks of our own: aiormq cancels its consumer callbacks when the
        channel closes (a broker connection loss), and a cancel between Soketi accepting a
        trigger and the id being recorded would push the redelivered copy a second time. Only
        ``abandon`` (shutdown) cancels the work. The per-message path is shielded from this
        callback (a plain function returning the task would not do: aio-pika awaits what such
        a callback returns, so the cancel would reach the work; the broker-cut test catches
        it); a batched message is only appended here.
        """
        started = time.perf_counter()
        self._enter(message)
        # Both taken before the first await, so in arrival order: the lane turn keeps one
        # conversation's cursors and triggers in publish order however many messages run at
        # once, and a second copy of an id waits for the first to be processed. That copy
        # takes no place in the lane: it is a duplicate once the first is pushed (or late
        # anyway if the first failed), and nobody behind it may wait for it while it waits
        # for a batch that holds the next message of its lane.
        lane, event_id = peek(message.body)
        copy = event_id is not None and event_id in self.pipeline.in_flight
        turn = UNORDERED if copy else self._lanes.turn(lane)
        if (
            event_id is not None
            and not copy
            and self._batchable(message)
            and self.pipeline.in_flight.try_hold(event_id)
        ):
            arrived = _Arrived(message, Item(message.body, turn), event_id, started)
            batch = self._gather(arrived)
            # Returns once the message is settled, as on the per-message path: a shard's
            # hand-over waits for its callbacks (``worker.flow.handover``). A cancel (the
            # channel closed) only stops the waiting.
            await batch.done.wait()
            if arrived.fallback is not None:
                await asyncio.shield(arrived.fallback)
            return
        held = self.pipeline.in_flight.hold(event_id) if event_id else contextlib.nullcontext()
        await asyncio.shield(self._spawn(self._handle(message, turn, held, started)))

    def _batchable(self, message: AbstractIncomingMessage) -> bool:
        return (
            self.batch_max > 1
            and not message.redelivered
            and not self._stopping.is_set()
            and self.circuits.may_process()
            and broker.attempts_of(message) == 0
            and broker.pushed_of(message) is None
        )

    def _gather(self, arrived: _Arrived) -> _Batch:
        """Add ``arrived`` to the batch that is gathering; return that batch.

        The batch starts on the next loop turn, or once ``batch_max`` messages are in, or,
        while ``batches_in_flight`` batches run, when one of them is done: idle, a message
        waits one loop turn; busy, batches grow by themselves.
        """
        batch = self._gathering
        if batch is None:
            batch = self._gathering = _Batch()
            asyncio.get_running_loop().call_soon(self._start_batch, batch)
        batch.arrived.append(arrived)
        if len(batch.arrived) >= self.batch_max:
            self._start_batch(batch, full=True)
        return batch

    def _start_batch(self, batch: _Batch, *, full: bool = False) -> None:
        if self._gathering is not batch:
            return  # started already
        if not full and self._batches_running >= self.batches_in_flight:
            return  # it keeps gathering; the next batch to finish starts it
        self._gathering = None
        self._batches_running += 1
        self._spawn(self._run_batch(batch))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run_batch(self, batch: _Batch) -> None:
        """Process a batch; settle what it settled, in arrival order; hand the rest on."""
        self.metrics.batch_messages.observe(len(batch.arrived))
        running = True

        def step_aside() -> None:  # waiting for Soketi, not working: the next may start
            nonlocal running
            if running:
                running = False
                self._batches_running -= 1
                if self._gathering is not None:
                    self._start_batch(self._gathering)

        try:
            await self._process_batch(batch.arrived, step_aside)
        finally:
            batch.done.set()
            step_aside()

    async def _process_batch(self, arrived: list[_Arrived], waiting: Callable[[], None]) -> None:
        by_item = {id(each.item): each for each in arrived}
        handed: set[int] = set()

        def fallback(item: Item) -> None:
            handed.add(id(item))
            each = by_item[id(item)]
            held = _Held(self.pipeline.in_flight, each.event_id)  # taken at arrival
            event = item.event
            work = self._handle(
                each.message,
                item.turn,
                held,
                each.started,
                pushed=item.pushed,
                from_batch=True,
                failed=item.error,
                identity=(event.type, event.id) if event is not None else None,
            )
            each.fallback = self._spawn(work)

        try:
            try:
                items = [each.item for each in arrived]
                await process_batch(self.pipeline, items, fallback, waiting)
            except Exception as error:  # a defect: what is left goes the per-message way
                log.error("fanout.batch_failed", error=f"{type(error).__name__}: {error}")
                for each in arrived:
                    if each.item.outcome is None and id(each.item) not in handed:
                        fallback(each.item)
        finally:
            done = [each for each in arrived if id(each.item) not in handed]
            for each in done:
                self.pipeline.in_flight.release(each.event_id)
                each.item.turn.finish()
        try:
            outcomes = [each.item.outcome for each in done]
            if any(isinstance(outcome, Result) for outcome in outcomes):
                self.circuits.mongodb.record_success()
            if any(isinstance(o, Result) and o.deliveries for o in outcomes):
                self.circuits.soketi.record_success()
            merged = await self._ack_runs(done)
            for each, outcome in zip(done, outcomes, strict=True):
                if outcome is None:  # cancelled mid-batch (shutdown): the broker requeues it
                    continue
                if id(each.message) not in merged:
                    try:
                        await self._settle(each.message, outcome, each.started)
                    except Exception as error:  # a defect: never leave the rest unsettled
                        log.error(
                            "fanout.settle_failed",
                            message_id=each.message.message_id,
                            error=f"{type(error).__name__}: {error}",
                        )
        finally:
            for each in done:
                self._leave(each.message)

    async def _ack_runs(self, done: list[_Arrived]) -> set[int]:
        """Ack the runs of finished ``Result`` messages that one ``multiple`` ack each can
        cover (``worker.flow.acks``); count and log them; return their ``id``s."""
        results = {id(e.message): e for e in done if isinstance(e.item.outcome, Result)}
        runs, _ = self._open_tags.plan([each.message for each in results.values()])
        merged: set[int] = set()
        for last, covered in runs:
            try:
                await ack_through(last)
            except Exception as error:  # as ``AckFailed``: done, counted, handed back
                log.warning(
                    "fanout.ack_failed",
                    message_id=last.message_id,
                    messages=len(covered),
                    error=f"{type(error).__name__}: {error}",
                )
                await give_back(last)
            now = time.perf_counter()
            for message in covered:
                each = results[id(message)]
                result = each.item.outcome
                assert isinstance(result, Result)
                self._observe(message, result, settled_of(result), now - each.started)
                merged.add(id(message))
        return merged

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
            await self._settle(message, result, started)
        except Exception as error:  # nothing settled: hand it back
            log.warning(
                "fanout.settle_failed",
                message_id=message.message_id,
                error=f"{type(error).__name__}: {error}",
            )
            if result is None:
                await give_back(message)
        finally:
            self._leave(message)

    async def _settle(
        self, message: AbstractIncomingMessage, result: Result | BaseException, started: float
    ) -> None:
        """Settle, count and log; never raises."""
        try:
            settled = await settle(message, result, self.paths)
            self._observe(message, result, settled, time.perf_counter() - started)
        except AckFailed as failed:
            # Done, whatever became of the ack: the redelivered copy will only count as a
            # duplicate, so count what was done now or never.
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

    def _leave(self, message: AbstractIncomingMessage) -> None:
        self._open_tags.discard(message)
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
