"""Consuming: one callback per message; ``settle`` is the only place a message is settled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from schemas import EVENT_TYPES
from worker import broker
from worker.errors import FanoutError, InvalidMessage, Misconfigured, PermanentError, TransientError
from worker.metrics import Metrics
from worker.pipeline import Deps, Result, process

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
        await message.ack()
        return Settled(result.outcome, result.detail, result.event.type, result.event.id)
    error_type, error_id = _identity(result)
    attempts = broker.attempts_of(message) + 1
    if isinstance(result, Misconfigured):
        await message.nack(requeue=True)
        return Settled("requeued", result.reason, error_type, error_id)
    if isinstance(result, TransientError):
        first = broker.first_failed_at(message) or datetime.now(UTC)
        too_old = (datetime.now(UTC) - first).total_seconds() > paths.max_retry_age_s
        if attempts <= len(paths.retries) and not too_old:
            tier = paths.retries[attempts - 1]
            await broker.schedule_retry(
                tier, message, attempts=attempts, first_failed_at=first, error=str(result)
            )
            await message.ack()
            return Settled("retried", tier.name.rsplit(".", 1)[-1], error_type, error_id)
        reason, detail = "retries_exhausted", f"{result.reason}: {result}"
    elif isinstance(result, PermanentError):
        reason, detail = result.reason, str(result)
    else:
        reason, detail = "internal_error", f"{type(result).__name__}: {result}"
    await broker.dead_letter(
        paths.dead, message, reason=reason, error=detail[:500], attempts=attempts
    )
    await message.ack()
    return Settled("dead_lettered", reason, error_type, error_id)


def _identity(error: BaseException) -> tuple[str, str | None]:
    """The event type label and id an error carries (``invalid``/``unknown`` before parsing)."""
    if isinstance(error, FanoutError) and error.event_type in EVENT_TYPES:
        return str(error.event_type), error.event_id
    if isinstance(error, InvalidMessage) and error.reason == "unknown_type":
        return "unknown", None
    return "invalid", None


@dataclass
class Consumer:
    """The consume callback: process, settle, count and log each message; tracks in-flight work."""

    deps: Deps
    paths: SettlePaths
    metrics: Metrics
    on_misconfigured: Callable[[Misconfigured], None] = lambda error: None
    _in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet settled."""
        return self._in_flight

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Process and settle one message; never raises (an unsettled message is redelivered)."""
        started = time.perf_counter()
        self._enter()
        try:
            result: Result | BaseException
            try:
                result = await process(message.body, self.deps)
            except Exception as error:  # settle decides by the error's class
                result = error
            settled = await settle(message, result, self.paths)
            self._observe(message, result, settled, time.perf_counter() - started)
            if isinstance(result, Misconfigured):
                self.on_misconfigured(result)
        except Exception as error:  # e.g. the channel closed mid-settle
            log.warning(
                "fanout.settle_failed",
                message_id=message.message_id,
                error=f"{type(error).__name__}: {error}",
            )
        finally:
            self._leave()

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
