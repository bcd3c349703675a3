"""``POST /pusher/auth`` and ``POST /pusher/user-auth``: pusher-js's two sign-in calls.

Every answer is JSON. In order of the checks::

    503 {"error": "auth_disabled"}       AUTH_JWT_SECRET (jwt) or AUTH_FORWARD_URL (forward)
                                         is not set
    400 {"error": "invalid_body" | "body_too_large" | "body_incomplete" | "invalid_socket_id"
                  | "missing_channel_name"}
    408 {"error": "body_timeout"}        the body did not arrive within HTTP_CLIENT_TIMEOUT_S
    401 {"error": "missing_token" | "token_expired" | "bad_signature" | "not_signed_in" | ...}
    503 {"error": "auth_unreachable" | "auth_backend_error" | "auth_backend_invalid"}
                                         the backend could not say who calls (forward)
    503 {"error": "store_unavailable"}   MongoDB did not answer (chat and order channels)
    403 {"error": "not_your_channel" | "not_a_member" | "unknown_channel" | ...}
    200 {"auth": "key:signature"}        (user-auth adds "user_data")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import web
from pusher.authentication_client import AuthenticationClient

from schemas.base import SOCKET_ID_PATTERN
from worker.metrics import Metrics
from worker.web.auth.guard import ChannelGuard, Verdict
from worker.web.body import BodyError, read_bounded

log = structlog.get_logger("fanout")

#: pusher-js sends two short fields; anything much larger is not a browser.
MAX_BODY_BYTES: Final = 8192
_MAX_FIELDS: Final = 16
_SOCKET_ID = re.compile(SOCKET_ID_PATTERN)
_NO_STORE: Final = {"Cache-Control": "no-store"}


class BadRequest(Exception):
    """The body is not what pusher-js sends; ``reason`` is a short machine code."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class AuthEndpoints:
    """The two handlers, sharing one guard and one Pusher signer per process."""

    guard: ChannelGuard | None
    signer: Any  # pusher's AuthenticationClient (untyped)
    metrics: Metrics

    async def channel(self, request: web.Request) -> web.Response:
        """Sign ``socket_id:channel_name`` when the caller may read the channel."""
        verdict, body = await self._channel(request)
        return self._answer("channel", request, verdict, body)

    async def user(self, request: web.Request) -> web.Response:
        """Sign the caller's user data for ``pusher:signin``."""
        verdict, body = await self._user(request)
        return self._answer("user", request, verdict, body)

    async def _channel(self, request: web.Request) -> tuple[Verdict, Mapping[str, Any]]:
        if self.guard is None:
            return Verdict(503, "auth_disabled"), {}
        try:
            fields = await read_fields(request)
            socket_id = _socket_id(fields)
            channel = fields.get("channel_name", "")
            if not channel:
                raise BadRequest("missing_channel_name")
        except BadRequest as error:
            return Verdict(error.status, error.reason), {}
        verdict = await self.guard.check(request, channel)
        if verdict.status != 200:
            return verdict, {}
        return verdict, self.signer.authenticate(channel=channel, socket_id=socket_id)

    async def _user(self, request: web.Request) -> tuple[Verdict, Mapping[str, Any]]:
        if self.guard is None:
            return Verdict(503, "auth_disabled"), {}
        try:
            socket_id = _socket_id(await read_fields(request))
        except BadRequest as error:
            return Verdict(error.status, error.reason), {}
        subject = await self.guard.identify(request)
        if isinstance(subject, Verdict):
            return subject, {}
        user_data = {"id": subject.id, "user_info": {"role": subject.role}}
        body = self.signer.authenticate_user(socket_id=socket_id, user_data=user_data)
        return Verdict(200, "allowed", subject), body

    def _answer(
        self, endpoint: str, request: web.Request, verdict: Verdict, body: Mapping[str, Any]
    ) -> web.Response:
        self.metrics.auth_requests.labels(endpoint=endpoint, outcome=verdict.outcome).inc()
        subject = verdict.subject
        (log.debug if verdict.status == 200 else log.info)(
            "auth.decided",
            endpoint=endpoint,
            status=verdict.status,
            reason=verdict.reason,
            subject=subject.id if subject else None,
            role=subject.role if subject else None,
            remote=request.remote,
        )
        headers = _NO_STORE
        if verdict.status == 401:
            headers = headers | {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if verdict.status != 200:
            body = {"error": verdict.reason}
        return web.json_response(dict(body), status=verdict.status, headers=headers)


async def read_fields(request: web.Request) -> dict[str, str]:
    """The string fields of a form-encoded (pusher-js) or JSON body, at most 8 KiB."""
    try:
        raw = await read_bounded(request, MAX_BODY_BYTES)
    except BodyError as error:
        # A body too large is a bad pusher-js request (400), as it always was.
        raise BadRequest(error.reason, 408 if error.status == 408 else 400) from None
    if request.content_type == "application/json":
        return _json_fields(raw)
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except ValueError:  # also UnicodeDecodeError
        raise BadRequest("invalid_body") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):  # a repeated field is ambiguous: refuse, do not pick one
        raise BadRequest("invalid_body")
    return fields


def _json_fields(raw: bytes) -> dict[str, str]:
    try:
        # orjson refuses nesting past 1024 levels and invalid UTF-8 with JSONDecodeError,
        # where json.loads would raise RecursionError on "[[[[...".
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_body") from None
    if not isinstance(data, dict):
        raise BadRequest("invalid_body")
    fields: dict[str, str] = {}
    for name in ("socket_id", "channel_name"):
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest("invalid_body")
        fields[name] = value
    return fields


def _socket_id(fields: Mapping[str, str]) -> str:
    socket_id = fields.get("socket_id", "")
    if len(socket_id) > 64 or _SOCKET_ID.fullmatch(socket_id) is None:
        raise BadRequest("invalid_socket_id")
    return socket_id


def build(
    *,
    guard: ChannelGuard | None,
    app_id: str,
    key: str,
    soketi_secret: str,
    metrics: Metrics,
) -> AuthEndpoints:
    """The endpoints for one process; ``guard=None`` (no secret) leaves them answering 503."""
    signer = AuthenticationClient(app_id, key, soketi_secret)
    return AuthEndpoints(guard=guard, signer=signer, metrics=metrics)
