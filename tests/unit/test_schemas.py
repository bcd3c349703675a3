"""Schemas: what ``parse_event`` accepts, what it refuses and with which reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    EPHEMERAL_TYPES,
    EVENT_TYPES,
    ID_PATTERN,
    EventRejected,
    MessageCreated,
    OrderCreated,
    SystemAlert,
    json_schemas,
    parse_event,
)

VALID_DATA: dict[str, dict[str, Any]] = {
    "message.created": {
        "messageId": "m1",
        "conversationId": "c1",
        "senderId": "u1",
        "senderType": "user",
        "recipientId": "s1",
        "recipientType": "seller",
        "content": "hello",
    },
    "typing.started": {"conversationId": "c1", "userId": "u1", "userType": "user"},
    "typing.stopped": {"conversationId": "c1", "userId": "s1", "userType": "seller"},
    "order.created": {
        "orderId": "o1",
        "customerId": "u1",
        "items": [{"productId": "p1", "shopId": "s1", "quantity": 2, "price": 10}],
        "totalPrice": 20,
    },
    "order.status_changed": {
        "orderId": "o1",
        "customerId": "u1",
        "shopId": "s1",
        "status": "shipped",
    },
    "payment.received": {
        "orderId": "o1",
        "paymentId": "pay1",
        "customerId": "u1",
        "shopIds": ["s1"],
        "amount": 20,
    },
    "product.stock_low": {"productId": "p1", "currentStock": 1, "threshold": 5},
    "product.approved": {"productId": "p1", "shopId": "s1"},
    "product.rejected": {"productId": "p1", "shopId": "s1", "reason": "blurry"},
    "user.registered": {"userId": "u1"},
    "seller.registered": {"shopId": "s1"},
    "system.alert": {"severity": "info", "title": "Hi", "message": "All good"},
    "presence.online": {"subjectId": "u1", "subjectType": "user"},
    "presence.offline": {"subjectId": "s1", "subjectType": "seller"},
}


def envelope(event_type: str = "order.created", **changes: Any) -> dict[str, Any]:
    """A valid envelope of ``event_type``, with top-level keys replaced by ``changes``."""
    return {
        "id": "01JDZ8Q1T5V6Y7W8X9A0B1C2D3",
        "type": event_type,
        "occurredAt": "2026-11-29T05:00:00.000Z",
        "data": VALID_DATA[event_type],
        **changes,
    }


def with_data(event_type: str, **changes: Any) -> dict[str, Any]:
    """A valid envelope whose ``data`` has keys replaced by ``changes`` (``None`` drops one)."""
    data = {**VALID_DATA[event_type], **changes}
    return envelope(event_type, data={k: v for k, v in data.items() if v is not None})


def rejected(body: bytes | dict[str, Any] | list[Any]) -> EventRejected:
    """The ``EventRejected`` that parsing ``body`` raises."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(EventRejected) as info:
        parse_event(raw)
    return info.value


def test_catalogue_types() -> None:
    """The parser knows exactly the contract's fourteen types; typing ones are ephemeral."""
    assert set(VALID_DATA) == EVENT_TYPES
    assert {"typing.started", "typing.stopped"} == EPHEMERAL_TYPES


@pytest.mark.parametrize("event_type", sorted(VALID_DATA))
def test_minimal_valid_event_of_every_type_parses(event_type: str) -> None:
    """An envelope with only the required fields of each type parses to that type."""
    event = parse_event(orjson.dumps(envelope(event_type)))
    assert event.type == event_type
    assert event.id == "01JDZ8Q1T5V6Y7W8X9A0B1C2D3"
    assert event.timestamp_ms == 1_795_928_400_000


BAD_IDS = ["", "a,b", "a/b", "a b", "a.b", "ünï", "x" * 65, "u1\n", 12345, None]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
def test_bad_envelope_id_is_an_invalid_event(bad_id: object) -> None:
    """An envelope id outside 1-64 chars of ``[A-Za-z0-9_-]`` is refused."""
    assert rejected(envelope(id=bad_id)).reason == "invalid_event"


@pytest.mark.parametrize("bad_id", [i for i in BAD_IDS if i is not None], ids=repr)
@pytest.mark.parametrize(
    ("event_type", "field"),
    [
        ("order.created", "customerId"),
        ("message.created", "conversationId"),
        ("message.created", "recipientId"),
        ("product.stock_low", "shopId"),
        ("presence.online", "subjectId"),
    ],
)
def test_bad_data_id_is_an_invalid_event(event_type: str, field: str, bad_id: object) -> None:
    """An id inside ``data`` with a separator, unicode or 65 chars cannot reach a channel name."""
    body = with_data(event_type, **{field: bad_id})
    assert rejected(body).reason == "invalid_event"


def test_id_of_64_chars_is_accepted() -> None:
    """The longest id the contract allows parses."""
    long_id = "A_-9" * 16
    assert parse_event(orjson.dumps(envelope(id=long_id))).id == long_id


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({k: v for k, v in envelope().items() if k != "id"}, "id"),
        ({k: v for k, v in envelope().items() if k != "occurredAt"}, "occurredAt"),
        ({k: v for k, v in envelope().items() if k != "data"}, "data"),
        (with_data("message.created", content=None), "data.content"),
        (with_data("order.created", items=None), "data.items"),
        (with_data("order.created", items=[]), "data.items"),
        (with_data("payment.received", shopIds=[]), "data.shopIds"),
        (with_data("system.alert", severity=None), "data.severity"),
        (with_data("product.stock_low", threshold=None), "data.threshold"),
        (
            with_data("order.created", items=[{"productId": "p1", "shopId": "s1", "price": 1}]),
            "data.items.0.quantity",
        ),
    ],
)
def test_missing_required_field_is_an_invalid_event(body: dict[str, Any], path: str) -> None:
    """A missing required field is refused, and the one-line error names its camelCase path."""
    error = rejected(body)
    assert error.reason == "invalid_event"
    assert str(error).startswith(f"invalid_event: {path}: ")


def item(**changes: Any) -> dict[str, Any]:
    """One order item with some fields replaced."""
    return {"productId": "p1", "shopId": "s1", "quantity": 1, "price": 1, **changes}


@pytest.mark.parametrize(
    "body",
    [
        with_data("order.created", items=[item(quantity="2")]),
        with_data("order.created", items=[item(quantity=2.0)]),
        with_data("order.created", items=[item(quantity=True)]),
        with_data("order.created", items=[item(quantity=0)]),
        with_data("order.created", items=[item(price=True)]),
        with_data("order.created", items=[item(price="10")]),
        with_data("order.created", items=[item(price=-0.01)]),
        with_data("order.created", items=[item()] * 1001),
        with_data("order.created", totalPrice=False),
        with_data("order.created", currency=""),
        with_data("payment.received", amount="20"),
        with_data("payment.received", shopIds=["s1"] * 101),
        with_data("payment.received", shopIds="s1"),
        with_data("message.created", senderType="admin"),
        with_data("message.created", kind="video"),
        with_data("message.created", type="video"),
        with_data("message.created", content="x" * 200_001),
        with_data("message.created", content=5),
        with_data("order.status_changed", status=""),
        with_data("order.status_changed", status="s" * 51),
        with_data("product.stock_low", currentStock=1.5),
        with_data("product.stock_low", threshold=-1),
        with_data("system.alert", severity="fatal"),
        with_data("system.alert", audience="everyone"),
        envelope(data=[]),
        envelope(data="order"),
        envelope(socketId="abc"),
        envelope(version=True),
        envelope(version=0),
    ],
)
def test_wrong_type_or_out_of_bounds_is_an_invalid_event(body: dict[str, Any]) -> None:
    """Strings for numbers, bools for numbers, bad enums and out-of-bound sizes are refused."""
    assert rejected(body).reason == "invalid_event"


@pytest.mark.parametrize(
    "occurred_at",
    ["2026-11-29T05:00:00", "2026-11-29T05:00:00.000", "2026-11-29", "yesterday", 1795928400, None],
    ids=repr,
)
def test_occurred_at_needs_an_iso_string_with_timezone(occurred_at: object) -> None:
    """``occurredAt`` without a timezone, or not a string at all, is refused."""
    assert rejected(envelope(occurredAt=occurred_at)).reason == "invalid_event"


def test_occurred_at_offset_is_honoured() -> None:
    """A non-UTC offset gives the same epoch milliseconds as the equivalent UTC time."""
    event = parse_event(orjson.dumps(envelope(occurredAt="2026-11-29T10:30:00.123+05:30")))
    assert event.timestamp_ms == 1_795_928_400_123


@pytest.mark.parametrize("event_type", ["order.cancelled", "", "ORDER.CREATED", "x" * 10_000])
def test_unknown_type_is_parked_not_invalid(event_type: str) -> None:
    """A string type outside the catalogue is ``unknown_type``, whatever the rest holds."""
    error = rejected({"type": event_type})
    assert error.reason == "unknown_type"


@pytest.mark.parametrize(
    "body",
    [{"id": "a"}, {"type": None}, {"type": 5}, {"type": ["order.created"]}],
    ids=repr,
)
def test_missing_or_non_string_type_is_an_invalid_event(body: dict[str, Any]) -> None:
    """Without a string ``type`` the message is not an event at all."""
    assert rejected(body).reason == "invalid_event"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"{'id': 1}", b"NaN", b"1e400", b"\xff\xfe{}", b'{"type": "\xc3"}'],
    ids=repr,
)
def test_undecodable_body_is_invalid_json(body: bytes) -> None:
    """Bodies that are not UTF-8 JSON are ``invalid_json``."""
    assert rejected(body).reason == "invalid_json"


@pytest.mark.parametrize("body", [b"[]", b'[{"type": "order.created"}]', b'"x"', b"1", b"null"])
def test_json_that_is_not_an_object_is_an_invalid_event(body: bytes) -> None:
    """Valid JSON that is not an object is ``invalid_event``, not ``invalid_json``."""
    error = rejected(body)
    assert error.reason == "invalid_event"
    assert "not an object" in str(error)


def test_optional_fields_take_their_defaults() -> None:
    """Omitted optional fields are filled with the contract's defaults or ``None``."""
    message = parse_event(orjson.dumps(envelope("message.created")))
    assert isinstance(message, MessageCreated)
    assert (message.data.type, message.data.attachment_url) == ("text", None)
    assert (message.socket_id, message.version, message.source, message.correlation_id) == (
        None,
        1,
        None,
        None,
    )
    alert = parse_event(orjson.dumps(envelope("system.alert")))
    assert isinstance(alert, SystemAlert)
    assert alert.data.audience == "admin"
    order = parse_event(orjson.dumps(envelope("order.created")))
    assert isinstance(order, OrderCreated)
    assert order.data.currency is None


def test_unknown_fields_are_ignored() -> None:
    """Fields the contract does not name, in the envelope or in data, are dropped."""
    body = envelope(
        "user.registered",
        extra="x",
        data={"userId": "u1", "password": "hunter2"},
        socketId="1234.5678",
        correlationId="req-1",
    )
    event = parse_event(orjson.dumps(body))
    assert event.data.model_dump(by_alias=True) == {"userId": "u1"}
    assert (event.socket_id, event.correlation_id) == ("1234.5678", "req-1")
    assert "extra" not in event.model_dump(by_alias=True)


def test_numbers_are_kept_as_given() -> None:
    """An integer price stays an int and a decimal one a float (no silent coercion)."""
    body = with_data("order.created", items=[item(price=10), item(price=10.5)], totalPrice=20.5)
    event = parse_event(orjson.dumps(body))
    assert isinstance(event, OrderCreated)
    prices = [i.price for i in event.data.items]
    assert prices == [10, 10.5]
    assert [type(p) for p in prices] == [int, float]


def test_rejection_message_is_one_short_line() -> None:
    """``str(EventRejected)`` stays on one line and quotes at most ~200 chars of input."""
    for body in [
        {"type": "evil\n" + "x" * 10_000},
        with_data("order.created", items=[item(quantity="9" * 5_000)] * 50),
        {**envelope(), "id": "y" * 10_000},
    ]:
        text = str(rejected(body))
        assert "\n" not in text
        assert len(text) <= 230


def test_json_schemas_cover_every_type_in_camel_case() -> None:
    """One JSON Schema per event type, of the whole envelope, with the wire's camelCase names."""
    schemas = json_schemas()
    assert set(schemas) == EVENT_TYPES
    for event_type, schema in schemas.items():
        assert schema["properties"]["type"]["const"] == event_type
        assert {"id", "type", "occurredAt", "data"} <= set(schema["required"])
        assert "socketId" in schema["properties"]
    order_data = schemas["order.created"]["$defs"]["OrderCreatedData"]
    assert {"orderId", "customerId", "items", "totalPrice"} == set(order_data["required"])


# --- properties --------------------------------------------------------------------------

ids = st.from_regex(ID_PATTERN, fullmatch=True)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
moments = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    offsets,
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@settings(deadline=None)
@given(event_id=ids, moment=moments, event_type=st.sampled_from(sorted(VALID_DATA)))
def test_valid_envelopes_round_trip(event_id: str, moment: datetime, event_type: str) -> None:
    """Any valid envelope parses back to its id, type, data and epoch-ms timestamp."""
    body = envelope(event_type, id=event_id, occurredAt=moment.isoformat())
    event = parse_event(orjson.dumps(body))
    assert (event.id, event.type) == (event_id, event_type)
    assert event.timestamp_ms == (moment - EPOCH) // timedelta(milliseconds=1)
    dumped = event.data.model_dump(by_alias=True, mode="json")
    assert {k: dumped[k] for k in VALID_DATA[event_type]} == VALID_DATA[event_type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def parses_or_rejects(body: bytes) -> None:
    """``parse_event`` either returns an event or raises ``EventRejected``, nothing else."""
    try:
        parse_event(body)
    except EventRejected as error:
        assert error.reason in {"invalid_json", "invalid_event", "unknown_type"}
        assert "\n" not in str(error)


@given(st.binary())
def test_arbitrary_bytes_only_ever_raise_event_rejected(body: bytes) -> None:
    """Random bytes never crash the parser with anything but ``EventRejected``."""
    parses_or_rejects(body)


@given(st.text())
def test_arbitrary_text_only_ever_raises_event_rejected(text: str) -> None:
    """Random text (including surrogates) never crashes the parser."""
    parses_or_rejects(text.encode("utf-8", "surrogatepass"))


@given(json_values)
def test_arbitrary_json_only_ever_raises_event_rejected(value: Any) -> None:
    """Any JSON value never crashes the parser with anything but ``EventRejected``."""
    parses_or_rejects(orjson.dumps(value))


@settings(deadline=None)
@given(
    event_type=st.sampled_from(sorted(VALID_DATA)),
    where=st.sampled_from(["envelope", "data"]),
    key=st.sampled_from(["id", "type", "occurredAt", "socketId", "data", "version"])
    | st.text(max_size=12),
    value=json_values,
)
def test_mutated_envelopes_only_ever_raise_event_rejected(
    event_type: str, where: str, key: str, value: Any
) -> None:
    """A valid envelope with any one field replaced by any JSON value parses or is rejected."""
    body = envelope(event_type)
    if where == "envelope":
        body[key] = value
    else:
        body["data"] = {**VALID_DATA[event_type], key: value}
    parses_or_rejects(orjson.dumps(body))
