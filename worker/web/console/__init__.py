"""The web console at ``/console``: live panes through ``clients/js``, and an ops pane.

::

    GET  /console                   the page (no external requests: everything is served here)
    GET  /console/static/{file}     its CSS and JS (worker/console_static/)
    GET  /console/vendor/{file}     pusher-js's web build and clients/js's source, from npm
    GET  /console/config.json       what the page needs to reach Soketi (app key, host, port)
    GET  /console/api/ops           throughput by outcome, event age, circuits, queue depths
    GET  /console/api/dlq           the dead letters and the DLQ's depth, read live
    POST /console/api/dlq/replay    {"ids": [...]} | {"reason": R, "type": T} | {"all": true}
    POST /console/api/dlq/purge     the same selections
    POST /console/api/publish       {"type": T, "data": {...}}: validated, then published

Every ``/console/api/`` call needs an admin, authenticated exactly as ``/pusher/auth``
authenticates (``worker.web.auth``: a Bearer token, a cookie, or the backend's answer in
forward mode); a POST must carry a JSON body (``Content-Type: application/json``), which a
cross-site form cannot send, so a session cookie alone never triggers an action. Each
operator action is logged with the operator's subject (``console.operator_action``).
The live panes use the normal ``/pusher/auth`` and history endpoints with their own tokens.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from worker.events import message_of
from worker.ops import dlq
from worker.ops.publish import UsageError, complete, validate
from worker.web import auth
from worker.web.body import BodyError, read_bounded
from worker.web.console.sampler import Sampler
from worker.web.context import Task, WebContext

log = structlog.get_logger("fanout")

STATIC_DIR: Final = Path(__file__).parent / "static"
#: pusher-js and clients/js, copied into the package when it is built or installed (setup.py).
VENDOR_DIR: Final = STATIC_DIR / "vendor"
STATIC_FILES: Final = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "panes.js": "text/javascript",
    "ops.js": "text/javascript",
    "pusher-esm.js": "text/javascript",
}
DLQ_LIST_LIMIT: Final = 500
MAX_BODY_BYTES: Final = 64 * 1024
_NO_STORE: Final = {"Cache-Control": "no-store"}
# The page's own scripts only; connect-src allows the WebSocket to Soketi wherever it is.
_CSP: Final = (
    "default-src 'self'; script-src 'self' 'sha256-{importmap}'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- HTTP -------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 200: status and a short machine code."""

    def __init__(self, status: int, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


def selection_of(body: Mapping[str, Any]) -> dlq.Selection:
    """A DLQ selection from ``{"ids": [...]}``, ``{"reason", "type"}`` or ``{"all": true}``."""
    ids = body.get("ids") or []
    reason, event_type = body.get("reason") or None, body.get("type") or None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "invalid_selection", "ids must be a list of strings")
    if not all(v is None or isinstance(v, str) for v in (reason, event_type)):
        raise ApiError(400, "invalid_selection", "reason and type are strings")
    selection = dlq.Selection(
        ids=tuple(ids), reason=reason, event_type=event_type, everything=body.get("all") is True
    )
    if selection.is_empty:
        raise ApiError(400, "empty_selection", "give ids, a reason, a type, or all")
    return selection


class Console:
    """The console's handlers for one worker process."""

    def __init__(self, ctx: WebContext, sampler: Sampler, guard: auth.ChannelGuard | None) -> None:
        self._ctx = ctx
        self._sampler = sampler
        self._guard = guard
        # basic.get browsing holds messages unacked: one DLQ operation at a time.
        self._dlq_lock = asyncio.Lock()
        self._html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        self._page_headers = _page_headers(self._html)
        self._vendor = vendored(VENDOR_DIR)

    # -- the page --

    async def page(self, _: web.Request) -> web.StreamResponse:
        """The console's HTML."""
        return web.Response(text=self._html, content_type="text/html", headers=self._page_headers)

    async def static(self, request: web.Request) -> web.StreamResponse:
        """The page's own CSS and JS (a fixed list: no path from the request reaches the disk)."""
        name = request.match_info["file"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": STATIC_FILES[name]})

    async def vendor(self, request: web.Request) -> web.StreamResponse:
        """pusher-js and clients/js, from the package (a list made at start: no path from the
        request reaches the disk)."""
        path = self._vendor.get(request.match_info["file"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "text/javascript"})

    async def config(self, _: web.Request) -> web.StreamResponse:
        """Soketi's address and app key as the page must use them."""
        settings = self._ctx.settings
        return web.json_response(
            {
                "key": settings.soketi_app_key,
                "wsHost": settings.soketi_host,
                "wsPort": settings.soketi_port,
                "forceTLS": settings.soketi_use_tls,
                "authEnabled": self._guard is not None,
            },
            headers=_NO_STORE,
        )

    # -- the API --

    def api(self, action: str, handler: Callable[[web.Request, str], Awaitable[Any]]) -> Handler:
        """Wrap ``handler`` with the admin check, JSON answers and the audit line."""

        async def view(request: web.Request) -> web.StreamResponse:
            operator = None
            try:
                operator = await self._operator(request)
                if request.method != "GET" and request.content_type != "application/json":
                    raise ApiError(415, "json_required", "send Content-Type: application/json")
                result = await handler(request, operator)
            except ApiError as error:
                if request.method != "GET":
                    log.info(
                        "console.operator_action",
                        action=action,
                        operator=operator,
                        status=error.status,
                        reason=error.reason,
                    )
                body = {"error": error.reason} | ({"detail": error.detail} if error.detail else {})
                return web.json_response(body, status=error.status, headers=_NO_STORE)
            return web.json_response(result, headers=_NO_STORE, dumps=_dumps)

        return view

    async def _operator(self, request: web.Request) -> str:
        if self._guard is None:
            raise ApiError(503, "auth_disabled", "AUTH_JWT_SECRET or AUTH_FORWARD_URL is not set")
        try:
            subjects = await self._guard.subjects(request)
        except auth.Unauthenticated as error:
            raise ApiError(401, error.reason) from None
        except auth.AuthUnavailable as error:
            raise ApiError(503, error.reason) from None
        admin = next((subject for subject in subjects if subject.role == "admin"), None)
        if admin is None:
            raise ApiError(403, "admin_only")
        return admin.id

    async def ops(self, _: web.Request, __: str) -> dict[str, Any]:
        """Throughput and outcomes over the last minutes, event age, circuits, queues."""
        return self._sampler.summary()

    async def dead_letters(self, _: web.Request, __: str) -> dict[str, Any]:
        """The DLQ as a table, oldest first, with the depth just read (``depth``).

        The page shows this depth everywhere it shows the DLQ's (the ops pane's figure and
        chip, the admin pane's figure), and the ``queue_messages{queue="dlq"}`` gauge is set
        to it, so ``/console/api/ops`` and the next ``stats-update`` agree with the table
        instead of waiting for the next queue sample.
        """
        now = datetime.now(UTC)
        async with self._dlq_lock:
            letters = await dlq.list_letters(self._ctx.settings, dlq.Selection(everything=True))
        depth = len(letters)
        self._ctx.metrics.queue_messages.labels(queue="dlq").set(depth)
        return {
            "letters": [
                letter.as_json() | {"ageSeconds": letter.age_s(now)}
                for letter in letters[:DLQ_LIST_LIMIT]
            ],
            "total": depth,
            "depth": depth,
            "readAt": int(now.timestamp() * 1000),
        }

    async def replay(self, request: web.Request, operator: str) -> dict[str, Any]:
        """Send the selected dead letters back to the worker's queue."""
        selection = selection_of(await _json_body(request))
        async with self._dlq_lock:
            outcome = await dlq.replay(self._ctx.settings, selection)
        return self._acted("dlq_replay", operator, selection, outcome)

    async def purge(self, request: web.Request, operator: str) -> dict[str, Any]:
        """Remove the selected dead letters for good."""
        selection = selection_of(await _json_body(request))
        async with self._dlq_lock:
            outcome = await dlq.purge(self._ctx.settings, selection, confirmed=True)
        return self._acted("dlq_purge", operator, selection, outcome)

    async def publish(self, request: web.Request, operator: str) -> dict[str, Any]:
        """Validate a test envelope exactly as the worker will, then publish it (confirmed)."""
        body = await _json_body(request)
        envelope = {"source": "console", **body}
        try:
            event = validate(complete(envelope))
        except UsageError as error:
            raise ApiError(400, "invalid_event", str(error)) from None
        await self._ctx.events.publish(message_of(event), routing_key=event.type)
        log.info(
            "console.operator_action",
            action="publish",
            operator=operator,
            event_id=event.id,
            event_type=event.type,
        )
        return {"id": event.id, "type": event.type}

    def _acted(
        self, action: str, operator: str, selection: dlq.Selection, outcome: dlq.Handled
    ) -> dict[str, Any]:
        log.info(
            "console.operator_action",
            action=action,
            operator=operator,
            ids=list(selection.ids),
            reason=selection.reason,
            event_type=selection.event_type,
            everything=selection.everything,
            selected=outcome.selected,
            done=outcome.done,
            failed=len(outcome.failed),
        )
        return {"selected": outcome.selected, "done": outcome.done, "failed": list(outcome.failed)}


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await read_bounded(request, MAX_BODY_BYTES)  # chunked bodies are counted too
    except BodyError as error:
        raise ApiError(error.status, error.reason) from None
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def vendored(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its relative name; warns when there is none."""
    found = {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*.js"))
        if path.is_file()
    }
    if not found:
        log.warning(
            "console.assets_missing",
            detail=f"{folder} is empty: reinstall the package (make install) to vendor pusher-js",
        )
    return found


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _page_headers(html: str) -> dict[str, str]:
    # The import map is the page's only inline script; CSP allows exactly it by hash.
    found = re.search(r'<script type="importmap">(.*?)</script>', html, re.S)
    digest = hashlib.sha256((found.group(1) if found else "").encode()).digest()
    csp = _CSP.replace("{importmap}", base64.b64encode(digest).decode())
    return _NO_STORE | {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}


def setup(
    ctx: WebContext, guard: auth.ChannelGuard | None
) -> tuple[list[web.RouteDef], list[Task]]:
    """The console's routes and its metrics sampler; ``guard`` authenticates its admins."""
    sampler = Sampler(ctx.metrics)
    console = Console(ctx, sampler, guard)
    routes = [
        web.get("/console", console.page),
        web.get("/console/", console.page),
        web.get("/console/config.json", console.config),
        web.get("/console/vendor/{file:.+}", console.vendor),
        web.get("/console/static/{file}", console.static),
        web.get("/console/api/ops", console.api("ops", console.ops)),
        web.get("/console/api/dlq", console.api("dlq_list", console.dead_letters)),
        web.post("/console/api/dlq/replay", console.api("dlq_replay", console.replay)),
        web.post("/console/api/dlq/purge", console.api("dlq_purge", console.purge)),
        web.post("/console/api/publish", console.api("publish", console.publish)),
    ]
    return routes, [sampler.run_forever]
