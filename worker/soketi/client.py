"""The only module that talks to Soketi: signed Pusher HTTP API calls over one shared session.

Requests are built and signed by ``worker.soketi.api``; deliveries reach this client only
through ``worker.soketi.batcher.TriggerBatcher``, the one way the worker triggers events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import aiohttp
import orjson

from worker.config import Settings
from worker.errors import SoketiUnavailable
from worker.retry import RetryPolicy, call_with_retries
from worker.soketi.api import Credentials, Limits, Planned, classify_response, sign_request


class SoketiClient:
    """Sends signed Pusher API calls over one shared ``aiohttp`` session, with short retries."""

    def __init__(
        self,
        creds: Credentials,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        limits: Limits,
        retry: RetryPolicy,
        timeout_s: float,
        clock: Callable[[], float] = time.time,
        on_response: Callable[[int, float], None] | None = None,
        on_request: Callable[[int], None] | None = None,
    ) -> None:
        self._creds = creds
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._limits = limits
        self._retry = retry
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._on_response = on_response
        self._on_request = on_request

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        retry: RetryPolicy,
        timeout_s: float,
        on_response: Callable[[int, float], None] | None = None,
        on_request: Callable[[int], None] | None = None,
    ) -> SoketiClient:
        """The client of the Soketi app the settings name (``SOKETI_*``)."""
        creds = Credentials(
            settings.soketi_app_id,
            settings.soketi_app_key,
            settings.soketi_app_secret.get_secret_value(),
        )
        return cls(
            creds,
            settings.soketi_url,
            session,
            limits=Limits(max_payload_bytes=settings.max_payload_kb * 1024),
            retry=retry,
            timeout_s=timeout_s,
            on_response=on_response,
            on_request=on_request,
        )

    @property
    def limits(self) -> Limits:
        """The size limits this client enforces before sending."""
        return self._limits

    async def send(self, planned: Planned) -> None:
        """Make one planned trigger call (``events`` or ``batch_events``)."""
        await self.call("POST", f"/apps/{self._creds.app_id}/{planned.endpoint}", planned.body)
        if self._on_request is not None:
            self._on_request(planned.triggers)

    async def send_batch(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Trigger up to ``max_batch`` prepared entries in one ``batch_events`` call."""
        await self.send(
            Planned("batch_events", orjson.dumps({"batch": list(entries)}), len(entries))
        )

    async def ping(self) -> None:
        """Make one signed read-only call (the channels list) to prove Soketi accepts us."""
        await self.call("GET", f"/apps/{self._creds.app_id}/channels", b"")

    async def probe(self) -> None:
        """Like ``ping`` but a single attempt: the circuit breaker does its own backoff."""
        await self._send_once("GET", f"/apps/{self._creds.app_id}/channels", b"")

    async def call(
        self, method: str, path: str, body: bytes, params: Mapping[str, str] | None = None
    ) -> Any:
        """Send one signed call with short jittered retries on transient failures."""
        return await call_with_retries(
            self._retry, partial(self._send_once, method, path, body, params), SoketiUnavailable
        )

    async def _send_once(
        self, method: str, path: str, body: bytes, params: Mapping[str, str] | None = None
    ) -> Any:
        request = sign_request(
            self._creds, method, path, body, timestamp=int(self._clock()), params=params
        )
        url = f"{self._base_url}{request.path}?{request.query}"
        headers = {"Content-Type": "application/json"} if body else {}
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, url, data=body or None, headers=headers, timeout=self._timeout
            ) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as error:
            self._observe(0, started)  # no answer at all
            raise _unavailable(error, self._base_url, self._timeout.total) from error
        self._observe(status, started)
        classify_response(status, raw)
        return orjson.loads(raw) if raw else None

    async def occupied_channels(self, prefix: str) -> set[str]:
        """Names of the occupied channels starting with ``prefix`` (signed ``GET /channels``)."""
        path = f"/apps/{self._creds.app_id}/channels"
        answer = await self.call("GET", path, b"", {"filter_by_prefix": prefix})
        channels = answer.get("channels") if isinstance(answer, dict) else None
        return set(channels) if isinstance(channels, dict) else set()

    async def channel_occupied(self, channel: str) -> bool:
        """Whether ``channel`` has a subscriber now (signed ``GET /channels/{channel}``)."""
        answer = await self.call("GET", f"/apps/{self._creds.app_id}/channels/{channel}", b"")
        return isinstance(answer, dict) and answer.get("occupied") is True

    def _observe(self, status: int, started: float) -> None:
        if self._on_response is not None:
            self._on_response(status, time.perf_counter() - started)


def _unavailable(error: BaseException, base_url: str, timeout_s: float | None) -> SoketiUnavailable:
    """One line saying why Soketi could not answer; never the signed URL."""
    if isinstance(error, TimeoutError):
        return SoketiUnavailable(f"Soketi timed out after {timeout_s}s")
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = (error.strerror or "cannot connect").lower()
        return SoketiUnavailable(f"Soketi unreachable at {base_url}: {reason}")
    return SoketiUnavailable(f"Soketi unreachable: {type(error).__name__}")
