"""Settling: the only place a message is acked, retried later, dead-lettered or requeued.

``settle`` is driven by what processing gave: a ``Result`` is acked; the exception class
(``worker.errors``) decides the rest. A republish (retry tier or dead-letter) is confirmed
by the broker before the original is acked, so a crash in between repeats a message rather
than losing it. Every broker operation here is bounded (``SETTLE_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

import worker.broker.messages as broker
from schemas import EVENT_TYPES
from worker.errors import (
    FanoutError,
    Interrupted,
    InvalidMessage,
    Misconfigured,
    PermanentError,
    TransientError,
)
from worker.flow.pipeline import Result

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
        return await _ack(message, settled_of(result))
    error_type, error_id = _identity(result)
    attempts = broker.attempts_of(message) + 1
    # Soketi accepted the event but its mark failed: the copy says so (``fanout-pushed``),
    # so whichever worker gets it next only marks it. A plain requeue would lose that.
    pushed = result.pushed if isinstance(result, FanoutError) else None
    if isinstance(result, Interrupted) and pushed is not None and paths.retries:
        first = broker.first_failed_at(message) or datetime.now(UTC)
        tier = paths.retries[0]  # not counted as an attempt: the worker stopped, not the event
        await _bounded(
            broker.schedule_retry(
                tier,
                message,
                attempts=attempts - 1,
                first_failed_at=first,
                error=str(result),
                pushed=pushed,
            )
        )
        retried = Settled("retried", tier.name.rsplit(".", 1)[-1], error_type, error_id)
        return await _ack(message, retried)
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
                    tier,
                    message,
                    attempts=attempts,
                    first_failed_at=first,
                    error=str(result),
                    pushed=pushed,
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
            paths.dead,
            message,
            reason=reason,
            error=detail[:500],
            attempts=attempts,
            pushed=pushed,
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


def settled_of(result: Result) -> Settled:
    """How a message whose processing gave ``result`` is settled: acked."""
    return Settled(result.outcome, result.detail, result.event.type, result.event.id)


async def ack_through(message: AbstractIncomingMessage) -> None:
    """Ack ``message`` and every unacked delivery before it on its channel (``multiple``).

    Only for a run ``worker.flow.acks.OpenTags.plan`` found: all of them finished, each
    with a ``Result`` (so ``settled_of`` says how each was settled)."""
    await _bounded(message.ack(multiple=True))


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


def channel_closed(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is closed (the broker requeues it then)."""
    try:
        channel = getattr(message, "channel", None)
    except Exception:  # aio-pika raises ChannelInvalidStateError for a closed channel
        return True
    return bool(getattr(channel, "is_closed", False))


async def give_back(message: AbstractIncomingMessage) -> None:
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
