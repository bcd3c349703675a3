"""Channel authorization for browsers (contract section 5): who calls, and what they may read.

::

    subject    Subject, Authenticator (the protocol), Unauthenticated (401), AuthUnavailable (503)
    tokens     verify_token(token, secret, rules) -> Subject                 (AUTH_MODE=jwt)
    jwt_auth   JwtAuthenticator: a Bearer header, else each AUTH_COOKIE_NAME cookie
    forward    ForwardAuthenticator: asks AUTH_FORWARD_URL with the browser's cookie
    cache      SubjectCache: the backend's answers for a few seconds    (AUTH_MODE=forward)
    policy     decide(subject, channel, facts) -> Decision                      (403)
               load_facts(parse_channel(name), AccessStore) -> Facts            (MongoDB)
    guard      ChannelGuard: authenticate, then decide; shared by every endpoint
    endpoints  POST /pusher/auth, POST /pusher/user-auth

``setup(ctx)`` builds one authenticator and one guard per process (the history endpoint and
the console's admin API use the same guard) and returns the two sign-in routes and, in
forward mode, the task that closes the backend HTTP session when the worker stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from aiohttp import web

from handlers.channels import parse_channel
from worker.config import Settings
from worker.web.auth.cache import SubjectCache
from worker.web.auth.endpoints import build
from worker.web.auth.forward import ForwardAuthenticator, ForwardRules, path_of
from worker.web.auth.guard import ChannelGuard, Verdict
from worker.web.auth.jwt_auth import JwtAuthenticator
from worker.web.auth.policy import Decision, Facts, OrderParties, decide, load_facts
from worker.web.auth.subject import Authenticator, AuthUnavailable, Subject, Unauthenticated
from worker.web.auth.tokens import JwtRules, verify_token
from worker.web.context import Task, WebContext

log = structlog.get_logger("fanout")

__all__ = [
    "Auth",
    "AuthUnavailable",
    "Authenticator",
    "ChannelGuard",
    "Decision",
    "Facts",
    "OrderParties",
    "Subject",
    "Unauthenticated",
    "Verdict",
    "authenticator",
    "decide",
    "jwt_secret",
    "load_facts",
    "parse_channel",
    "setup",
    "verify_token",
]


#: RFC 7518 section 3.2: an HS256 key should have at least 256 bits.
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Auth:
    """The authorization side of one process: its guard (``None``: answering 503), the two
    sign-in routes, and its background tasks."""

    guard: ChannelGuard | None
    routes: list[web.RouteDef]
    tasks: list[Task]


def jwt_secret(settings: Settings) -> str | None:
    """``AUTH_JWT_SECRET``, or ``None`` when unset or empty (an empty key would sign anything)."""
    secret = settings.auth_jwt_secret
    value = "" if secret is None else secret.get_secret_value()
    return value or None


def authenticator(settings: Settings) -> JwtAuthenticator | ForwardAuthenticator | None:
    """The authenticator ``AUTH_MODE`` asks for, or ``None`` (with a warning) when its secret
    or URL is not set: the endpoints then answer 503, never allow."""
    if settings.auth_mode == "forward":
        if settings.auth_forward_url is None:
            log.warning("auth.disabled", detail="AUTH_FORWARD_URL is not set: auth answers 503")
            return None
        rules = ForwardRules(
            url=settings.auth_forward_url,
            id_path=path_of(settings.auth_forward_id_path),
            role_path=path_of(settings.auth_forward_role_path),
            roles=dict(settings.auth_role_map),
            cookies=frozenset(settings.auth_forward_cookies),
            timeout_s=settings.auth_forward_timeout_s,
        )
        cache = SubjectCache(settings.auth_forward_cache_ttl_s, settings.auth_forward_cache_size)
        return ForwardAuthenticator(rules, cache)
    secret = jwt_secret(settings)
    if secret is None:
        log.warning("auth.disabled", detail="AUTH_JWT_SECRET is not set: auth answers 503")
        return None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        log.warning("auth.weak_secret", detail=f"AUTH_JWT_SECRET is under {MIN_SECRET_BYTES} bytes")
    rules_ = JwtRules(
        id_claim=settings.auth_jwt_id_claim,
        role_claim=settings.auth_jwt_role_claim,
        roles=dict(settings.auth_role_map),
        max_age_s=settings.auth_jwt_max_age_s,
    )
    return JwtAuthenticator(secret, rules_, settings.auth_cookie_name)


def setup(ctx: WebContext) -> Auth:
    """One guard for the process, ``POST /pusher/auth`` and ``POST /pusher/user-auth``."""
    settings = ctx.settings
    found = authenticator(settings)
    guard = None if found is None else ChannelGuard(found, ctx.access)
    endpoints = build(
        guard=guard,
        app_id=settings.soketi_app_id,
        key=settings.soketi_app_key,
        soketi_secret=settings.soketi_app_secret.get_secret_value(),
        metrics=ctx.metrics,
    )
    routes = [
        web.post("/pusher/auth", endpoints.channel),
        web.post("/pusher/user-auth", endpoints.user),
    ]
    tasks: list[Task] = [found.run] if isinstance(found, ForwardAuthenticator) else []
    return Auth(guard, routes, tasks)
