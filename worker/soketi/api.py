"""The Pusher HTTP API, pure: signing, payload encoding, request planning, answer reading.

Everything here is a function of its arguments (tested with fixed vectors); ``client``
sends what it builds. The ``pusher`` package's signing primitive is used, but not its
client: its size checks measure ``sys.getsizeof`` (which rejects a Hindi chat message far
below Soketi's limit) and its aiohttp backend opens a session per request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from pusher.signature import sign as pusher_sign

from handlers.model import Delivery
from worker.errors import (
    Misconfigured,
    PayloadTooLarge,
    RejectedBySoketi,
    SoketiUnavailable,
)

_T = TypeVar("_T")

MAX_CHANNELS_PER_EVENT = 100
MAX_EVENTS_PER_BATCH = 10


@dataclass(frozen=True, slots=True)
class Credentials:
    """A Pusher app's id, key and secret; the secret never appears in a repr."""

    app_id: str
    key: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A signed Pusher HTTP API request, ready to send."""

    method: str
    path: str
    query: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Limits:
    """Soketi's per-event limits (its defaults: 100 KB, 100 channels, batches of 10)."""

    max_payload_bytes: int = 100 * 1024
    max_channels: int = MAX_CHANNELS_PER_EVENT
    max_batch: int = MAX_EVENTS_PER_BATCH


def sign_request(
    creds: Credentials,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int,
    params: Mapping[str, str] | None = None,
) -> ApiRequest:
    """Sign a request the way the Pusher HTTP API (and Soketi) verifies it."""
    query = dict(params or {})
    query.update(
        auth_key=creds.key,
        auth_timestamp=str(timestamp),
        auth_version="1.0",
        body_md5=hashlib.md5(body).hexdigest(),  # the protocol mandates MD5
    )
    ordered = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    signature = pusher_sign(creds.secret, f"{method}\n{path}\n{ordered}")
    return ApiRequest(method, path, f"{ordered}&auth_signature={signature}", body)


def encode_payload(payload: Mapping[str, Any], limits: Limits) -> str:
    """Serialise a payload to the JSON string Pusher carries, refusing one Soketi would refuse."""
    data = orjson.dumps(payload)
    if len(data) > limits.max_payload_bytes:
        raise PayloadTooLarge(
            f"payload of {len(data)} bytes exceeds the {limits.max_payload_bytes}-byte limit"
        )
    return data.decode()


@dataclass(frozen=True, slots=True)
class Planned:
    """One API call: endpoint (``events`` or ``batch_events``), body, and Pusher events carried."""

    endpoint: str
    body: bytes
    triggers: int


def plan_requests(
    deliveries: Sequence[Delivery], socket_id: str | None, limits: Limits
) -> list[Planned]:
    """Turn one event's deliveries into API calls.

    Deliveries that share an event name and payload become one ``events`` call per 100
    channels; the rest go out as ``batch_events`` calls of at most ``max_batch`` entries.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for delivery in deliveries:
        data = encode_payload(delivery.payload, limits)
        channels = groups.setdefault((delivery.event, data), [])
        if delivery.channel not in channels:
            channels.append(delivery.channel)
    extra = {"socket_id": socket_id} if socket_id else {}
    requests: list[Planned] = []
    singles: list[dict[str, Any]] = []
    for (event, data), channels in groups.items():
        if len(channels) == 1:
            singles.append({"channel": channels[0], "name": event, "data": data, **extra})
            continue
        for chunk in _chunks(channels, limits.max_channels):
            body = {"name": event, "channels": chunk, "data": data, **extra}
            requests.append(Planned("events", orjson.dumps(body), len(chunk)))
    if len(singles) == 1:
        only = singles[0]
        body = {"name": only["name"], "channels": [only["channel"]], "data": only["data"], **extra}
        requests.append(Planned("events", orjson.dumps(body), 1))
    else:
        for batch in _chunks(singles, limits.max_batch):
            requests.append(Planned("batch_events", orjson.dumps({"batch": batch}), len(batch)))
    return requests


def batch_entries(
    deliveries: Sequence[Delivery], socket_id: str | None, limits: Limits
) -> list[dict[str, Any]]:
    """One ``batch_events`` entry per delivery, each payload size-checked."""
    extra = {"socket_id": socket_id} if socket_id else {}
    return [
        {"channel": d.channel, "name": d.event, "data": encode_payload(d.payload, limits), **extra}
        for d in deliveries
    ]


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def classify_response(status: int, body: bytes) -> None:
    """Raise the error a Soketi answer means; return quietly when it accepted the call.

    Soketi answers many errors with HTTP 200 and ``{"error": ..., "code": ...}``, so the
    body decides, not the status alone.
    """
    code = status
    detail = ""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed:
        reported = parsed.get("code")
        code = reported if isinstance(reported, int) else max(status, 400)
        detail = str(parsed["error"])
    elif status < 300:
        return
    else:
        detail = body[:200].decode("utf-8", "replace")
    message = f"Soketi answered {code}: {detail}".strip()
    if code in (401, 403):
        raise Misconfigured(f"{message} (check SOKETI_APP_ID/KEY/SECRET)")
    if code == 413:
        raise PayloadTooLarge(message)
    if code == 429 or code >= 500:
        raise SoketiUnavailable(message)
    raise RejectedBySoketi(message)
