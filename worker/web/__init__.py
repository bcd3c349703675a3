"""The browser side, assembled: channel authorization, webhooks and presence, history,
admin stats and the console.

``setup(ctx)`` builds each feature once and returns its aiohttp routes (served by
``worker.web.server``) and its background tasks (run by the worker until it stops).
The routes a page on another origin calls (sign-in, history) answer CORS
(``worker.web.cors``) for the origins in ``CORS_ALLOWED_ORIGINS``.
"""

from __future__ import annotations

from aiohttp import web

from worker.web import auth, console, cors, history_api, presence, stats
from worker.web.context import Task, WebContext


def setup(ctx: WebContext) -> tuple[list[web.RouteDef], list[Task]]:
    """Every browser-side route and background task."""
    access = auth.setup(ctx)
    presences = presence.Presence(ctx)
    browser_routes = cors.apply(
        cors.CorsPolicy.from_settings(ctx.settings),
        [*access.routes, *history_api.routes(ctx.history, ctx.metrics, access.guard)],
    )
    routes = [*browser_routes, web.post(presence.WEBHOOK_PATH, presences.webhook)]
    tasks: list[Task] = [*access.tasks]
    tasks.append(presences.settle_forever)  # offlines held through PRESENCE_GRACE_S
    if ctx.settings.presence_reconcile_s > 0:
        tasks.append(presences.reconcile_forever)
    if ctx.settings.stats_interval_s > 0:
        tasks.append(stats.Stats(ctx).send_forever)
    console_routes, console_tasks = console.setup(ctx, access.guard)
    return routes + console_routes, tasks + console_tasks
