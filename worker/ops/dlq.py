"""The dead-letter toolkit behind ``python -m worker dlq``: list, show, replay, purge.

Every operation reads the DLQ with ``basic.get`` on one channel and never acks a message it
does not mean to remove: messages it only looked at return to the queue when the channel
closes (also if the command crashes). A replayed message is acked only after its republish
was confirmed by the broker and routed (``mandatory``), so nothing is lost in between.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

import worker.broker.messages as broker
from worker.broker.connections import connect
from worker.config import BrokerSettings


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message as an operator sees it."""

    id: str
    reason: str
    type: str | None
    error: str
    attempts: int
    first_failed_at: str | None
    routing_key: str
    headers: dict[str, Any]
    body: bytes

    def as_json(self) -> dict[str, Any]:
        """The contract's ``dlq list --json`` shape."""
        return {
            "id": self.id,
            "reason": self.reason,
            "type": self.type,
            "error": self.error,
            "attempts": self.attempts,
            "firstFailedAt": self.first_failed_at,
            "routingKey": self.routing_key,
        }

    def age_s(self, now: datetime) -> float | None:
        """Seconds since it first failed, when known."""
        if self.first_failed_at is None:
            return None
        try:
            first = datetime.fromisoformat(self.first_failed_at)
        except ValueError:
            return None
        return (now - (first if first.tzinfo else first.replace(tzinfo=UTC))).total_seconds()


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation applies to; empty means all (when ``everything``)."""

    ids: tuple[str, ...] = ()
    reason: str | None = None
    event_type: str | None = None
    min_age_s: float | None = None
    everything: bool = False

    def matches(self, letter: DeadLetter, now: datetime) -> bool:
        """True when ``letter`` is selected."""
        if self.ids and letter.id not in self.ids:
            return False
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.event_type is not None and letter.type != self.event_type:
            return False
        if self.min_age_s is not None:
            age = letter.age_s(now)
            if age is None or age < self.min_age_s:
                return False
        return True

    @property
    def is_empty(self) -> bool:
        """No filter at all and not ``--all``: refuse, so nothing is touched by accident."""
        return not (
            self.ids
            or self.reason
            or self.event_type
            or self.min_age_s is not None
            or self.everything
        )


def message_key(message_id: str | None, body: bytes) -> str:
    """A dead letter's ID: its ``message_id``, else the first 12 hex digits of SHA-256(body)."""
    return message_id or hashlib.sha256(body).hexdigest()[:12]


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """Read the ``fanout-*`` headers (or the broker's ``x-death``) of a dead letter."""
    headers = {k: _text(v) for k, v in (message.headers or {}).items()}
    reason = headers.get(broker.REASON)
    if not isinstance(reason, str):
        reason = "delivery_limit" if "x-death" in headers else "unknown"
    attempts = headers.get(broker.ATTEMPTS)
    return DeadLetter(
        id=message_key(message.message_id, message.body),
        reason=reason,
        type=_event_type(message.body),
        error=str(headers.get(broker.ERROR, "")),
        attempts=attempts if isinstance(attempts, int) else 0,
        first_failed_at=_str_or_none(headers.get(broker.FIRST_FAILED_AT)),
        routing_key=message.routing_key or "",
        headers=headers,
        body=message.body,
    )


@asynccontextmanager
async def browse(
    settings: BrokerSettings, limit: int = 100_000
) -> AsyncIterator[tuple[AbstractChannel, list[tuple[AbstractIncomingMessage, DeadLetter]]]]:
    """Take up to ``limit`` dead letters unacked; whatever is not acked returns on exit."""
    url = settings.rabbitmq_url.get_secret_value()
    connection = await connect(url, purpose="dlq", timeout_s=10)
    async with connection:
        # on_return_raises: an unroutable replay fails loudly instead of vanishing.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.get_queue(settings.dlq_name, ensure=True)
        taken: list[tuple[AbstractIncomingMessage, DeadLetter]] = []
        while len(taken) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            taken.append((message, describe(message)))
        yield channel, taken
        # Closing the channel returns every message we did not ack, in its place.


async def list_letters(settings: BrokerSettings, selection: Selection) -> list[DeadLetter]:
    """The selected dead letters, oldest first, without consuming any."""
    now = datetime.now(UTC)
    async with browse(settings) as (_, taken):
        return [letter for _, letter in taken if selection.matches(letter, now)]


@dataclass(frozen=True, slots=True)
class Handled:
    """What a replay or purge did: how many were selected, handled, and which failed."""

    selected: int
    done: int
    failed: tuple[str, ...] = ()


async def replay(
    settings: BrokerSettings,
    selection: Selection,
    *,
    dry_run: bool = False,
    rate_per_s: float | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Handled:
    """Send selected dead letters back to the worker's queue with attempts reset.

    They go through ``{WORKER_QUEUE}.return``, which routes to the worker's queue only, with
    their original routing key: other consumers of the events exchange do not see them twice.
    """
    now = datetime.now(UTC)
    async with browse(settings) as (channel, taken):
        chosen = [(m, letter) for m, letter in taken if selection.matches(letter, now)]
        if dry_run:
            return Handled(len(chosen), 0)
        back = await channel.get_exchange(f"{settings.worker_queue}.return", ensure=True)
        done, failed = 0, []
        started = time.monotonic()
        for message, letter in chosen:
            if rate_per_s:
                delay = started + done / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            # Attempts and reasons start afresh; the fact that Soketi already has the event
            # (fanout-pushed) stays, so the replay only records it.
            headers = {
                k: v
                for k, v in letter.headers.items()
                if not k.startswith("fanout-") or k in broker.KEPT_ON_REPLAY
            }
            headers["fanout-replayed-at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            try:
                await back.publish(
                    broker.copy_of(message, headers), routing_key=letter.routing_key, mandatory=True
                )
            except Exception:  # keep it in the DLQ and report it
                failed.append(letter.id)
                continue
            await message.ack()
            done += 1
            progress(done, len(chosen))
        return Handled(len(chosen), done, tuple(failed))


async def purge(settings: BrokerSettings, selection: Selection, *, confirmed: bool) -> Handled:
    """Remove selected dead letters; without ``confirmed`` only count them."""
    now = datetime.now(UTC)
    async with browse(settings) as (_, taken):
        chosen = [(m, letter) for m, letter in taken if selection.matches(letter, now)]
        if not confirmed:
            return Handled(len(chosen), 0)
        for message, _ in chosen:
            await message.ack()
        return Handled(len(chosen), len(chosen))


def operator() -> str:
    """Who runs the command, for the audit log line."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def table(letters: Sequence[DeadLetter], now: datetime) -> str:
    """A plain-text table of dead letters for a terminal."""
    rows = [("ID", "REASON", "TYPE", "AGE", "ATTEMPTS", "ERROR")]
    for letter in letters:
        age = letter.age_s(now)
        rows.append(
            (
                letter.id,
                letter.reason,
                letter.type or "-",
                "-" if age is None else _age(age),
                str(letter.attempts),
                letter.error[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    )


def parse_age(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d`` (or plain seconds) as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _event_type(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = parsed.get("type") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
