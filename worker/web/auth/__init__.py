"""Channel authorization for browsers (contract section 5): who calls, and what they may read.

::

    tokens     verify_token(token, secret) -> Subject | raise Unauthenticated   (401)
    policy     decide(subject, channel, facts) -> Decision                      (403)
               load_facts(parse_channel(name), AccessStore) -> Facts            (MongoDB)
    endpoints  POST /pusher/auth, POST /pusher/user-auth; ChannelGuard for reuse

``guard(ctx)`` is built once and shared (the history endpoint reads with it);
``routes(ctx, guard)`` are the two sign-in endpoints.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from handlers.channels import parse_channel
from worker.web.auth.endpoints import ChannelGuard, Verdict, build
from worker.web.auth.policy import Decision, Facts, OrderParties, decide, load_facts
from worker.web.auth.tokens import Subject, Unauthenticated, verify_token
from worker.web.context import WebContext

log = structlog.get_logger("fanout")

__all__ = [
    "ChannelGuard",
    "Decision",
    "Facts",
    "OrderParties",
    "Subject",
    "Unauthenticated",
    "Verdict",
    "decide",
    "guard",
    "jwt_secret",
    "load_facts",
    "parse_channel",
    "routes",
    "verify_token",
]


#: RFC 7518 section 3.2: an HS256 key should have at least 256 bits.
MIN_SECRET_BYTES = 32


def jwt_secret(ctx: WebContext) -> str | None:
    """``AUTH_JWT_SECRET``, or ``None`` when unset or empty (an empty key would sign anything)."""
    secret = ctx.settings.auth_jwt_secret
    value = "" if secret is None else secret.get_secret_value()
    return value or None


def guard(ctx: WebContext) -> ChannelGuard | None:
    """A guard for other endpoints (history), or ``None`` when AUTH_JWT_SECRET is not set."""
    secret = jwt_secret(ctx)
    if secret is None:
        return None
    return ChannelGuard(secret, ctx.settings.auth_cookie_name, ctx.access)


def routes(ctx: WebContext, channel_guard: ChannelGuard | None) -> list[web.RouteDef]:
    """``POST /pusher/auth`` and ``POST /pusher/user-auth``."""
    settings = ctx.settings
    secret = jwt_secret(ctx)
    if secret is None:
        log.warning("auth.disabled", detail="AUTH_JWT_SECRET is not set: auth endpoints answer 503")
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        log.warning("auth.weak_secret", detail=f"AUTH_JWT_SECRET is under {MIN_SECRET_BYTES} bytes")
    endpoints = build(
        guard=channel_guard,
        app_id=settings.soketi_app_id,
        key=settings.soketi_app_key,
        soketi_secret=settings.soketi_app_secret.get_secret_value(),
        metrics=ctx.metrics,
    )
    return [
        web.post("/pusher/auth", endpoints.channel),
        web.post("/pusher/user-auth", endpoints.user),
    ]
