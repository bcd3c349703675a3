"""The worker's own messages to the broker: retry-tier and dead-letter copies, their headers.

A copy keeps the original's body, ids and routing key, and carries the contract's
``fanout-*`` headers: the attempt count, when the message first failed, the last error, and
(on the dead-letter path) the reason. Nothing here settles the original: ``settle`` acks it
once the broker has confirmed the copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, DeliveryMode

REASON = "fanout-reason"
ERROR = "fanout-error"
ATTEMPTS = "fanout-attempts"
FIRST_FAILED_AT = "fanout-first-failed-at"
#: Soketi accepted this message's event (``PUSHED`` deliveries, ``PUSHED_AGE_MS`` after it
#: occurred) but the pushed mark was not written: a worker receiving it only marks it.
PUSHED = "fanout-pushed"
PUSHED_AGE_MS = "fanout-pushed-age-ms"
#: ``fanout-*`` headers a DLQ replay must keep: a replay of a pushed event only marks it.
KEPT_ON_REPLAY = frozenset({PUSHED, PUSHED_AGE_MS})


def dead_letter_headers(
    original: Mapping[str, Any],
    *,
    reason: str,
    error: str,
    attempts: int,
    first_failed_at: datetime | None = None,
    pushed: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The original headers plus the contract's ``fanout-*`` dead-letter headers."""
    first = original.get(FIRST_FAILED_AT)
    if not isinstance(first, str):
        first = (first_failed_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return {
        **original,
        REASON: reason,
        ERROR: error,
        ATTEMPTS: attempts,
        FIRST_FAILED_AT: first,
        **pushed_headers(pushed),
    }


def pushed_headers(pushed: tuple[int, float] | None) -> dict[str, int]:
    """The ``fanout-pushed`` headers for ``(deliveries, age_s)``; none for ``None``."""
    if pushed is None:
        return {}
    deliveries, age_s = pushed
    return {PUSHED: int(deliveries), PUSHED_AGE_MS: max(0, round(age_s * 1000))}


def pushed_of(message: AbstractIncomingMessage) -> tuple[int, float] | None:
    """``(deliveries, age_s)`` if the message says Soketi already accepted its event."""
    headers = message.headers or {}
    deliveries = headers.get(PUSHED)
    if isinstance(deliveries, bool) or not isinstance(deliveries, int) or deliveries < 0:
        return None
    age_ms = headers.get(PUSHED_AGE_MS, 0)
    if isinstance(age_ms, bool) or not isinstance(age_ms, int | float):
        age_ms = 0
    return deliveries, max(0.0, age_ms / 1000)


def attempts_of(message: AbstractIncomingMessage) -> int:
    """How many times this message has been tried before (our own header, not ``x-death``)."""
    value = (message.headers or {}).get(ATTEMPTS, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def copy_of(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> aio_pika.Message:
    """A persistent copy of ``message`` (body, ids, type) with ``headers``."""
    return aio_pika.Message(
        body=message.body,
        headers=dict(headers),
        content_type=message.content_type or "application/json",
        content_encoding=message.content_encoding,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        delivery_mode=DeliveryMode.PERSISTENT,
    )


async def schedule_retry(
    exchange: AbstractExchange,
    message: AbstractIncomingMessage,
    *,
    attempts: int,
    first_failed_at: datetime,
    error: str,
    pushed: tuple[int, float] | None = None,
) -> None:
    """Publish ``message`` (confirmed) to a delay tier with its attempt count (and, when
    Soketi already accepted it, ``fanout-pushed``); do not settle it."""
    headers = dict(message.headers or {})
    headers.setdefault(FIRST_FAILED_AT, first_failed_at.isoformat(timespec="milliseconds"))
    headers[ATTEMPTS] = attempts
    headers[ERROR] = error
    headers.update(pushed_headers(pushed))
    await exchange.publish(copy_of(message, headers), routing_key=message.routing_key or "")


def first_failed_at(message: AbstractIncomingMessage) -> datetime | None:
    """When this message first failed, from our header, if it has failed before."""
    value = (message.headers or {}).get(FIRST_FAILED_AT)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def dead_letter(
    exchange: AbstractExchange,
    message: AbstractIncomingMessage,
    *,
    reason: str,
    error: str,
    attempts: int,
    pushed: tuple[int, float] | None = None,
) -> None:
    """Publish ``message`` to the dead-letter path (confirmed) with its reason; do not settle it.

    A message whose event Soketi accepted keeps (or gains) ``fanout-pushed``, so a replay of
    it only marks it pushed."""
    headers = dead_letter_headers(
        dict(message.headers or {}), reason=reason, error=error, attempts=attempts, pushed=pushed
    )
    await exchange.publish(copy_of(message, headers), routing_key=message.routing_key or "")
