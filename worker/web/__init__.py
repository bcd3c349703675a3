"""The browser side, assembled: channel authorization, webhooks and presence, history,
admin stats and the console.

``setup(ctx)`` builds each feature once and returns its aiohttp routes (served by
``worker.web.server``) and its background tasks (run by the worker until it stops).
"""

from __future__ import annotations

from aiohttp import web

from worker.web import auth, console, history_api, presence, stats
from worker.web.context import Task, WebContext


def setup(ctx: WebContext) -> tuple[list[web.RouteDef], list[Task]]:
    """Every browser-side route and background task."""
    guard = auth.guard(ctx)
    presences = presence.Presence(ctx)
    routes = [
        *auth.routes(ctx, guard),
        web.post(presence.WEBHOOK_PATH, presences.webhook),
        *history_api.routes(ctx.history, ctx.metrics, guard),
    ]
    tasks: list[Task] = []
    if ctx.settings.presence_reconcile_s > 0:
        tasks.append(presences.reconcile_forever)
    if ctx.settings.stats_interval_s > 0:
        tasks.append(stats.Stats(ctx).send_forever)
    console_routes, console_tasks = console.setup(ctx)
    return routes + console_routes, tasks + console_tasks
