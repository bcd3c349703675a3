"""Pure tests of Soketi request signing, request planning and response classification."""

from __future__ import annotations

import hashlib
import hmac
from types import SimpleNamespace
from urllib.parse import parse_qsl

import orjson
import pytest
from pusher.http import Request

from handlers.model import Delivery
from worker.errors import (
    Misconfigured,
    PayloadTooLarge,
    RejectedBySoketi,
    SoketiUnavailable,
)
from worker.soketi.api import Credentials, Limits, classify_response, plan_requests, sign_request

CREDS = Credentials(app_id="4242", key="app-key", secret="app-secret")


def test_signature_matches_the_pusher_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our signature equals the one pusher-http-python computes for the same request and time."""
    monkeypatch.setattr("time.time", lambda: 1_700_000_000)
    client = SimpleNamespace(key="app-key", secret="app-secret")
    reference = Request(client, "POST", "/apps/4242/events", {"name": "x"})
    ours = sign_request(CREDS, "POST", "/apps/4242/events", reference.body, timestamp=1_700_000_000)
    assert dict(parse_qsl(ours.query)) == reference.query_params


def test_signature_fixed_vector() -> None:
    """A fixed request signs to a fixed HMAC-SHA256, so a change in signing cannot go unnoticed."""
    request = sign_request(CREDS, "GET", "/apps/4242/channels", b"", timestamp=1_600_000_000)
    params = (
        "auth_key=app-key&auth_timestamp=1600000000&auth_version=1.0"
        "&body_md5=d41d8cd98f00b204e9800998ecf8427e"
    )
    expected = hmac.new(
        b"app-secret", f"GET\n/apps/4242/channels\n{params}".encode(), hashlib.sha256
    ).hexdigest()
    assert expected == "65b0eeaf0e47c0080d798e3dbe8d8024275c5c6a939855e32af09eddc2ef7f11"
    assert request.query == f"{params}&auth_signature={expected}"
    assert "app-secret" not in request.query


def _deliveries(*items: tuple[str, str, dict[str, object]]) -> list[Delivery]:
    return [Delivery(channel, event, payload) for channel, event, payload in items]


def test_same_payload_to_many_channels_is_one_events_call() -> None:
    """Identical event and payload on four channels become one /events call with four channels."""
    payload = {"orderId": "o1", "eventId": "e1"}
    deliveries = _deliveries(*[(f"private-user-{i}", "order-update", payload) for i in range(4)])
    [planned] = plan_requests(deliveries, "1.2", Limits())
    decoded = orjson.loads(planned.body)
    assert planned.endpoint == "events"
    assert planned.triggers == 4
    assert decoded["channels"] == [f"private-user-{i}" for i in range(4)]
    assert decoded["socket_id"] == "1.2"
    assert orjson.loads(decoded["data"]) == payload


def test_channel_lists_are_chunked_at_100() -> None:
    """250 channels with one payload need three /events calls of 100, 100 and 50 channels."""
    deliveries = _deliveries(*[(f"c-{i}", "e", {"a": 1}) for i in range(250)])
    plan = plan_requests(deliveries, None, Limits())
    assert [len(orjson.loads(p.body)["channels"]) for p in plan] == [100, 100, 50]
    assert [p.triggers for p in plan] == [100, 100, 50]
    assert all("socket_id" not in orjson.loads(p.body) for p in plan)


def test_different_payloads_go_out_as_batches_of_ten() -> None:
    """23 distinct payloads become batch_events calls of 10, 10 and 3 entries."""
    deliveries = _deliveries(*[(f"private-seller-s{i}", "new-order", {"n": i}) for i in range(23)])
    plan = plan_requests(deliveries, "9.9", Limits())
    assert [p.endpoint for p in plan] == ["batch_events"] * 3
    batches = [orjson.loads(p.body)["batch"] for p in plan]
    assert [len(b) for b in batches] == [10, 10, 3]
    assert all(entry["socket_id"] == "9.9" for b in batches for entry in b)


def test_size_is_measured_in_utf8_bytes() -> None:
    """A Hindi payload under the byte limit passes; one byte over the limit is refused."""
    hindi = "नमस्ते दुनिया " * 300  # ~ 11 KB of UTF-8, far above sys.getsizeof-style limits
    plan = plan_requests(_deliveries(("c", "new-message", {"content": hindi})), None, Limits())
    assert orjson.loads(orjson.loads(plan[0].body)["data"])["content"] == hindi
    size = len(orjson.dumps({"content": hindi}))
    with pytest.raises(PayloadTooLarge):
        plan_requests(
            _deliveries(("c", "e", {"content": hindi})), None, Limits(max_payload_bytes=size - 1)
        )


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b"{}", None),
        (200, b'{"ok":true}', None),
        (200, b'{"error":"The received data is incorrect","code":400}', RejectedBySoketi),
        (400, b'{"error":"Cannot batch-send more than 10","code":400}', RejectedBySoketi),
        (413, b'{"error":"too big","code":413}', PayloadTooLarge),
        (401, b'{"error":"Unauthorized","code":401}', Misconfigured),
        (200, b'{"error":"Unauthorized","code":401}', Misconfigured),
        (429, b'{"error":"Too many requests.","code":429}', SoketiUnavailable),
        (500, b"oops", SoketiUnavailable),
        (503, b"", SoketiUnavailable),
        (404, b"", RejectedBySoketi),
    ],
)
def test_response_classification(status: int, body: bytes, error: type[Exception] | None) -> None:
    """The body decides, not the status alone: a 200 carrying an error is an error."""
    if error is None:
        classify_response(status, body)
    else:
        with pytest.raises(error):
            classify_response(status, body)
