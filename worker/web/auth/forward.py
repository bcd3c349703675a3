"""``AUTH_MODE=forward``: the worker asks the backend who the caller is.

The pattern of nginx ``auth_request`` and Traefik ForwardAuth. For each request the worker
calls ``AUTH_FORWARD_URL`` (the backend's ``GET /api/auth/me``) with the browser's ``Cookie``
(only the cookies ``AUTH_FORWARD_COOKIES`` lists, when it lists any) and ``Authorization``
headers, nothing else, and reads the answer::

    2xx, JSON object     the subject: id at AUTH_FORWARD_ID_PATH, role at AUTH_FORWARD_ROLE_PATH
                         through AUTH_ROLE_MAP (an id or role it cannot use: 401)
    401, 403             not signed in: 401 not_signed_in
    other statuses       503 auth_backend_error
    not JSON / too big   503 auth_backend_invalid
    no answer in time    503 auth_unreachable

Redirects are not followed and the backend's cookies are not kept. Answers are cached per
credentials for ``AUTH_FORWARD_CACHE_TTL_S`` (``worker.web.auth.cache``), keyed by a keyed
digest of the forwarded headers, so a raw cookie is never held as a key nor logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson
import structlog
from aiohttp import web

from worker.web.auth.cache import SubjectCache
from worker.web.auth.subject import (
    IDENTITY_ROLES,
    AuthUnavailable,
    Role,
    Subject,
    Unauthenticated,
    subject_of,
)

log = structlog.get_logger("fanout")

#: The answer of ``/api/auth/me`` is one account document; more than this is not that.
MAX_ANSWER_BYTES: Final = 256 * 1024
_SIGNED_OUT: Final = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class ForwardRules:
    """Where to ask and how to read the answer."""

    url: str
    id_path: tuple[str, ...] = ("user", "_id")
    role_path: tuple[str, ...] = ("userType",)
    roles: Mapping[str, Role] = field(default_factory=lambda: dict(IDENTITY_ROLES))
    #: Cookie names forwarded; empty forwards the whole ``Cookie`` header.
    cookies: frozenset[str] = frozenset()
    timeout_s: float = 2.0


def path_of(dotted: str) -> tuple[str, ...]:
    """``"user._id"`` -> ``("user", "_id")``."""
    return tuple(part for part in dotted.split(".") if part)


def credentials_of(headers: Mapping[str, str], cookie_names: frozenset[str]) -> dict[str, str]:
    """The headers to forward: ``Cookie`` (filtered to ``cookie_names`` when given) and
    ``Authorization``, each only when present and not empty."""
    forwarded: dict[str, str] = {}
    cookie = headers.get("Cookie", "")
    if cookie and cookie_names:
        pairs = (pair.strip() for pair in cookie.split(";"))
        cookie = "; ".join(p for p in pairs if p.partition("=")[0].strip() in cookie_names)
    if cookie.strip():
        forwarded["Cookie"] = cookie
    authorization = headers.get("Authorization", "")
    if authorization.strip():
        forwarded["Authorization"] = authorization
    return forwarded


def subject_of_answer(status: int, body: bytes, rules: ForwardRules) -> Subject:
    """What the backend's answer says about the caller (pure): a subject, or raise."""
    if status in _SIGNED_OUT:
        raise Unauthenticated("not_signed_in")
    if not 200 <= status < 300:
        raise AuthUnavailable("auth_backend_error")
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AuthUnavailable("auth_backend_invalid") from None
    if not isinstance(answer, dict):
        raise AuthUnavailable("auth_backend_invalid")
    return subject_of(_at(answer, rules.id_path), _at(answer, rules.role_path), rules.roles)


def _at(document: Any, path: tuple[str, ...]) -> object:
    for name in path:
        if not isinstance(document, dict):
            return None
        document = document.get(name)
    return document


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (``read(n)`` may return less before the end)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class ForwardAuthenticator:
    """Asks the backend, through one HTTP session it owns, and caches the answers."""

    def __init__(
        self,
        rules: ForwardRules,
        cache: SubjectCache,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._rules = rules
        self._cache = cache
        self._session = session
        self._owns_session = session is None
        self._closed = False
        # Keys are keyed digests: a cache entry cannot be matched to a cookie seen elsewhere.
        self._key = secrets.token_bytes(32)

    async def subjects(self, request: web.Request) -> tuple[Subject, ...]:
        """The one subject the backend vouches for, or raise."""
        credentials = credentials_of(request.headers, self._rules.cookies)
        if not credentials:
            raise Unauthenticated("missing_credentials")
        if not all(_encodable(value) for value in credentials.values()):
            # aiohttp reads non-UTF-8 header bytes as surrogates: they cannot be forwarded.
            raise Unauthenticated("malformed_credentials")
        key = self._digest(credentials)
        return (await self._cache.get(key, lambda: self._ask(credentials)),)

    async def run(self) -> None:
        """Own the HTTP session while the worker runs; close it when the worker stops."""
        try:
            await asyncio.Event().wait()  # until the worker cancels its background tasks
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel calls in flight and close the HTTP session if this object opened it."""
        self._closed = True
        await self._cache.close()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _digest(self, credentials: Mapping[str, str]) -> bytes:
        raw = b"\0".join(
            f"{name}\0{credentials.get(name, '')}".encode() for name in ("Cookie", "Authorization")
        )
        return hmac.new(self._key, raw, hashlib.sha256).digest()

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise AuthUnavailable("auth_unreachable")  # the worker is stopping
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._rules.timeout_s),
                # Never keep the backend's Set-Cookie: one browser's cookie must not ride
                # along with another browser's question.
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=64),
            )
        return self._session

    async def _ask(self, credentials: Mapping[str, str]) -> Subject:
        headers = {"Accept": "application/json", **credentials}
        try:
            async with self._client().get(
                self._rules.url, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                body = await _read_at_most(response.content, MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("auth.forward_failed", cause=type(error).__name__)
            raise AuthUnavailable("auth_unreachable") from None
        try:
            if len(body) > MAX_ANSWER_BYTES:
                raise AuthUnavailable("auth_backend_invalid")
            return subject_of_answer(status, body, self._rules)
        except AuthUnavailable as error:
            log.warning("auth.forward_failed", cause=error.reason, status=status)
            raise
        except Unauthenticated as error:
            if status not in _SIGNED_OUT:  # signed in, yet no usable id or role: the paths?
                log.warning("auth.forward_unusable_answer", cause=error.reason, status=status)
            raise
