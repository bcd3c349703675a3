"""The worker's own HTTP server: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.metrics import Metrics

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

    app = web.Application()
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


async def start(app: web.Application, host: str, port: int) -> HttpServer:
    """Bind and start ``app``; return the running server and its port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = runner.addresses
    return HttpServer(runner, int(addresses[0][1]) if addresses else port)
