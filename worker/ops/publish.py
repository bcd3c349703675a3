"""Publishing one validated envelope as the backend would: persistent, confirmed, ids set."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas import Event
from worker.broker.connections import publishing
from worker.config import BrokerSettings
from worker.errors import InvalidMessage
from worker.events import message_of, parse


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


async def publish(settings: BrokerSettings, event: Event) -> Event:
    """Publish ``event`` to the events exchange with a publisher confirm."""
    url = settings.rabbitmq_url.get_secret_value()
    async with publishing(url, settings.events_exchange, purpose="publish") as exchange:
        await exchange.publish(message_of(event), routing_key=event.type)
    return event


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from error
