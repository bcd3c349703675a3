"""The browser side, assembled: channel authorization, webhooks and presence, history, stats.

Each feature module offers ``routes(ctx)`` (aiohttp route definitions for the worker's HTTP
server) and/or ``tasks(ctx)`` (background coroutines the worker runs until it stops); this
module collects them, so ``worker.app`` wires the browser side with one call.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractExchange
from aiohttp import web

import worker.history.recorder as history
from worker.config import Settings
from worker.metrics import Metrics
from worker.mongo.gateway import MongoGateway
from worker.soketi.client import SoketiClient
from worker.web import auth, console, presence, stats

Task = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class BrowserContext:
    """What the browser-side features may use."""

    settings: Settings
    metrics: Metrics
    gateway: MongoGateway
    soketi: SoketiClient
    #: The events exchange on the publishing connection (confirmed publishes).
    events: AbstractExchange


def setup(ctx: BrowserContext) -> tuple[list[web.RouteDef], list[Task]]:
    """Every browser-side route and background task."""
    routes: list[web.RouteDef] = []
    tasks: list[Task] = []
    routes += auth.routes(ctx)
    routes += presence.routes(ctx)
    tasks += presence.tasks(ctx) + stats.tasks(ctx)
    routes += history.routes(ctx)
    tasks += history.tasks(ctx)
    console_routes, console_tasks = console.setup(ctx)
    return routes + console_routes, tasks + console_tasks
