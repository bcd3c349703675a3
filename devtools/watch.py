"""A Pusher-protocol WebSocket subscriber that sees what a browser would see.

Used by the demo's terminal view, the integration tests and the benchmarks. It speaks
protocol 7 over aiohttp's WebSocket client: it reads ``pusher:connection_established``,
subscribes (signing ``private-``/``presence-`` channels through an authorizer), answers
``pusher:ping``, and records every channel event it receives as a :class:`Received`.

::

    async with PusherSubscriber() as sub:
        await sub.connect("127.0.0.1", 6001, key)
        await sub.subscribe("private-admin", lambda sid, ch: sign_channel(key, secret, sid, ch))
        await sub.wait_for(lambda got: len(got) >= 1, timeout_s=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

Authorizer = Callable[[str, str], Awaitable[str] | str]
"""``(socket_id, channel) -> auth string`` ("key:signature"), sync or async."""

PROTOCOL_VERSION = 7
_AUTH_PREFIXES = ("private-", "presence-")
_SUMMARY_LIMIT = 20


@dataclass(frozen=True, slots=True)
class Received:
    """One event received on a subscribed channel, its ``data`` JSON-decoded when possible."""

    channel: str
    event: str
    data: Any
    received_at_monotonic: float


class SubscriptionError(Exception):
    """Soketi refused a subscription (``pusher:subscription_error`` or ``pusher:error``)."""


def sign_channel(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """Return the Pusher auth string ``key:hex(hmac_sha256(secret, "socket_id:channel"))``."""
    to_sign = f"{socket_id}:{channel}"
    if channel_data is not None:  # presence channels also sign their member data
        to_sign += f":{channel_data}"
    digest = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{key}:{digest}"


class PusherSubscriber:
    """One WebSocket connection to a Pusher-protocol server, recording channel events."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._socket_id: str | None = None
        self._received: list[Received] = []
        self._changed = asyncio.Condition()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._closed_reason: str | None = None

    @property
    def socket_id(self) -> str:
        """The socket id Soketi assigned to this connection."""
        if self._socket_id is None:
            raise RuntimeError("not connected")
        return self._socket_id

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and self._closed_reason is None

    async def connect(
        self, host: str, port: int, key: str, *, tls: bool = False, timeout_s: float = 10.0
    ) -> Self:
        """Open the WebSocket and wait for ``pusher:connection_established``."""
        if self._ws is not None:
            raise RuntimeError("already connected")
        scheme = "wss" if tls else "ws"
        url = (
            f"{scheme}://{host}:{port}/app/{key}"
            f"?protocol={PROTOCOL_VERSION}&client=bazaar-watch&version=1"
        )
        self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(timeout_s):
                self._ws = await self._session.ws_connect(url, autoping=True)
                first = await self._ws.receive()
        except BaseException:
            await self.close()
            raise
        message = _decode(first)
        if message is None or message.get("event") != "pusher:connection_established":
            await self.close()
            raise ConnectionError(f"expected pusher:connection_established, got {first.data!r}")
        self._socket_id = str(_json_or_raw(message.get("data"))["socket_id"])
        self._reader = asyncio.create_task(self._read(), name=f"pusher-reader-{self._socket_id}")
        return self

    async def subscribe(
        self,
        channel: str,
        authorizer: Authorizer | None = None,
        *,
        channel_data: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """Subscribe to ``channel`` and wait for ``pusher_internal:subscription_succeeded``."""
        ws = self._require_ws()
        payload: dict[str, Any] = {"channel": channel}
        if channel.startswith(_AUTH_PREFIXES):
            if authorizer is None:
                raise ValueError(f"{channel} needs an authorizer")
            auth = authorizer(self.socket_id, channel)
            payload["auth"] = await auth if inspect.isawaitable(auth) else auth
            if channel_data is not None:
                payload["channel_data"] = channel_data
        done = asyncio.get_running_loop().create_future()
        self._pending[channel] = done
        try:
            await ws.send_json({"event": "pusher:subscribe", "data": payload})
            async with asyncio.timeout(timeout_s):
                await done
        finally:
            self._pending.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel``; events already received are kept."""
        await self._require_ws().send_json(
            {"event": "pusher:unsubscribe", "data": {"channel": channel}}
        )

    def events(self, channel: str | None = None, event: str | None = None) -> list[Received]:
        """Return the events received so far, optionally only one channel's or event name's."""
        return [
            r
            for r in self._received
            if (channel is None or r.channel == channel) and (event is None or r.event == event)
        ]

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float
    ) -> list[Received]:
        """Wait until ``predicate(all events so far)`` holds; return the events at that moment."""

        def settled() -> bool:
            return predicate(self._received) or self._closed_reason is not None

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(settled)
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout_s} s; {self._summary()}"
            ) from None
        if not predicate(self._received):
            raise ConnectionError(f"connection closed ({self._closed_reason}); {self._summary()}")
        return list(self._received)

    async def close(self) -> None:
        """Close the connection and stop the reader task."""
        if self._closed_reason is None:
            self._closed_reason = "closed by client"
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._ws = None
        await self._mark_closed(self._closed_reason)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- internals -----------------------------------------------------------------

    def _require_ws(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is None or self._closed_reason is not None:
            raise RuntimeError(f"not connected ({self._closed_reason or 'connect() first'})")
        return self._ws

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "server closed the connection"
        try:
            async for raw in self._ws:
                message = _decode(raw)
                if message is not None:
                    await self._handle(message)
        except (aiohttp.ClientError, ConnectionError) as exc:
            reason = f"connection lost: {exc!r}"
        finally:
            await self._mark_closed(reason)

    async def _handle(self, message: dict[str, Any]) -> None:
        event = str(message.get("event", ""))
        channel = message.get("channel")
        if event == "pusher:ping":
            if self._ws is not None and not self._ws.closed:
                await self._ws.send_json({"event": "pusher:pong", "data": {}})
        elif event == "pusher_internal:subscription_succeeded" and isinstance(channel, str):
            _resolve(self._pending.get(channel), None)
        elif event == "pusher:subscription_error" and isinstance(channel, str):
            _resolve(self._pending.get(channel), SubscriptionError(f"{channel}: {message}"))
        elif event == "pusher:error":
            for pending in self._pending.values():  # not tied to a channel: fail them all
                _resolve(pending, SubscriptionError(str(message.get("data"))))
        elif isinstance(channel, str):
            received = Received(
                channel=channel,
                event=event,
                data=_json_or_raw(message.get("data")),
                received_at_monotonic=time.monotonic(),
            )
            async with self._changed:
                self._received.append(received)
                self._changed.notify_all()

    async def _mark_closed(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        for pending in self._pending.values():
            _resolve(pending, ConnectionError(reason))
        async with self._changed:
            self._changed.notify_all()

    def _summary(self) -> str:
        got = self._received
        shown = ", ".join(f"{r.channel}/{r.event}" for r in got[-_SUMMARY_LIMIT:])
        more = f" (last {_SUMMARY_LIMIT})" if len(got) > _SUMMARY_LIMIT else ""
        return f"received {len(got)} event(s){more}: [{shown}]"


def _resolve(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _decode(raw: aiohttp.WSMessage) -> dict[str, Any] | None:
    if raw.type is not aiohttp.WSMsgType.TEXT:
        return None
    try:
        message = json.loads(raw.data)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _json_or_raw(data: Any) -> Any:
    """Pusher sends ``data`` as a JSON string; decode it, or keep it when it is not JSON."""
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data
