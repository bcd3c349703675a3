"""A small real session backend, as the marketplace runs it: express-session + connect-redis.

- The cookie ``connect.sid`` is ``s:`` + session id + ``.`` + base64(HMAC-SHA256(secret, id))
  without ``=`` padding (the ``cookie-signature`` package), URL-encoded as express sends it.
- Sessions are JSON in Redis under ``{prefix}{id}`` (connect-redis's ``sess:``; here with a
  per-test prefix), with the session's lifetime as the key's TTL.
- ``GET /api/auth/me`` answers like ``backend/controller/auth.js``: 401
  ``{"success": false, "message": "Not authenticated"}`` without a valid session, else
  ``{"success": true, "user": {...with _id}, "userType": ..., "authenticated": true}``.

Faults the real one has: ``failing`` answers 500 (the session store erred), ``garbage``
answers an HTML page with 200. Every request's headers are kept in ``seen``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis.asyncio as redis
from aiohttp import web

from devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    tcp_is_open,
    temp_dir,
    wait_until,
)

SESSION_COOKIE = "connect.sid"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def sign(session_id: str, secret: str) -> str:
    """``cookie-signature``'s ``sign``: ``s:`` is express-session's prefix."""
    mac = hmac.new(secret.encode(), session_id.encode(), hashlib.sha256).digest()
    return f"s:{session_id}.{base64.b64encode(mac).decode().rstrip('=')}"


def cookie_value(session_id: str, secret: str) -> str:
    """The ``connect.sid`` value as the browser holds it (``encodeURIComponent``)."""
    return quote(sign(session_id, secret), safe="")


def unsign(value: str, secret: str) -> str | None:
    """The session id of a cookie value, or ``None`` when it is not signed with ``secret``."""
    raw = unquote(value)
    if not raw.startswith("s:") or "." not in raw:
        return None
    session_id = raw[2:].rpartition(".")[0]
    return session_id if hmac.compare_digest(sign(session_id, secret), raw) else None


@dataclass(frozen=True, slots=True)
class Account:
    """An account that can sign in: its ``_id``, ``userType`` and, for admins, its role."""

    id: str
    user_type: str
    name: str = "Aarav"
    role: str = "user"


@dataclass
class SessionBackend:
    """The backend's session side on a loopback port, its sessions in Redis."""

    client: redis.Redis
    prefix: str
    secret: str = field(default_factory=lambda: secrets.token_hex(32))
    failing: bool = False
    garbage: bool = False
    seen: list[dict[str, str]] = field(default_factory=list)
    #: Every cookie value handed out, so a test can look for them where they must not be.
    issued: list[str] = field(default_factory=list)
    #: While set and not yet released, ``/api/auth/me`` holds its answer (a slow backend).
    hold: asyncio.Event | None = None
    port: int = 0

    @property
    def me_url(self) -> str:
        """``GET /api/auth/me`` on this backend."""
        return f"http://{LOOPBACK}:{self.port}/api/auth/me"

    @property
    def calls(self) -> int:
        """How many times ``/api/auth/me`` was asked."""
        return len(self.seen)

    async def sign_in(self, account: Account, ttl_s: int = 24 * 3600) -> str:
        """Store a session as ``SessionManager.create*Session`` does; the cookie value."""
        session_id = secrets.token_urlsafe(24)
        expires = datetime.now(UTC) + timedelta(seconds=ttl_s)
        session: dict[str, Any] = {
            "cookie": {
                "originalMaxAge": ttl_s * 1000,
                "expires": expires.isoformat(),
                "httpOnly": True,
                "path": "/",
                "sameSite": "lax",
            },
            "userType": account.user_type,
            "isAuthenticated": True,
            "loginTime": datetime.now(UTC).isoformat(),
        }
        who = {"id": account.id, "name": account.name, "role": account.role}
        session["seller" if account.user_type == "seller" else "user"] = who
        await self.client.set(self.prefix + session_id, json.dumps(session), ex=ttl_s)
        cookie = cookie_value(session_id, self.secret)
        self.issued.append(cookie)
        return cookie

    async def sign_out(self, cookie: str) -> None:
        """Destroy the session behind ``cookie`` (its Redis key goes)."""
        session_id = unsign(cookie, self.secret)
        assert session_id is not None
        await self.client.delete(self.prefix + session_id)

    async def me(self, request: web.Request) -> web.Response:
        """``GET /api/auth/me``."""
        self.seen.append(dict(request.headers))
        if self.hold is not None:
            await self.hold.wait()
        if self.failing:
            return web.json_response({"success": False, "message": "Redis error"}, status=500)
        if self.garbage:
            return web.Response(text="<html>Bhavya Bazaar</html>", content_type="text/html")
        session = await self._session(request.cookies.get(SESSION_COOKIE, ""))
        if session is None or not session.get("isAuthenticated"):
            return web.json_response({"success": False, "message": "Not authenticated"}, status=401)
        user_type = session["userType"]
        who = session["seller"] if user_type == "seller" else session["user"]
        user = {"_id": who["id"], "name": who["name"], "role": who["role"]}
        return web.json_response(
            {"success": True, "user": user, "userType": user_type, "authenticated": True}
        )

    async def _session(self, cookie: str) -> dict[str, Any] | None:
        session_id = unsign(cookie, self.secret) if cookie else None
        if session_id is None:
            return None
        raw = await self.client.get(self.prefix + session_id)
        return None if raw is None else dict(json.loads(raw))

    async def forget_all(self) -> None:
        """Delete every session this backend stored."""
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}*")]
        if keys:
            await self.client.delete(*keys)


@contextlib.asynccontextmanager
async def running_backend(redis_url: str, prefix: str) -> AsyncIterator[SessionBackend]:
    """A session backend on a free loopback port, its sessions under ``{prefix}``."""
    client = redis.Redis.from_url(redis_url)
    backend = SessionBackend(client, prefix)
    app = web.Application()
    app.router.add_get("/api/auth/me", backend.me)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    backend.port = int(runner.addresses[0][1])
    try:
        yield backend
    finally:
        await runner.cleanup()
        await backend.forget_all()
        await client.aclose()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """``REDIS_URL``, or the local Redis on 6379, or a throwaway ``redis-server`` of our own."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    if tcp_is_open(LOOPBACK, 6379):
        yield DEFAULT_REDIS_URL
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("Redis is not reachable on 6379 and redis-server is not on PATH")
    port, folder = free_port(), temp_dir("fanout-redis-")
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
    process = ManagedProcess(argv, env=dict(os.environ), cwd=folder, log_path=folder / "log")
    process.start()
    try:
        wait_until(lambda: tcp_is_open(LOOPBACK, port), process, what="redis", timeout_s=20)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        process.stop()


def host_port(url: str) -> tuple[str, int]:
    """The host and port of ``url``."""
    parts = urlsplit(url)
    return parts.hostname or LOOPBACK, parts.port or 80
