"""The event catalogue (CONTRACT section 3): one discriminated union, parsed once per message."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from schemas.accounts import PresenceOffline, PresenceOnline, SellerRegistered, UserRegistered
from schemas.base import EnvelopeFields
from schemas.messages import MessageCreated, TypingStarted, TypingStopped
from schemas.orders import OrderCreated, OrderStatusChanged, PaymentReceived
from schemas.products import ProductApproved, ProductRejected, ProductStockLow
from schemas.system import SystemAlert

#: Any catalogue event; ``type`` picks the model.
Event = Annotated[
    MessageCreated
    | TypingStarted
    | TypingStopped
    | OrderCreated
    | OrderStatusChanged
    | PaymentReceived
    | ProductStockLow
    | ProductApproved
    | ProductRejected
    | UserRegistered
    | SellerRegistered
    | SystemAlert
    | PresenceOnline
    | PresenceOffline,
    Field(discriminator="type"),
]

EVENT_MODELS: tuple[type[EnvelopeFields], ...] = get_args(get_args(Event)[0])


def _type_of(model: type[EnvelopeFields]) -> str:
    (value,) = get_args(model.model_fields["type"].annotation)
    return str(value)


#: Every routing key the worker knows, model by model.
MODELS_BY_TYPE: dict[str, type[EnvelopeFields]] = {_type_of(m): m for m in EVENT_MODELS}
EVENT_TYPES: frozenset[str] = frozenset(MODELS_BY_TYPE)

#: Events that are never retried nor kept: stale ones are dropped (CONTRACT section 3).
EPHEMERAL_TYPES: frozenset[str] = frozenset({"typing.started", "typing.stopped"})

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

Reason = Literal["invalid_json", "invalid_event", "unknown_type"]
_MAX_DETAIL = 200


class EventRejected(ValueError):
    """A message body that is not a catalogue event; ``reason`` is the dead-letter code.

    ``str()`` is one line for humans, quoting at most ~200 characters of the input.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason: Reason = reason
        self.detail = _one_line(detail)
        super().__init__(f"{reason}: {self.detail}")


def parse_event(body: bytes) -> Event:
    """Decode and validate one message body, or raise ``EventRejected`` saying why not."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise EventRejected("invalid_json", str(error)) from None
    if not isinstance(raw, dict):
        raise EventRejected("invalid_event", f"the body is a JSON {_json_kind(raw)}, not an object")
    event_type = raw.get("type")
    if not isinstance(event_type, str):
        raise EventRejected("invalid_event", "type: must be a string")
    if event_type not in EVENT_TYPES:
        raise EventRejected("unknown_type", f"unknown event type {event_type!r}")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as error:
        raise EventRejected("invalid_event", _summary(error)) from None


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema (camelCase, as published) of the whole envelope of each event type."""
    return {
        event_type: model.model_json_schema(by_alias=True)
        for event_type, model in sorted(MODELS_BY_TYPE.items())
    }


def _summary(error: ValidationError) -> str:
    """The first problem as ``data.items.0.quantity: Input should be ...``, and how many more."""
    problems = error.errors(include_url=False, include_input=False, include_context=False)
    first = problems[0]
    # The first location is the union tag, i.e. the type, already known to the reader.
    path = ".".join(str(part) for part in first["loc"][1:]) or "(envelope)"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{path}: {first['msg']}{more}"


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_DETAIL else flat[: _MAX_DETAIL - 1] + "…"


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"
