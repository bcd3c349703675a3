"""AUTH_MODE=forward on the running worker: the backend's session decides, through real Soketi
subscriptions, a real session backend (express-session cookies, sessions in Redis) and outages
injected at the network."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from structlog.testing import capture_logs

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber
from tests.conftest import Names
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.proxy import TcpProxy
from tests.integration.session_backend import (
    SESSION_COOKIE,
    Account,
    SessionBackend,
    cookie_value,
)
from tests.integration.test_auth import (
    ADMIN_ID,
    ATTACKS,
    CONV_OID,
    CUSTOMER_ID,
    ORDER_OID,
    SHOP_A,
    U2,
    seed,
)

TTL_S = 5.0
CUSTOMER = Account(CUSTOMER_ID, "user")
SELLER = Account(SHOP_A, "seller", name="Chai Point")
ADMIN = Account(ADMIN_ID, "admin", name="Ops", role="Admin")
Answer = tuple[int, dict[str, Any], str]


@pytest.fixture
async def backend_path(backend: SessionBackend) -> AsyncIterator[TcpProxy]:
    """A cuttable path from the worker to the session backend."""
    proxy = await TcpProxy("127.0.0.1", backend.port).start()
    yield proxy
    await proxy.close()


def forward_settings(path: TcpProxy, **overrides: Any) -> dict[str, Any]:
    """Worker settings for forward mode through ``path`` (admins' role "Admin" mapped too)."""
    return {
        "auth_mode": "forward",
        "auth_forward_url": f"http://127.0.0.1:{path.port}/api/auth/me",
        "auth_role_map": "user:user,seller:seller,admin:admin,Admin:admin",
        "auth_forward_cache_ttl_s": TTL_S,
        "auth_forward_timeout_s": 1.0,
        **overrides,
    }


@pytest.fixture
async def fanout(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    names: Names,
    backend_path: TcpProxy,
) -> AsyncIterator[Fanout]:
    """A worker in forward mode, asking the session backend; conversations and orders seeded."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        **forward_settings(backend_path),
    ) as running:
        await seed(running.db)
        yield running


def with_session(cookie: str) -> dict[str, str]:
    """The ``Cookie`` header a signed-in browser sends."""
    return {"Cookie": f"{SESSION_COOKIE}={cookie}"}


async def call(
    fanout: Fanout,
    path: str,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    method: str = "POST",
) -> Answer:
    """Call the worker as a browser would; return status, JSON body and the raw text."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{fanout.http_port}{path}", data=form, headers=headers
        ) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else {}, text


async def ask(fanout: Fanout, channel: str, headers: dict[str, str] | None = None) -> Answer:
    """``POST /pusher/auth`` for ``channel`` with ``headers``."""
    form = {"socket_id": "1234.5678", "channel_name": channel}
    return await call(fanout, "/pusher/auth", headers, form)


def status_changed() -> dict[str, Any]:
    """The seeded order shipped: to the customer, the order, the shop and the admins."""
    data = {"orderId": ORDER_OID, "customerId": CUSTOMER_ID, "shopId": SHOP_A, "status": "shipped"}
    return envelope("order.status_changed", data)


async def test_each_role_subscribes_to_exactly_its_channels(
    fanout: Fanout, backend: SessionBackend
) -> None:
    """A signed-in customer, seller and admin subscribe through Soketi to theirs, and no more."""
    allowed = {
        CUSTOMER: [f"private-user-{CUSTOMER_ID}", f"private-order-{ORDER_OID}"],
        SELLER: [f"private-seller-{SHOP_A}", f"private-chat-{CONV_OID}"],
        ADMIN: ["private-admin", f"private-user-{ADMIN_ID}", f"private-order-{ORDER_OID}"],
    }
    refused = {
        CUSTOMER: [(f"private-user-{U2}", "not_your_channel"), ("private-admin", "admin_only")],
        SELLER: [(f"private-user-{SHOP_A}", "not_your_channel"), ("private-admin", "admin_only")],
        ADMIN: [(f"private-user-{CUSTOMER_ID}", "not_your_channel")],
    }
    subscribers: dict[Account, PusherSubscriber] = {}
    for account, channels in allowed.items():
        cookie = await backend.sign_in(account)
        sub = await connect(fanout)

        async def authorize(socket_id: str, channel: str, cookie: str = cookie) -> str:
            form = {"socket_id": socket_id, "channel_name": channel}
            status, body, _ = await call(fanout, "/pusher/auth", with_session(cookie), form)
            assert status == 200, (channel, body)
            return str(body["auth"])

        for channel in channels:
            await sub.subscribe(channel, authorize)
        subscribers[account] = sub
        answers = [(await ask(fanout, ch, with_session(cookie)))[:2] for ch, _ in refused[account]]
        assert answers == [(403, {"error": reason}) for _, reason in refused[account]]

    await fanout.publish(status_changed())
    expected = {
        CUSTOMER: set(allowed[CUSTOMER]),
        SELLER: {f"private-seller-{SHOP_A}"},
        ADMIN: {"private-admin", f"private-order-{ORDER_OID}"},
    }
    for account, sub in subscribers.items():
        count = len(expected[account])
        await sub.wait_for(lambda got, count=count: len(got) >= count, timeout_s=15)
        assert {r.channel for r in sub.events()} == expected[account], account


async def connect(fanout: Fanout) -> PusherSubscriber:
    """A browser-like WebSocket on the worker's Soketi, closed with the worker."""
    sub = PusherSubscriber()
    await sub.connect(fanout.soketi.host, fanout.soketi.port, fanout.soketi.key)
    fanout.subscribers.append(sub)
    return sub


async def test_user_auth_signs_the_backends_subject(
    fanout: Fanout, backend: SessionBackend
) -> None:
    """/pusher/user-auth signs the id and the mapped role the backend answered ("Admin")."""
    cookie = await backend.sign_in(ADMIN)
    status, body, _ = await call(
        fanout, "/pusher/user-auth", with_session(cookie), {"socket_id": "1.2"}
    )
    assert status == 200
    assert json.loads(body["user_data"]) == {"id": ADMIN_ID, "user_info": {"role": "admin"}}


async def test_without_a_session_the_answer_is_401(fanout: Fanout, backend: SessionBackend) -> None:
    """No cookie, an unknown session, a forged signature or a stray Bearer header: all 401."""
    real = await backend.sign_in(CUSTOMER)
    forged = cookie_value(real.split(".")[0].removeprefix("s%3A"), "not-the-backend-secret")
    channel = f"private-user-{CUSTOMER_ID}"
    answers = [
        (await ask(fanout, channel))[:2],
        (await ask(fanout, channel, {"Cookie": "theme=dark"}))[:2],
        (await ask(fanout, channel, with_session(cookie_value("nope", backend.secret))))[:2],
        (await ask(fanout, channel, with_session(forged)))[:2],
        (await ask(fanout, channel, {"Authorization": "Bearer made-up"}))[:2],
    ]
    assert answers == [
        (401, {"error": "missing_credentials"}),
        (401, {"error": "not_signed_in"}),
        (401, {"error": "not_signed_in"}),
        (401, {"error": "not_signed_in"}),
        (401, {"error": "not_signed_in"}),
    ]
    assert backend.calls == 4  # no credentials at all: the backend is not asked


async def test_a_backend_that_cannot_answer_is_503_and_nothing_is_cached(
    fanout: Fanout, backend: SessionBackend, backend_path: TcpProxy
) -> None:
    """Backend cut, erring, answering HTML or too slow: 503 each time; back: 200 again."""
    channel = f"private-user-{CUSTOMER_ID}"
    cookies = [await backend.sign_in(CUSTOMER) for _ in range(5)]
    await backend_path.cut()
    cut = await ask(fanout, channel, with_session(cookies[0]))
    await backend_path.restore()
    backend.failing = True
    failing = await ask(fanout, channel, with_session(cookies[1]))
    backend.failing, backend.garbage = False, True
    garbage = await ask(fanout, channel, with_session(cookies[2]))
    backend.garbage, backend.hold = False, asyncio.Event()
    slow = await ask(fanout, channel, with_session(cookies[3]))
    backend.hold.set()
    backend.hold = None
    assert [answer[:2] for answer in (cut, failing, garbage, slow)] == [
        (503, {"error": "auth_unreachable"}),
        (503, {"error": "auth_backend_error"}),
        (503, {"error": "auth_backend_invalid"}),
        (503, {"error": "auth_unreachable"}),
    ]
    # The same sessions, asked again, reach the backend (no failure was kept) and pass.
    again = [(await ask(fanout, channel, with_session(cookie)))[0] for cookie in cookies[:4]]
    assert again == [200] * 4
    assert (
        fanout.sample(
            "bazaar_fanout_auth_requests_total", endpoint="channel", outcome="unavailable"
        )
        == 4
    )


async def test_logging_out_takes_effect_within_the_cache_ttl(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    names: Names,
    backend: SessionBackend,
    backend_path: TcpProxy,
) -> None:
    """After logout the cached answer serves at most the TTL; then 401, never 200 again."""
    ttl_s = 2.0
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        **forward_settings(backend_path, auth_forward_cache_ttl_s=ttl_s),
    ) as fanout:
        cookie = await backend.sign_in(CUSTOMER)
        channel = f"private-user-{CUSTOMER_ID}"
        asked_at = time.monotonic()
        first = await ask(fanout, channel, with_session(cookie))
        await backend.sign_out(cookie)
        cached = await ask(fanout, channel, with_session(cookie))
        assert time.monotonic() - asked_at < ttl_s, "too slow to observe the cached answer"
        assert (first[0], cached[0], backend.calls) == (200, 200, 1)

        statuses: list[int] = []
        async with asyncio.timeout(ttl_s + 3):
            while not statuses or statuses[-1] != 401:
                statuses.append((await ask(fanout, channel, with_session(cookie)))[0])
                await asyncio.sleep(0.05)  # polling the worker's answer
        refused_after_s = time.monotonic() - asked_at
        later = [(await ask(fanout, channel, with_session(cookie)))[0] for _ in range(3)]
    assert set(statuses[:-1]) <= {200}
    assert ttl_s <= refused_after_s < ttl_s + 3
    assert later == [401, 401, 401]  # a refusal is never kept, and nothing says 200 again


async def test_one_backend_call_per_session_while_cached(
    fanout: Fanout, backend: SessionBackend
) -> None:
    """A page opening five private channels at once costs the backend one call."""
    cookie = await backend.sign_in(ADMIN)
    channels = [
        "private-admin",
        f"private-user-{ADMIN_ID}",
        f"private-order-{ORDER_OID}",
        f"private-user-{CUSTOMER_ID}",
        f"private-seller-{SHOP_A}",
    ]
    answers = await asyncio.gather(*(ask(fanout, ch, with_session(cookie)) for ch in channels))
    assert [status for status, _, _ in answers] == [200, 200, 200, 403, 403]
    assert backend.calls == 1


async def test_only_cookie_and_authorization_reach_the_backend(
    fanout: Fanout, backend: SessionBackend
) -> None:
    """The backend gets the browser's Cookie and Authorization, none of its other headers."""
    cookie = await backend.sign_in(CUSTOMER)
    browser = with_session(cookie) | {
        "Authorization": "Bearer abc",
        "Origin": "https://shop.example.com",
        "Referer": "https://shop.example.com/orders",
        "User-Agent": "Mozilla/5.0 (Browser)",
        "X-Socket-Id": "1.2",
        "X-Forwarded-For": "203.0.113.9",
    }
    status, _, _ = await ask(fanout, f"private-user-{CUSTOMER_ID}", browser)
    assert status == 200
    (seen,) = backend.seen
    assert seen["Cookie"] == f"{SESSION_COOKIE}={cookie}"
    assert seen["Authorization"] == "Bearer abc"
    names = {name.lower() for name in seen}
    assert not names & {"origin", "referer", "x-socket-id", "x-forwarded-for"}
    assert seen.get("User-Agent") != "Mozilla/5.0 (Browser)"


async def test_every_policy_attack_row_is_refused_in_forward_mode_too(
    fanout: Fanout, backend: SessionBackend
) -> None:
    """test_auth's 400/403 rows, with the same subject signed in by session: same answers."""
    rows = [a for a in ATTACKS if a.status in (400, 403)]
    cookies: dict[tuple[str, str], str] = {}
    answers = []
    for attack in rows:
        token = attack.headers["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, options={"verify_signature": False})
        who = (claims["sub"], claims["role"])
        if who not in cookies:
            cookies[who] = await backend.sign_in(Account(who[0], who[1]))
        form = {"socket_id": attack.socket_id}
        if attack.channel is not None:
            form["channel_name"] = attack.channel
        status, body, _ = await call(fanout, attack.path, with_session(cookies[who]), form)
        answers.append((attack.name, status, body))
    assert answers == [(a.name, a.status, {"error": a.reason}) for a in rows]


async def test_history_and_console_use_the_same_session(
    fanout: Fanout, backend: SessionBackend
) -> None:
    """History reads and the console's admin API are authorized by the backend's session."""
    customer, seller, admin = [await backend.sign_in(a) for a in (CUSTOMER, SELLER, ADMIN)]
    own = await call(
        fanout, f"/channels/private-user-{CUSTOMER_ID}/events", with_session(customer), None, "GET"
    )
    other = await call(
        fanout, f"/channels/private-user-{U2}/events", with_session(customer), None, "GET"
    )
    ops_admin = await call(fanout, "/console/api/ops", with_session(admin), None, "GET")
    ops_seller = await call(fanout, "/console/api/ops", with_session(seller), None, "GET")
    # A form post (what a cross-site page can send with the cookie) never reaches an action.
    purge = await call(fanout, "/console/api/dlq/purge", with_session(admin), {"all": "true"})
    assert (own[0], other[:2]) == (200, (403, {"error": "not_your_channel"}))
    assert (ops_admin[0], ops_seller[:2]) == (200, (403, {"error": "admin_only"}))
    assert (purge[0], purge[1]["error"]) == (415, "json_required")


async def test_no_cookie_or_secret_is_logged_or_answered(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    names: Names,
    backend: SessionBackend,
    backend_path: TcpProxy,
) -> None:
    """Allowed, refused and failed calls: no cookie, session id or secret in a log line or body."""
    with capture_logs() as logs:
        async with running_worker(
            rabbitmq_url=rabbitmq_url,
            mongo_url=mongo_url,
            soketi=soketi,
            names=names,
            **forward_settings(backend_path),
        ) as fanout:
            await seed(fanout.db)
            cookie = await backend.sign_in(CUSTOMER)
            answers = [
                await ask(fanout, f"private-user-{CUSTOMER_ID}", with_session(cookie)),
                await ask(fanout, f"private-user-{U2}", with_session(cookie)),
                await ask(fanout, "private-admin", with_session(cookie_value("x", "y"))),
                await ask(fanout, "private-admin", {"Authorization": "Bearer s3cr3t-token"}),
            ]
            await backend.sign_out(cookie)
            backend.failing = True
            fresh = await backend.sign_in(SELLER)
            answers.append(await ask(fanout, f"private-seller-{SHOP_A}", with_session(fresh)))
            await backend_path.cut()
            answers.append(await ask(fanout, "private-admin", with_session(fresh)))
    assert [status for status, _, _ in answers] == [200, 403, 401, 401, 503, 503]
    secrets_ = [
        *backend.issued,
        *(cookie.split(".")[0].removeprefix("s%3A") for cookie in backend.issued),
        backend.secret,
        soketi.secret,
        "s3cr3t-token",
        fanout.settings.auth_forward_url or "",
    ]
    lines = [repr(entry) for entry in logs]
    assert any(entry.get("event") == "auth.forward_failed" for entry in logs)
    assert any(entry.get("event") == "auth.decided" for entry in logs)
    for secret in secrets_:
        assert not any(secret in line for line in lines), secret
        assert not any(secret in text for _, _, text in answers), secret
