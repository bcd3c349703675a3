"""CORS on the running worker: a page on another origin, in headless Chromium, subscribes with
its session cookie; an origin not on the list gets no CORS header and its page gets nothing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from devtools.devstack import SoketiServer
from tests.conftest import Names
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.session_backend import (
    SESSION_COOKIE,
    Account,
    SessionBackend,
)
from tests.integration.test_console import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM

PUSHER_JS = Path(__file__).parents[2] / "clients/js/node_modules/pusher-js/dist/web/pusher.min.js"
WAIT_MS = 20_000
CUSTOMER = Account("cust-cors-1", "user")
CORS_HEADERS = {"access-control-allow-origin", "access-control-allow-credentials"}

#: The marketplace's page, reduced: pusher-js signs in through the worker with fetch and
#: ``credentials: "include"`` (pusher-js's own ajax sends no cookie to another origin).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><script src="/pusher.min.js"></script></head><body><script>
const cfg = JSON.parse(decodeURIComponent(location.hash.slice(1)));
window.received = []; window.states = []; window.errors = [];
const signIn = (path) => async (params, callback) => {
  try {
    const response = await fetch(cfg.worker + path, {
      method: "POST", credentials: "include",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({socket_id: params.socketId, channel_name: params.channelName}),
    });
    if (!response.ok) throw new Error(`${path} answered ${response.status}`);
    callback(null, await response.json());
  } catch (error) {
    window.errors.push(String(error));
    callback(error, null);
  }
};
const pusher = new Pusher(cfg.key, {
  wsHost: cfg.host, wsPort: cfg.port, forceTLS: false, enabledTransports: ["ws"],
  cluster: "mt1", channelAuthorization: {customHandler: signIn("/pusher/auth")},
});
for (const name of cfg.channels) {
  const channel = pusher.subscribe(name);
  channel.bind("pusher:subscription_succeeded", () => window.states.push(`subscribed ${name}`));
  channel.bind("pusher:subscription_error", () => window.states.push(`refused ${name}`));
  channel.bind_global((event, data) => {
    if (!event.startsWith("pusher")) window.received.push({channel: name, event, data});
  });
}
window.historyStatus = fetch(
  `${cfg.worker}/channels/${encodeURIComponent(cfg.channels[0])}/events`,
  {credentials: "include"},
).then((response) => response.status, (error) => `failed: ${error}`);
</script></body></html>
"""


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    if not HAVE_CHROMIUM:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@contextlib.asynccontextmanager
async def page_server() -> AsyncIterator[str]:
    """The marketplace's page and pusher-js on a loopback port of its own: its origin."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def pusher(_: web.Request) -> web.FileResponse:
        return web.FileResponse(PUSHER_JS, headers={"Content-Type": "text/javascript"})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/pusher.min.js", pusher)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def origins() -> AsyncIterator[tuple[str, str]]:
    """Two page origins: the first is on the worker's allow-list, the second is not."""
    async with page_server() as allowed, page_server() as stranger:
        yield allowed, stranger


@pytest.fixture
async def fanout(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    names: Names,
    backend: SessionBackend,
    origins: tuple[str, str],
) -> AsyncIterator[Fanout]:
    """A worker in forward mode allowing the first page origin (and an unrelated one)."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        auth_mode="forward",
        auth_forward_url=backend.me_url,
        cors_allowed_origins=f"https://shop.example.com,{origins[0]}",
        cors_max_age_s=300,
    ) as running:
        yield running


async def open_page(
    browser: Browser, origin: str, fanout: Fanout, cookie: str, *channels: str
) -> Page:
    """The page on ``origin``, holding the session cookie, subscribing to ``channels``."""
    context = await browser.new_context()
    # Cookies are per host, not per port: the worker on another port gets it, as a sub-domain
    # of bhavyabazaar.com gets the backend's cookie.
    await context.add_cookies(
        [{"name": SESSION_COOKIE, "value": cookie, "domain": "127.0.0.1", "path": "/",
          "httpOnly": True, "sameSite": "Lax"}]
    )  # fmt: skip
    config = {
        "worker": f"http://127.0.0.1:{fanout.http_port}",
        "key": fanout.soketi.key,
        "host": fanout.soketi.host,
        "port": fanout.soketi.port,
        "channels": list(channels),
    }
    page = await context.new_page()
    await page.goto(f"{origin}/#{quote(json.dumps(config))}")
    return page


async def test_a_page_on_an_allowed_origin_subscribes_with_its_cookie(
    browser: Browser, fanout: Fanout, backend: SessionBackend, origins: tuple[str, str]
) -> None:
    """pusher-js on an allowed origin signs in with the cookie, gets its events and history."""
    cookie = await backend.sign_in(CUSTOMER)
    own = f"private-user-{CUSTOMER.id}"
    page = await open_page(browser, origins[0], fanout, cookie, own, "private-admin")
    try:
        await page.wait_for_function("window.states.length >= 2", timeout=WAIT_MS)
        states = sorted(await page.evaluate("window.states"))
        assert states == ["refused private-admin", f"subscribed {own}"]
        assert await page.evaluate("window.historyStatus") == 200
        await fanout.publish(
            envelope(
                "order.status_changed",
                {"orderId": "o-cors", "customerId": CUSTOMER.id, "shopId": "s1", "status": "paid"},
            )
        )
        await page.wait_for_function("window.received.length >= 1", timeout=WAIT_MS)
        received = await page.evaluate("window.received")
        assert {(r["channel"], r["data"]["orderId"]) for r in received} >= {(own, "o-cors")}
        assert await page.evaluate("window.errors") == ["Error: /pusher/auth answered 403"]
    finally:
        await page.context.close()
    # The browser sent the cookie across origins; the worker forwarded it to the backend.
    assert {seen["Cookie"] for seen in backend.seen} == {f"{SESSION_COOKIE}={cookie}"}


async def test_a_page_on_another_origin_gets_nothing(
    browser: Browser, fanout: Fanout, backend: SessionBackend, origins: tuple[str, str]
) -> None:
    """The same page on an origin not listed: the preflight fails, no subscription, no reading."""
    cookie = await backend.sign_in(CUSTOMER)
    own = f"private-user-{CUSTOMER.id}"
    page = await open_page(browser, origins[1], fanout, cookie, own)
    try:
        await page.wait_for_function("window.states.length >= 1", timeout=WAIT_MS)
        assert await page.evaluate("window.states") == [f"refused {own}"]
        assert await page.evaluate("window.errors") == ["TypeError: Failed to fetch"]
        assert str(await page.evaluate("window.historyStatus")).startswith("failed: TypeError")
    finally:
        await page.context.close()


async def headers_of(
    fanout: Fanout, method: str, path: str, origin: str, **extra: str
) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of ``method path`` sent with ``Origin: origin``."""
    url = f"http://127.0.0.1:{fanout.http_port}{path}"
    headers = {"Origin": origin, **extra}
    data = {"socket_id": "1.2", "channel_name": "private-admin"} if method == "POST" else None
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers=headers, data=data) as response,
    ):
        return response.status, {k.lower(): v for k, v in response.headers.items()}


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}
PATHS = ["/pusher/auth", "/pusher/user-auth", "/channels/private-admin/events"]


@pytest.mark.parametrize("path", PATHS)
async def test_preflight_and_answers_carry_cors_only_for_listed_origins(
    fanout: Fanout, origins: tuple[str, str], path: str
) -> None:
    """A listed origin's preflight and answer carry CORS; another origin's carry none."""
    method = "GET" if path.startswith("/channels/") else "POST"
    allowed = await headers_of(fanout, "OPTIONS", path, origins[0], **PREFLIGHT)
    refused = await headers_of(fanout, "OPTIONS", path, origins[1], **PREFLIGHT)
    answer = await headers_of(fanout, method, path, origins[0])
    stranger = await headers_of(fanout, method, path, "https://evil.example.com")
    assert allowed[0] == 204
    assert {k: v for k, v in allowed[1].items() if k.startswith("access-control-")} == {
        "access-control-allow-origin": origins[0],
        "access-control-allow-credentials": "true",
        "access-control-allow-methods": ", ".join(sorted({"OPTIONS", method})),
        "access-control-allow-headers": "Content-Type, Authorization",
        "access-control-max-age": "300",
    }
    assert answer[0] == 401  # no cookie here: refused, and the page may read why
    assert answer[1]["access-control-allow-origin"] == origins[0]
    assert answer[1]["access-control-allow-credentials"] == "true"
    assert "Origin" in answer[1]["vary"]
    assert refused[0] == 403
    for _, headers in (refused, stranger):
        assert not [k for k in headers if k.startswith("access-control-")]


async def test_without_an_allow_list_nothing_changes(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names
) -> None:
    """CORS_ALLOWED_ORIGINS unset (the default): no CORS header, and OPTIONS is not served."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url, mongo_url=mongo_url, soketi=soketi, names=names
    ) as fanout:
        preflight = await headers_of(fanout, "OPTIONS", "/pusher/auth", "https://a.example.com")
        answer = await headers_of(fanout, "POST", "/pusher/auth", "https://a.example.com")
    assert (preflight[0], answer[0]) == (405, 503)
    for _, headers in (preflight, answer):
        assert not [k for k in headers if k.startswith("access-control-")]
