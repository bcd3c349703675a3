"""The web console (/console) in headless Chromium against a real worker, Soketi and broker."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import jwt
import orjson
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from devtools.devstack import SoketiServer, start_soketi
from tests.conftest import SOKETI_APP_ID, Names
from tests.integration.harness import Fanout, envelope, running_worker

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
HAVE_CHROMIUM = Path(CHROMIUM).is_file()
SCREENSHOTS = Path(__file__).parents[1] / "screenshots"
DOCS = Path(__file__).parents[2] / "docs"
#: The README's screenshots are rewritten only when asked (FANOUT_DOC_SCREENSHOTS=1): a test
#: run must not change tracked files.
WRITE_DOCS = os.environ.get("FANOUT_DOC_SCREENSHOTS") == "1"
JWT_SECRET = secrets.token_hex(32)
WAIT_MS = 20_000


def mint(sub: str, role: str) -> str:
    """An HS256 session token as the backend issues it."""
    claims = {"sub": sub, "role": role, "exp": int(time.time()) + 900}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@dataclass(frozen=True, slots=True)
class Market:
    """The seeded ids the panes watch."""

    shop: str
    customer: str
    product: str
    conversation: str


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


@pytest.fixture
def own_soketi() -> Iterator[SoketiServer]:
    """A Soketi only this test stops and restarts."""
    server = start_soketi(
        SOKETI_APP_ID, key=f"key-{secrets.token_hex(8)}", secret=secrets.token_hex(24)
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, own_soketi: SoketiServer, names: Names
) -> AsyncIterator[Fanout]:
    """A worker with the auth endpoints (and so the console's API) on."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=own_soketi,
        names=names,
        auth_jwt_secret=JWT_SECRET,
        # One queue sample at start and none during a test: the DLQ depth shown must be live.
        queue_sample_interval_s=3600,
    ) as running:
        yield running


@pytest.fixture
async def market(fanout: Fanout) -> Market:
    """A shop, a customer, a product and their conversation in the backend's collections."""
    tag = uuid.uuid4().hex[:8]
    # The shop's id is a MongoDB ObjectId as in production (24 hex digits, one unbreakable
    # word): the seller pane's heading must still fit beside its badge.
    found = Market(secrets.token_hex(12), f"user-{tag}", f"prod-{tag}", f"conv-{tag}")
    db = fanout.db
    await db.shops.insert_one({"_id": found.shop, "name": "Chai Point"})
    await db.users.insert_one(
        {"_id": found.customer, "name": "Aarav Sharma", "email": "a@example.in", "role": "user"}
    )
    await db.products.insert_one(
        {"_id": found.product, "name": "Masala Chai", "shopId": found.shop}
    )
    await db.conversations.insert_one(
        {"_id": found.conversation, "members": [found.customer, found.shop]}
    )
    return found


@pytest.fixture
async def page(browser: Browser, fanout: Fanout, market: Market) -> AsyncIterator[Page]:
    """The console with a token per pane, every pane connected, every request on loopback."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1300})
    opened = await context.new_page()
    requests: list[str] = []
    opened.on("request", lambda request: requests.append(request.url))
    opened.on("websocket", lambda socket: requests.append(socket.url))
    fragment = (
        f"admin={mint('admin-1', 'admin')}&seller={mint(market.shop, 'seller')}"
        f"&customer={mint(market.customer, 'user')}&chat={market.conversation}"
    )
    base = f"http://127.0.0.1:{fanout.http_port}"
    await opened.goto(f"{base}/console?poll_ms=500&reconnect_ms=1000&ops_ms=1000#{fragment}")
    for pane in ("admin", "seller", "customer"):
        await expect(opened.locator(f"#{pane} .state")).to_have_attribute(
            "data-state", "live", timeout=WAIT_MS
        )
    try:
        yield opened
    finally:
        await context.close()
    # Offline: nothing but the worker and Soketi on loopback was ever asked for.
    outside = [url for url in requests if "//127.0.0.1:" not in url]
    assert outside == []


async def shot(page: Page, name: str, selector: str | None = None) -> None:
    """Write a screenshot of ``selector`` (or the page) to tests/screenshots/."""
    SCREENSHOTS.mkdir(exist_ok=True)
    target = page.locator(selector) if selector else page
    await target.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def row(page: Page, list_id: str, event_id: str) -> Any:
    """The row showing ``event_id`` in list ``list_id``."""
    return page.locator(f"#{list_id} li[data-event-id='{event_id}']")


def order_created(market: Market) -> dict[str, Any]:
    """The customer orders one product of the shop."""
    return envelope(
        "order.created",
        {
            "orderId": f"ord-{uuid.uuid4().hex[:8]}",
            "customerId": market.customer,
            "items": [
                {"productId": market.product, "shopId": market.shop, "quantity": 2, "price": 180}
            ],
            "totalPrice": 360,
            "currency": "INR",
        },
    )


def chat(market: Market, content: str, *, from_shop: bool) -> dict[str, Any]:
    """A chat message between the customer and the shop."""
    sender, recipient = (
        (market.shop, market.customer) if from_shop else (market.customer, market.shop)
    )
    return envelope(
        "message.created",
        {
            "messageId": f"m-{uuid.uuid4().hex[:8]}",
            "conversationId": market.conversation,
            "senderId": sender,
            "senderType": "seller" if from_shop else "user",
            "recipientId": recipient,
            "recipientType": "user" if from_shop else "seller",
            "content": content,
        },
    )


def alert(title: str) -> dict[str, Any]:
    """A system alert for the admins."""
    return envelope(
        "system.alert",
        {"severity": "warning", "title": title, "message": "console test", "audience": "admin"},
    )


async def test_events_appear_in_the_right_panes(page: Page, fanout: Fanout, market: Market) -> None:
    """Events published to the broker show up live in the admin, seller and customer panes."""
    order = order_created(market)
    question = chat(market, "Is the masala chai fresh stock?", from_shop=False)
    answer = chat(market, "जी हाँ, इसी हफ़्ते पैक हुई है।", from_shop=True)
    stock = envelope(
        "product.stock_low", {"productId": market.product, "currentStock": 2, "threshold": 5}
    )
    signup = envelope("user.registered", {"userId": market.customer})
    warning = alert("Payments gateway slow")
    for env in (order, question, answer, stock, signup, warning):
        await fanout.publish(env)

    for list_id, env in (
        ("admin-events", order),
        ("admin-events", signup),
        ("admin-events", warning),
        ("seller-events", order),
        ("seller-events", question),
        ("seller-events", stock),
        ("customer-events", order),
        ("customer-chat", question),
        ("customer-chat", answer),
    ):
        await expect(row(page, list_id, env["id"])).to_be_visible(timeout=WAIT_MS)
    await expect(row(page, "seller-events", stock["id"])).to_contain_text("2 left")
    await expect(row(page, "customer-chat", answer["id"])).to_contain_text("इसी हफ़्ते")
    # Each pane only sees its own: the admin gets no chat, the customer no stock alert.
    await expect(row(page, "admin-events", question["id"])).to_have_count(0)
    await expect(row(page, "customer-events", stock["id"])).to_have_count(0)

    await expect(page.locator("#ops-circuits [data-downstream='soketi']")).to_contain_text("closed")
    await shot(page, "console")
    for pane in ("admin", "seller", "customer", "ops"):
        await shot(page, f"pane-{pane}", f"#{pane}")
    # The README's screenshots, retaken from this run at two window widths.
    for width, name in ((1280, "console.png"), (1024, "console-1024.png")):
        await page.set_viewport_size({"width": width, "height": 1100})
        await expect(page.locator("#ops-dlq-depth")).to_have_text("0", timeout=WAIT_MS)
        target = DOCS if WRITE_DOCS else SCREENSHOTS
        await page.screenshot(path=str(target / name))
        assert await page.evaluate("document.documentElement.scrollWidth") <= width


async def box(page: Page, selector: str) -> dict[str, float]:
    """The bounding box of ``selector`` (which must be shown)."""
    found = await page.locator(selector).bounding_box()
    assert found is not None, selector
    return dict(found)


async def test_layout_fits_at_1024(page: Page) -> None:
    """At 1024 px the token form's fields are inside the window; no heading runs into its badge."""
    await page.set_viewport_size({"width": 1024, "height": 900})
    await page.locator("#session summary").click()
    for field in ("token-admin", "token-seller", "token-customer", "chat-id"):
        label, entry = await box(page, f"label[for='{field}']"), await box(page, f"#{field}")
        assert entry["x"] >= label["x"] + label["width"], field  # the field right of its label
        assert entry["x"] + entry["width"] <= 1024, field  # and inside the window
        assert entry["width"] >= 200, field
        assert label["width"] < 300, field  # the label column is narrow
    await shot(page, "tokens-1024")
    await page.locator("#session summary").click()
    for width in (1280, 1130, 1024, 700):
        await page.set_viewport_size({"width": width, "height": 900})
        for pane in ("admin", "seller", "customer", "ops"):
            heading = page.locator(f"#{pane} h2")
            title, badge = (
                await box(page, f"#{pane} h2"),
                await box(page, f"#{pane} .pane-head .state"),
            )
            # The text's own right edge (the h2 box may stretch): a clear gap before the badge,
            # or the badge on a line of its own.
            text_right = await heading.evaluate(
                "node => { const r = document.createRange(); r.selectNodeContents(node);"
                " return r.getBoundingClientRect().right; }"
            )
            apart = text_right + 6 <= badge["x"] or title["y"] + title["height"] <= badge["y"]
            assert apart, (width, pane, title, badge, text_right)
            assert badge["x"] + badge["width"] <= width, (width, pane)


async def test_typing_indicator_appears_and_disappears(
    page: Page, fanout: Fanout, market: Market
) -> None:
    """The shop's typing.started shows "is typing" to the customer; typing.stopped hides it."""
    typing = page.locator("#customer-typing")
    await expect(typing).to_be_hidden()
    who = {"conversationId": market.conversation, "userId": market.shop, "userType": "seller"}
    await fanout.publish(envelope("typing.started", who))
    await expect(typing).to_be_visible(timeout=WAIT_MS)
    await expect(typing).to_contain_text("is typing")
    await shot(page, "pane-customer-typing", "#customer")
    await fanout.publish(envelope("typing.stopped", who))
    await expect(typing).to_be_hidden(timeout=WAIT_MS)


async def test_soketi_outage_shows_polling_and_events_still_arrive(
    page: Page, fanout: Fanout, market: Market, own_soketi: SoketiServer
) -> None:
    """Soketi stopped: the panes show "polling fallback" and still get events; restarted: live."""
    await asyncio.to_thread(own_soketi.stop)
    for pane in ("admin", "seller", "customer"):
        await expect(page.locator(f"#{pane} .state")).to_have_attribute(
            "data-state", "polling", timeout=30_000
        )
    await expect(page.locator("#admin .state")).to_have_text("polling fallback")
    warning, message = alert("Soketi is down"), chat(market, "still there?", from_shop=True)
    await fanout.publish(warning)
    await fanout.publish(message)
    for list_id, env in (("admin-events", warning), ("customer-chat", message)):
        await expect(row(page, list_id, env["id"])).to_be_visible(timeout=30_000)
    await expect(row(page, "admin-events", warning["id"])).to_contain_text("(polled)")
    await shot(page, "pane-admin-polling", "#admin")

    await asyncio.to_thread(own_soketi.start)
    for pane in ("admin", "seller", "customer"):
        await expect(page.locator(f"#{pane} .state")).to_have_attribute(
            "data-state", "live", timeout=45_000
        )
    after = alert("Soketi is back")
    await fanout.publish(after)
    await expect(row(page, "admin-events", after["id"])).to_be_visible(timeout=WAIT_MS)


async def park(fanout: Fanout, env: dict[str, Any]) -> None:
    """Put a valid envelope straight into the DLQ, as the worker would after giving up."""
    async with fanout.connection.channel(publisher_confirms=True) as channel:
        dead = await channel.get_exchange(f"{fanout.settings.worker_queue}.dead", ensure=True)
        await dead.publish(
            aio_pika.Message(
                orjson.dumps(env),
                message_id=env["id"],
                content_type="application/json",
                headers={
                    "fanout-reason": "retries_exhausted",
                    "fanout-error": "Soketi timed out",
                    "fanout-attempts": 6,
                    "fanout-first-failed-at": "2026-01-05T05:00:00+00:00",
                },
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=env["type"],
        )


async def test_dead_letter_replayed_from_the_ops_pane_is_delivered(
    page: Page, fanout: Fanout
) -> None:
    """A dead letter in the ops table, replayed (confirmed), is delivered and leaves the table."""
    parked = alert("Replayed from the DLQ")
    await park(fanout, parked)
    table_row = page.locator(f"#dlq-table tr[data-id='{parked['id']}']")
    await expect(table_row).to_be_visible(timeout=WAIT_MS)
    await expect(table_row).to_contain_text("retries_exhausted")
    await expect(table_row).to_contain_text("system.alert")
    await expect(table_row).to_contain_text("Soketi timed out")
    await shot(page, "pane-ops-dlq", "#ops")

    # Cancelling leaves it where it is.
    await table_row.get_by_role("button", name="Replay").click()
    dialog = page.locator("#confirm")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#ops-status")).to_have_text("replay cancelled")
    await expect(table_row).to_be_visible()

    await table_row.get_by_role("button", name="Replay").click()
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Confirm").click()
    await expect(page.locator("#ops-status")).to_contain_text(
        "replay: 1 of 1 done", timeout=WAIT_MS
    )
    await expect(table_row).to_have_count(0, timeout=WAIT_MS)
    await expect(row(page, "admin-events", parked["id"])).to_be_visible(timeout=WAIT_MS)
    assert [d for d in await fanout.dead_letters() if d.message_id == parked["id"]] == []


async def test_dlq_depth_is_read_live_everywhere(page: Page, fanout: Fanout) -> None:
    """Two dead letters: the ops figure, the queue chip and the admin figure say 2 at once (no
    queue sample is taken during the test); after replaying them they say 0."""
    figures = (
        page.locator("#ops-dlq-depth"),
        page.locator("#ops-circuits [data-queue='dlq']"),
        page.locator("#admin-dlq"),
    )
    await expect(figures[0]).to_have_text("0", timeout=WAIT_MS)
    first, second = alert("Parked one"), alert("Parked two")
    await park(fanout, first)
    await park(fanout, second)
    await expect(page.locator("#dlq-table tbody tr")).to_have_count(2, timeout=WAIT_MS)
    for figure, text in zip(figures, ("2", "dlq: 2 ready", "2"), strict=True):
        await expect(figure).to_have_text(text, timeout=WAIT_MS)
    answer = await page.request.get(
        f"http://127.0.0.1:{fanout.http_port}/console/api/ops",
        headers={"Authorization": f"Bearer {mint('admin-1', 'admin')}"},
    )
    assert (await answer.json())["queues"]["dlq"] == 2  # the gauge stats-update reads agrees

    filter_form = page.locator("#dlq-filter")
    await filter_form.locator("#dlq-reason").fill("retries_exhausted")
    await filter_form.get_by_role("button", name="Replay matching").click()
    await page.locator("#confirm").get_by_role("button", name="Confirm").click()
    await expect(page.locator("#ops-status")).to_contain_text(
        "replay: 2 of 2 done", timeout=WAIT_MS
    )
    for figure, text in zip(figures, ("0", "dlq: 0 ready", "0"), strict=True):
        await expect(figure).to_have_text(text, timeout=WAIT_MS)


async def test_console_api_needs_an_admin_token(page: Page, fanout: Fanout, market: Market) -> None:
    """The ops API answers 401 without a token and 403 to a seller's token."""
    base = f"http://127.0.0.1:{fanout.http_port}/console/api"
    anonymous = await page.request.get(f"{base}/dlq")
    seller = await page.request.post(
        f"{base}/dlq/purge",
        data={"all": True},
        headers={"Authorization": f"Bearer {mint(market.shop, 'seller')}"},
    )
    assert (anonymous.status, seller.status) == (401, 403)
    assert await seller.json() == {"error": "admin_only"}
