"""The worker's own HTTP server: liveness, readiness and Prometheus metrics, and its edge.

The edge, for every route: aiohttp's own 4xx answers (no route, wrong method, body too
large for ``request.read``) are JSON ``{"error": ...}``; a client gets
``HTTP_CLIENT_TIMEOUT_S`` to send its headers (then the connection is closed) and as much
again for its body (``worker.web.body``); faults aiohttp logs itself (a malformed request,
a client gone) are one warning line without the request's text (``logs.OneLineHandler``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.logs import OneLineHandler
from worker.metrics import Metrics
from worker.web.body import (
    CLIENT_TIMEOUT_S,
    DEFAULT_CLIENT_TIMEOUT_S,
    BodyTimeout,
    body_deadline,
)

#: A readiness check: returns ``None`` when fine, or one line saying what is wrong.
Check = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class HttpServer:
    """A started server; ``port`` is the bound port (useful when configured as 0)."""

    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        """Stop accepting requests and close."""
        await self.runner.cleanup()


def build_app(
    metrics: Metrics,
    checks: Mapping[str, Check],
    *,
    alive: Callable[[], str | None] = lambda: None,
    check_timeout_s: float = 2.0,
    routes: Sequence[web.RouteDef] = (),
) -> web.Application:
    """The aiohttp application serving ``/healthz``, ``/readyz`` and ``/metrics``.

    ``alive`` answers ``None`` while the process is healthy (its event loop not blocked),
    else one line saying why; ``/healthz`` then answers 503.
    """

    async def healthz(_: web.Request) -> web.Response:
        problem = alive()
        if problem is not None:
            return web.json_response({"status": "unhealthy", "problem": problem}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        names = list(checks)
        answers = await asyncio.gather(*(_run(checks[n], check_timeout_s) for n in names))
        report = {name: answer or "ok" for name, answer in zip(names, answers, strict=True)}
        ready = all(answer is None for answer in answers)
        return web.json_response({"ready": ready, "checks": report}, status=200 if ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application(middlewares=[_json_errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_routes(routes)
    return app


async def _run(check: Check, timeout_s: float) -> str | None:
    try:
        return await asyncio.wait_for(check(), timeout_s)
    except TimeoutError:
        return f"no answer within {timeout_s}s"
    except Exception as error:  # a failing check is an answer, not a crash
        return f"{type(error).__name__}: {error}"


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A body deadline for every handler, and aiohttp's plain-text 4xx answers (404, 405,
    413...) as JSON ``{"error": reason}``."""
    try:
        with body_deadline(request):
            return await handler(request)
    except BodyTimeout:  # a route that reads with request.read(), not read_bounded
        return web.json_response({"error": "body_timeout"}, status=408)
    except web.HTTPException as error:
        if not 400 <= error.status < 500 or error.content_type == "application/json":
            raise
        reason = _SLUG.sub("_", (error.reason or "bad_request").lower()).strip("_")
        kept = {k: v for k, v in error.headers.items() if k.lower() not in _BODY_HEADERS}
        return web.json_response({"error": reason}, status=error.status, headers=kept)


_SLUG: Final = re.compile(r"[^a-z0-9]+")
_BODY_HEADERS: Final = frozenset({"content-type", "content-length"})
#: Raised by the client's side of the exchange: a malformed request, a connection gone.
_CLIENT_FAULTS: Final = (HttpProcessingError, ConnectionError, TimeoutError, asyncio.CancelledError)


def _level_of(error: BaseException | None) -> str:
    return "warning" if error is None or isinstance(error, _CLIENT_FAULTS) else "error"


class _EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses as JSON.

    aiohttp's own answer to a malformed request quotes the offending bytes (a header line,
    so maybe a caller's token) in plain text; this one names only the status.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Log through ``self.logger`` as aiohttp does, answer ``{"error": <status phrase>}``."""
        super().handle_error(request, status, exc, "")
        reason = _SLUG.sub("_", HTTPStatus(status).phrase.lower()).strip("_")
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response


class _EdgeServer(web.Server):
    """aiohttp's server making ``_EdgeRequestHandler`` connections (it has no option for it)."""

    def __call__(self) -> RequestHandler:
        """One connection's handler."""
        return _EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class _EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose server is an ``_EdgeServer``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EdgeServer  # same state, one method overridden
        return server


def _edge_logger() -> logging.Logger:
    """aiohttp's server logger for our sites: one line per fault, no request text in it."""
    logger = logging.getLogger("fanout.http")
    if not logger.handlers:
        logger.addHandler(OneLineHandler("http.request_failed", _level_of))
        logger.propagate = False  # else stdlib would print the traceback once more
    return logger


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    client_timeout_s: float = DEFAULT_CLIENT_TIMEOUT_S,
) -> HttpServer:
    """Bind and start ``app``; return the running server and its port.

    ``client_timeout_s`` bounds how long a connection may sit without a whole request
    (aiohttp's keep-alive timer also runs while headers arrive) and how long a body may take.
    """
    app[CLIENT_TIMEOUT_S] = client_timeout_s
    runner = _EdgeRunner(
        app, access_log=None, keepalive_timeout=client_timeout_s, logger=_edge_logger()
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    return HttpServer(runner, int(addresses[0][1]) if addresses else port)
