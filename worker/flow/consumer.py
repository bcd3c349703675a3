"""Consuming: one callback per message; ``settle`` is the only place a message is settled."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

import worker.broker.topology as broker
from schemas import EVENT_TYPES
from worker.errors import (
    FanoutError,
    Interrupted,
    InvalidMessage,
    Misconfigured,
    PermanentError,
    TransientError,
)
from worker.events import peek
from worker.flow.circuit import Circuits
from worker.flow.lanes import Lanes, Turn
from worker.flow.pipeline import Deps, Result, process
from worker.metrics import Metrics

log = structlog.get_logger("fanout")


@dataclass(frozen=True, slots=True)
class Settled:
    """How a message was settled: the outcome label, a reason code, its event type label."""

    outcome: str
    reason: str = ""
    event_type: str = "invalid"
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class SettlePaths:
    """Where ``settle`` may send a message besides acking it."""

    dead: AbstractExchange
    retries: tuple[AbstractExchange, ...]
    max_retry_age_s: float = 24 * 3600
    #: Messages recently dead-lettered (confirmed), oldest first: an ack is fire-and-forget, so
    #: one lost with the connection shows only as a redelivery of a message parked already.
    parked: OrderedDict[bytes, None] = field(default_factory=OrderedDict)


async def settle(
    message: AbstractIncomingMessage,
    result: Result | BaseException,
    paths: SettlePaths,
) -> Settled:
    """Ack, retry later, dead-letter or requeue ``message`` according to what processing gave.

    A republish (retry tier or dead-letter) is confirmed by the broker before the original is
    acked, so a crash in between repeats a message rather than losing it.
    """
    if isinstance(result, Result):
        return await _ack(
            message, Settled(result.outcome, result.detail, result.event.type, result.event.id)
        )
    error_type, error_id = _identity(result)
    attempts = broker.attempts_of(message) + 1
    if isinstance(result, Misconfigured | Interrupted):
        # Not the message's fault: back to the queue untouched, for this or another worker.
        await _bounded(message.nack(requeue=True))
        return Settled("requeued", result.reason, error_type, error_id)
    if isinstance(result, TransientError):
        first = broker.first_failed_at(message) or datetime.now(UTC)
        too_old = (datetime.now(UTC) - first).total_seconds() > paths.max_retry_age_s
        if attempts <= len(paths.retries) and not too_old:
            tier = paths.retries[attempts - 1]
            await _bounded(
                broker.schedule_retry(
                    tier, message, attempts=attempts, first_failed_at=first, error=str(result)
                )
            )
            retried = Settled("retried", tier.name.rsplit(".", 1)[-1], error_type, error_id)
            return await _ack(message, retried)
        reason, detail = "retries_exhausted", f"{result.reason}: {result}"
    elif isinstance(result, PermanentError):
        reason, detail = result.reason, str(result)
    else:
        reason, detail = "internal_error", f"{type(result).__name__}: {result}"
    key = _parked_key(message)
    if key in paths.parked and message.redelivered:
        # Only our ack was lost: the DLQ holds it already. Counted as a duplicate, not as
        # a second dead-lettering.
        return await _ack(message, Settled("duplicate", "already_parked", error_type, error_id))
    await _bounded(
        broker.dead_letter(
            paths.dead, message, reason=reason, error=detail[:500], attempts=attempts
        )
    )
    # Remembered whether or not the ack below seems to go through: basic.ack has no reply, and
    # the broker redelivers a message whose ack died in a socket buffer. The redelivery is then
    # only acked, and the DLQ keeps one copy.
    paths.parked[key] = None
    paths.parked.move_to_end(key)
    while len(paths.parked) > PARKED_LIMIT:
        paths.parked.popitem(last=False)
    return await _ack(message, Settled("dead_lettered", reason, error_type, error_id))


class AckFailed(Exception):
    """The work is done (``settled`` says what) but the ack did not go out; the broker will
    redeliver the message, and that copy is skipped as a duplicate."""

    def __init__(self, settled: Settled, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.settled = settled


async def _ack(message: AbstractIncomingMessage, settled: Settled) -> Settled:
    """Ack ``message`` and return ``settled``; ``AckFailed`` when the ack fails."""
    try:
        await _bounded(message.ack())
    except Exception as error:
        raise AckFailed(settled, error) from error
    return settled


#: How many recently dead-lettered messages ``SettlePaths.parked`` remembers, oldest out.
PARKED_LIMIT = 10_000


def _parked_key(message: AbstractIncomingMessage) -> bytes:
    """What identifies a message across its redeliveries: routing key, publisher's message id
    and timestamp, and body. Two identical messages, the second of them redelivered, look
    the same; the second is then not parked again (documented in docs/architecture.md)."""
    digest = hashlib.sha256(message.body)
    for part in (message.routing_key, message.message_id, message.timestamp):
        digest.update(b"\0" + str(part or "").encode())
    return digest.digest()


#: A broker operation in settle that takes longer is abandoned: the connection under it is
#: gone (aiormq can wait forever on a connection reset mid-write), and the broker redelivers
#: the unsettled message once the worker reconnects.
SETTLE_TIMEOUT_S = 5.0


async def _bounded(operation: Awaitable[object]) -> None:
    async with asyncio.timeout(SETTLE_TIMEOUT_S):  # no extra task, unlike wait_for
        await operation


#: Backoff between attempts to settle a message whose settling failed.
SETTLE_RETRY_INITIAL_S = 0.25
SETTLE_RETRY_MAX_S = 5.0


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    channel = getattr(message, "channel", None)
    return bool(getattr(channel, "is_closed", False))


async def _give_back(message: AbstractIncomingMessage) -> None:
    """Return a message to the queue (nack with requeue), so it is tried again.

    When its channel is gone, this fails quietly and the broker requeues the message itself.
    """
    if message.processed:  # an ack or nack was already sent; the broker decides
        return
    try:
        await _bounded(message.nack(requeue=True))
    except Exception as error:  # the channel is gone: the broker requeues on its own
        log.debug("fanout.give_back_failed", error=f"{type(error).__name__}: {error}")


def _identity(error: BaseException) -> tuple[str, str | None]:
    """The event type label and id an error carries (``invalid``/``unknown`` before parsing)."""
    if isinstance(error, FanoutError) and error.event_type in EVENT_TYPES:
        return str(error.event_type), error.event_id
    if isinstance(error, InvalidMessage) and error.reason == "unknown_type":
        return "unknown", None
    return "invalid", None


@dataclass
class Consumer:
    """The consume callback: process, settle, count and log each message; tracks in-flight work.

    While a failure's circuit is open the message is held, not retried through the broker:
    it is processed again once the downstream is back, or returned to the queue on shutdown.
    """

    deps: Deps
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
        own_id = self.deps.in_flight.hold(event_id) if event_id else contextlib.nullcontext()
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
            await _give_back(message)
        except Exception as error:  # e.g. the republishing connection failed mid-settle
            log.warning(
                "fanout.settle_failed",
                message_id=message.message_id,
                error=f"{type(error).__name__}: {error}",
            )
            if result is None:  # failed before settling: nothing was done, hand it back
                await _give_back(message)
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
            if _channel_closed(message):
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
                await _give_back(message)
                return
            except Exception as error:
                log.info("fanout.settle_retry_failed", error=f"{type(error).__name__}: {error}")
                continue
            self._observe(message, result, settled, time.perf_counter() - started)
            return
        await _give_back(message)

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
        while True:
            if not await self._gate():
                interrupted = Interrupted("worker stopping while a downstream was unavailable")
                if held is not None:  # it parsed: count the requeue under its type, not "invalid"
                    interrupted.event_type, interrupted.event_id = held.event_type, held.event_id
                return interrupted
            try:
                result = await process(message.body, self.deps, turn, maybe_recorded=maybe_recorded)
            except Exception as error:  # settle decides by the error's class
                maybe_recorded = True
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
        closed = asyncio.ensure_future(self.circuits.wait_may_process())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            stopping.cancel()
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
        self.metrics.messages.labels(settled.event_type, settled.outcome, settled.reason).inc()
        self.metrics.processing_seconds.labels(settled.event_type).observe(duration_s)
        if isinstance(result, Result) and result.outcome == "delivered":
            self.metrics.event_age_seconds.observe(max(result.age_s, 0.0))
        if settled.outcome == "retried":
            self.metrics.retries_scheduled.labels(settled.reason).inc()
        fields = {
            "event_id": settled.event_id or message.message_id,
            "event_type": settled.event_type,
            "outcome": settled.outcome,
            "attempts": broker.attempts_of(message) + 1,
            "duration_ms": round(duration_s * 1000, 2),
            "routing_key": message.routing_key,
        }
        if isinstance(result, Result):
            fields["correlation_id"] = result.event.correlation_id
        if settled.reason:
            fields["reason"] = settled.reason
        if isinstance(result, BaseException):
            fields["error"] = str(result)[:300]
        level = "info" if settled.outcome in ("delivered", "duplicate", "dropped") else "warning"
        getattr(log, level)("fanout.message_settled", **fields)
