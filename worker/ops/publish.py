"""Publishing one validated envelope as the backend would: persistent, confirmed, ids set."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import orjson

from schemas import Event
from worker.broker.topology import LANE
from worker.config import BrokerSettings
from worker.errors import InvalidMessage
from worker.flow.lanes import lane_key
from worker.flow.pipeline import parse


class UsageError(ValueError):
    """The command line does not describe one valid envelope."""


def envelope_from_args(file: str | None, event_type: str | None, data: str | None) -> Event:
    """Build and validate the envelope from a file, stdin or ``--type``/``--data``."""
    if file is not None and event_type is not None:
        raise UsageError("give either FILE or --type/--data, not both")
    if file is not None:
        raw = sys.stdin.buffer.read() if file == "-" else _read(Path(file))
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise UsageError(f"{file}: not JSON ({error})") from error
        if not isinstance(envelope, dict):
            raise UsageError(f"{file}: the envelope must be a JSON object")
    elif event_type is not None:
        try:
            payload = orjson.loads(data or "{}")
        except orjson.JSONDecodeError as error:
            raise UsageError(f"--data is not JSON ({error})") from error
        envelope = {"type": event_type, "data": payload}
    else:
        raise UsageError("give FILE, - (stdin), or --type with --data")
    return validate(complete(envelope))


def complete(envelope: dict[str, Any]) -> dict[str, Any]:
    """Fill ``id`` and ``occurredAt`` when absent."""
    filled = dict(envelope)
    filled.setdefault("id", uuid.uuid4().hex)
    filled.setdefault("occurredAt", datetime.now(UTC).isoformat(timespec="milliseconds"))
    return filled


def validate(envelope: dict[str, Any]) -> Event:
    """Parse the envelope exactly as the worker will, raising ``UsageError`` with the reason."""
    try:
        return parse(orjson.dumps(envelope))
    except InvalidMessage as error:
        raise UsageError(f"{error.reason}: {error}") from error


def message_of(event: Event) -> aio_pika.Message:
    """The AMQP message the backend publishes for ``event`` (contract section 2)."""
    body = orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))
    lane = lane_key(body)
    return aio_pika.Message(
        body=body,
        # Sharded workers hash on it to keep a conversation in one shard (and so in order).
        headers={LANE: lane} if lane is not None else None,
        content_type="application/json",
        message_id=event.id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def publish(settings: BrokerSettings, event: Event) -> Event:
    """Publish ``event`` to the events exchange with a publisher confirm."""
    connection = await aio_pika.connect(settings.rabbitmq_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(message_of(event), routing_key=event.type)
    return event


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from error
