"""CORS for the browser endpoints: the origins in ``CORS_ALLOWED_ORIGINS`` may call with cookies.

A page on another origin (the marketplace front end) calls ``/pusher/auth``,
``/pusher/user-auth`` and the history feed with ``credentials: "include"``. For an origin on
the list, every answer of those routes (refusals included, so the page can read why)
carries::

    Access-Control-Allow-Origin: <that origin>      never "*": cookies are involved
    Access-Control-Allow-Credentials: true
    Vary: Origin

and ``OPTIONS`` (the preflight a JSON body or an ``Authorization`` header brings) answers
204 with the route's methods, ``Content-Type, Authorization`` and ``CORS_MAX_AGE_S``.
Any other origin gets no ``Access-Control-*`` header at all, and its preflight a 403, so
the browser keeps the answer from the page. An empty list (the default) changes nothing:
no header, no ``OPTIONS`` route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final, cast

from aiohttp import hdrs, web

from worker.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ALLOWED_HEADERS: Final = "Content-Type, Authorization"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which origins may call with credentials, and how long a preflight answer lasts."""

    origins: frozenset[str]
    max_age_s: int = 600

    @classmethod
    def from_settings(cls, settings: Settings) -> CorsPolicy:
        """``CORS_ALLOWED_ORIGINS`` and ``CORS_MAX_AGE_S``."""
        return cls(frozenset(settings.cors_allowed_origins), settings.cors_max_age_s)

    def allows(self, origin: str | None) -> bool:
        """True when ``origin`` is on the list (exactly: browsers send it normalized)."""
        return origin is not None and origin in self.origins

    def answer_headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to ``origin`` (none for an origin not listed)."""
        if not self.allows(origin):
            return {}
        assert origin is not None
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
        }

    def preflight_headers(self, origin: str | None, methods: Iterable[str]) -> dict[str, str]:
        """The headers of a preflight answer to ``origin`` (none for an origin not listed)."""
        if not self.allows(origin):
            return {}
        return self.answer_headers(origin) | {
            "Access-Control-Allow-Methods": ", ".join(sorted(set(methods))),
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(self.max_age_s),
        }


def apply(policy: CorsPolicy, routes: Iterable[web.RouteDef]) -> list[web.RouteDef]:
    """``routes`` answering CORS for ``policy``'s origins, plus an ``OPTIONS`` route per path.

    With no origin configured the routes come back as they are.
    """
    routes = list(routes)
    if not policy.origins:
        return routes
    methods: dict[str, set[str]] = {}
    wrapped: list[web.RouteDef] = []
    for route in routes:
        methods.setdefault(route.path, {hdrs.METH_OPTIONS}).add(route.method)
        wrapped.append(
            web.route(route.method, route.path, _answering(policy, route.handler), **route.kwargs)
        )
    preflights = [web.options(path, _preflight(policy, found)) for path, found in methods.items()]
    return wrapped + preflights


def _answering(policy: CorsPolicy, handler: object) -> Handler:
    # Every route given here is a plain handler (none is a class-based view).
    inner = cast(Handler, handler)

    async def view(request: web.Request) -> web.StreamResponse:
        extra = policy.answer_headers(request.headers.get(hdrs.ORIGIN))
        try:
            response = await inner(request)
        except web.HTTPException as error:
            _add(error.headers, extra)
            raise
        _add(response.headers, extra)
        return response

    return view


def _preflight(policy: CorsPolicy, methods: set[str]) -> Handler:
    async def preflight(request: web.Request) -> web.StreamResponse:
        headers = policy.preflight_headers(request.headers.get(hdrs.ORIGIN), methods)
        response = (
            web.Response(status=204, headers=headers)
            if headers
            else web.json_response({"error": "origin_not_allowed"}, status=403)
        )
        _add(response.headers, {})
        return response

    return preflight


def _add(headers: MutableMapping[str, str], extra: Mapping[str, str]) -> None:
    """Add ``extra`` and ``Vary: Origin`` (every answer of these routes depends on it)."""
    headers.update(extra)
    vary = [v.strip() for v in headers.get(hdrs.VARY, "").split(",") if v.strip()]
    if "Origin" not in vary:
        headers[hdrs.VARY] = ", ".join([*vary, "Origin"])
