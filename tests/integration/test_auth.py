"""Channel authorization over HTTP on the running worker, proven by real Soketi subscriptions."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import jwt
import pytest
from bson import ObjectId

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber, Received
from tests.integration.harness import Fanout, envelope, running_worker
from tests.integration.proxy import TcpProxy

JWT_SECRET = "integration-jwt-secret-" + "5e" * 24
COOKIE = "bazaar_session"

CUSTOMER = ObjectId()
CUSTOMER_ID = str(CUSTOMER)
U2 = "u2"
SHOP_A = "shopA"
SHOP_B = str(ObjectId())
ADMIN_ID = "admin1"
CONV_OID = str(ObjectId())
CONV_STR = "conv-str"
ORDER_OID = str(ObjectId())
ORDER_STR = "ord-str"

Headers = dict[str, str]


def token(sub: str | int | None, role: str | None = "user", **claims: Any) -> str:
    """A token the backend would issue (HS256, ten minutes), ``None`` leaving a claim out."""
    body: dict[str, Any] = {"sub": sub, "role": role, "exp": int(time.time()) + 600}
    body.update(claims)
    secret = body.pop("secret", JWT_SECRET)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, algorithm="HS256")


def bearer(sub: str | int | None, role: str | None = "user", **claims: Any) -> Headers:
    """An ``Authorization: Bearer`` header for ``token(...)``."""
    return {"Authorization": f"Bearer {token(sub, role, **claims)}"}


def alg_none(sub: str, role: str) -> Headers:
    """An unsigned token crafted by hand: ``{"alg": "none"}``, the claims, an empty signature."""

    def b64(data: dict[str, Any]) -> str:
        raw = json.dumps(data).encode()
        return jwt.utils.base64url_encode(raw).decode()

    claims = {"sub": sub, "role": role, "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."}


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker with AUTH_JWT_SECRET and a cookie name, and conversations and orders seeded."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        auth_jwt_secret=JWT_SECRET,
        auth_cookie_name=COOKIE,
    ) as running:
        await seed(running.db)
        yield running


async def seed(db: Any) -> None:
    """Backend data with ObjectId and string ids mixed, as the contract allows."""
    await db.users.insert_many(
        [{"_id": CUSTOMER, "name": "Aarav"}, {"_id": U2, "name": "Priya"}],
    )
    await db.shops.insert_many(
        [{"_id": SHOP_A, "name": "Chai Point"}, {"_id": ObjectId(SHOP_B), "name": "Kirana"}],
    )
    await db.conversations.insert_many(
        [
            {"_id": ObjectId(CONV_OID), "members": [CUSTOMER, SHOP_A]},
            {"_id": CONV_STR, "members": [U2, ObjectId(SHOP_B)]},
        ]
    )
    await db.orders.insert_many(
        [
            {
                "_id": ObjectId(ORDER_OID),
                "customerId": CUSTOMER,
                "shopIds": [SHOP_A, ObjectId(SHOP_B)],
            },
            {"_id": ORDER_STR, "customerId": U2, "shopIds": [ObjectId(SHOP_B)]},
        ]
    )


def url(fanout: Fanout, path: str) -> str:
    """The worker's own HTTP address for ``path``."""
    return f"http://127.0.0.1:{fanout.http_port}{path}"


async def post(
    fanout: Fanout,
    path: str,
    *,
    form: dict[str, str] | None = None,
    headers: Headers | None = None,
    cookies: dict[str, str] | None = None,
    data: str | None = None,
    json_body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """POST to the worker as pusher-js does (form-encoded); return status, JSON body and text."""
    body = form if data is None else data
    async with (
        aiohttp.ClientSession(cookies=cookies) as session,
        session.post(url(fanout, path), data=body, json=json_body, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text), text


def authorizer(
    fanout: Fanout, headers: Headers | None = None, cookies: dict[str, str] | None = None
) -> Callable[[str, str], Awaitable[str]]:
    """pusher-js's channel authorization: POST the socket id and channel, return ``auth``."""

    async def authorize(socket_id: str, channel: str) -> str:
        status, body, _ = await post(
            fanout,
            "/pusher/auth",
            form={"socket_id": socket_id, "channel_name": channel},
            headers=headers,
            cookies=cookies,
        )
        assert status == 200, (channel, body)
        return str(body["auth"])

    return authorize


async def browser(fanout: Fanout) -> PusherSubscriber:
    """A connected browser-like WebSocket, closed with the worker."""
    sub = PusherSubscriber()
    await sub.connect(fanout.soketi.host, fanout.soketi.port, fanout.soketi.key)
    fanout.subscribers.append(sub)
    return sub


def at_least(count: int) -> Callable[[list[Received]], bool]:
    """A ``wait_for`` condition: ``count`` events or more."""
    return lambda got: len(got) >= count


def _secrets(fanout: Fanout) -> list[str]:
    return [JWT_SECRET, fanout.soketi.secret]


@dataclass(frozen=True)
class Attack:
    """One refused request: what is sent and the status and reason that must come back."""

    name: str
    channel: str | None
    headers: Headers
    status: int
    reason: str
    socket_id: str = "123.456"
    path: str = "/pusher/auth"


ATTACKS = [
    Attack("no token", f"private-user-{CUSTOMER_ID}", {}, 401, "missing_token"),
    Attack(
        "forged signature",
        f"private-user-{CUSTOMER_ID}",
        bearer(CUSTOMER_ID, secret="not-the-secret-" + "0" * 40),
        401,
        "bad_signature",
    ),
    Attack(
        "expired",
        f"private-user-{CUSTOMER_ID}",
        bearer(CUSTOMER_ID, exp=int(time.time()) - 60),
        401,
        "token_expired",
    ),
    Attack("alg none", "private-admin", alg_none(ADMIN_ID, "admin"), 401, "algorithm_not_allowed"),
    Attack("missing role", "private-admin", bearer(ADMIN_ID, None), 401, "missing_claim"),
    Attack("missing sub", "private-admin", bearer(None, "admin"), 401, "missing_claim"),
    Attack(
        "missing exp", "private-admin", bearer(ADMIN_ID, "admin", exp=None), 401, "missing_claim"
    ),
    Attack("unknown role", "private-admin", bearer(ADMIN_ID, "root"), 401, "invalid_role"),
    Attack("numeric sub", "private-user-12", bearer(12), 401, "invalid_subject"),
    Attack(
        "basic auth",
        "private-admin",
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        401,
        "malformed_authorization",
    ),
    Attack(
        "another user's channel", f"private-user-{U2}", bearer(CUSTOMER_ID), 403, "not_your_channel"
    ),
    Attack("prefix 12 -> 123", "private-user-123", bearer("12"), 403, "not_your_channel"),
    Attack(
        "admin on another user's channel",
        f"private-user-{CUSTOMER_ID}",
        bearer(ADMIN_ID, "admin"),
        403,
        "not_your_channel",
    ),
    Attack("prefix 123 -> 12", "private-user-12", bearer("123"), 403, "not_your_channel"),
    Attack(
        "seller on a user channel",
        f"private-user-{SHOP_A}",
        bearer(SHOP_A, "seller"),
        403,
        "not_your_channel",
    ),
    Attack(
        "user on a seller channel", f"private-seller-{SHOP_A}", bearer(U2), 403, "not_your_channel"
    ),
    Attack(
        "admin on a seller channel",
        f"private-seller-{SHOP_A}",
        bearer(ADMIN_ID, "admin"),
        403,
        "not_your_channel",
    ),
    Attack("non-member chat", f"private-chat-{CONV_OID}", bearer(U2), 403, "not_a_member"),
    Attack("unknown chat", "private-chat-nope", bearer(U2), 403, "not_a_member"),
    Attack(
        "another customer's order",
        f"private-order-{ORDER_OID}",
        bearer(U2),
        403,
        "not_an_order_party",
    ),
    Attack(
        "a shop not in the order",
        f"private-order-{ORDER_STR}",
        bearer(SHOP_A, "seller"),
        403,
        "not_an_order_party",
    ),
    Attack(
        "customer id as a seller",
        f"private-order-{ORDER_STR}",
        bearer(U2, "seller"),
        403,
        "not_an_order_party",
    ),
    Attack("private-admin as a user", "private-admin", bearer(CUSTOMER_ID), 403, "admin_only"),
    Attack(
        "private-admin as a seller", "private-admin", bearer(SHOP_A, "seller"), 403, "admin_only"
    ),
    Attack(
        "comma-joined channels",
        f"private-user-{CUSTOMER_ID},private-admin",
        bearer(CUSTOMER_ID),
        403,
        "unknown_channel",
    ),
    Attack(
        "extra segment",
        f"private-user-{CUSTOMER_ID}-x",
        bearer(CUSTOMER_ID),
        403,
        "not_your_channel",
    ),
    Attack(
        "extra segment on an order",
        f"private-order-{ORDER_STR}-x",
        bearer(U2),
        403,
        "not_an_order_party",
    ),
    Attack("presence channel", f"presence-user-{U2}", bearer(U2), 403, "unknown_channel"),
    Attack(
        "unicode id", "private-user-\u0661\u0662", bearer(ADMIN_ID, "admin"), 403, "unknown_channel"
    ),
    Attack("public", "public", bearer(U2), 403, "public_channel_needs_no_auth"),
    Attack("bad socket id", f"private-user-{U2}", bearer(U2), 400, "invalid_socket_id", "abc"),
    Attack("socket id suffix", f"private-user-{U2}", bearer(U2), 400, "invalid_socket_id", "1.2;x"),
    Attack("missing channel", None, bearer(U2), 400, "missing_channel_name"),
    Attack("user-auth without token", None, {}, 401, "missing_token", path="/pusher/user-auth"),
    Attack(
        "user-auth forged",
        None,
        bearer(U2, secret="f" * 64),
        401,
        "bad_signature",
        path="/pusher/user-auth",
    ),
    Attack(
        "user-auth bad socket id",
        None,
        bearer(U2),
        400,
        "invalid_socket_id",
        "1",
        "/pusher/user-auth",
    ),
]


async def test_attacks_are_refused_with_the_right_status_and_reason(fanout: Fanout) -> None:
    """Every attack in the table gets its status and JSON reason, counted, with no secret shown."""
    answers = []
    for attack in ATTACKS:
        form = {"socket_id": attack.socket_id}
        if attack.channel is not None:
            form["channel_name"] = attack.channel
        status, body, text = await post(fanout, attack.path, form=form, headers=attack.headers)
        answers.append((attack.name, status, body))
        assert not any(secret in text for secret in _secrets(fanout)), attack.name
    assert answers == [(a.name, a.status, {"error": a.reason}) for a in ATTACKS]
    expected: dict[tuple[str, str], int] = {}
    for a in ATTACKS:
        endpoint = "user" if a.path == "/pusher/user-auth" else "channel"
        outcome = {400: "invalid", 401: "unauthenticated", 403: "forbidden"}[a.status]
        expected[endpoint, outcome] = expected.get((endpoint, outcome), 0) + 1
    counted = {
        key: fanout.sample("bazaar_fanout_auth_requests_total", endpoint=key[0], outcome=key[1])
        for key in expected
    }
    assert counted == expected


async def test_malformed_bodies_are_refused_as_invalid(fanout: Fanout) -> None:
    """Repeated fields, oversized bodies and broken JSON answer 400 with a reason."""
    headers = bearer(U2)
    repeated = f"socket_id=1.2&channel_name=private-user-{U2}&channel_name=private-admin"
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    answers = [
        await post(fanout, "/pusher/auth", data=repeated, headers=headers | form_type),
        await post(fanout, "/pusher/auth", data="x=" + "a" * 9000, headers=headers | form_type),
        await post(
            fanout,
            "/pusher/auth",
            data="{not json",
            headers=headers | {"Content-Type": "application/json"},
        ),
        await post(
            fanout,
            "/pusher/auth",
            json_body={"socket_id": 1.2, "channel_name": "x"},
            headers=headers,
        ),
    ]
    assert [(status, body) for status, body, _ in answers] == [
        (400, {"error": "invalid_body"}),
        (400, {"error": "body_too_large"}),
        (400, {"error": "invalid_body"}),
        (400, {"error": "invalid_body"}),
    ]


@dataclass(frozen=True)
class Account:
    """A signed-in browser: its token and the channels it legitimately subscribes to."""

    sub: str
    role: str
    channels: tuple[str, ...]


ACCOUNTS = [
    Account(
        CUSTOMER_ID,
        "user",
        (f"private-user-{CUSTOMER_ID}", f"private-order-{ORDER_OID}", f"private-chat-{CONV_OID}"),
    ),
    Account(
        U2, "user", (f"private-user-{U2}", f"private-order-{ORDER_STR}", f"private-chat-{CONV_STR}")
    ),
    Account(
        SHOP_A,
        "seller",
        (f"private-seller-{SHOP_A}", f"private-order-{ORDER_OID}", f"private-chat-{CONV_OID}"),
    ),
    Account(
        SHOP_B,
        "seller",
        (f"private-order-{ORDER_OID}", f"private-order-{ORDER_STR}", f"private-chat-{CONV_STR}"),
    ),
    Account(
        ADMIN_ID,
        "admin",
        ("private-admin", f"private-user-{ADMIN_ID}", f"private-order-{ORDER_OID}"),
    ),
]


def status_changed(order_id: str, customer_id: str, shop_id: str) -> dict[str, Any]:
    """An ``order.status_changed`` envelope (to the customer, the order, the shop, admins)."""
    data = {"orderId": order_id, "customerId": customer_id, "shopId": shop_id, "status": "shipped"}
    return envelope("order.status_changed", data)


def message(
    conversation_id: str, sender: tuple[str, str], recipient: tuple[str, str]
) -> dict[str, Any]:
    """A ``message.created`` envelope (to the chat and the recipient's personal channel)."""
    data = {
        "messageId": f"m-{conversation_id}",
        "conversationId": conversation_id,
        "senderId": sender[0],
        "senderType": sender[1],
        "recipientId": recipient[0],
        "recipientType": recipient[1],
        "content": "Is it fresh?",
    }
    return envelope("message.created", data)


async def test_every_legitimate_case_subscribes_through_soketi_and_receives(fanout: Fanout) -> None:
    """Each allowed channel is signed by /pusher/auth, accepted by Soketi, and gets its events."""
    browsers: dict[str, PusherSubscriber] = {}
    for account in ACCOUNTS:
        sub = await browser(fanout)
        authorize = authorizer(fanout, bearer(account.sub, account.role))
        for channel in account.channels:
            await sub.subscribe(channel, authorize)
        browsers[account.sub] = sub

    await fanout.publish(status_changed(ORDER_OID, CUSTOMER_ID, SHOP_A))
    await fanout.publish(status_changed(ORDER_STR, U2, SHOP_B))
    await fanout.publish(message(CONV_OID, (CUSTOMER_ID, "user"), (SHOP_A, "seller")))
    await fanout.publish(message(CONV_STR, (SHOP_B, "seller"), (U2, "user")))

    # (channel, Pusher event, orderId or conversationId) each account must receive.
    expected = {
        CUSTOMER_ID: {
            (f"private-user-{CUSTOMER_ID}", "order-update", ORDER_OID),
            (f"private-order-{ORDER_OID}", "order-update", ORDER_OID),
            (f"private-chat-{CONV_OID}", "new-message", CONV_OID),
        },
        U2: {
            (f"private-user-{U2}", "order-update", ORDER_STR),
            (f"private-user-{U2}", "new-message", CONV_STR),
            (f"private-order-{ORDER_STR}", "order-update", ORDER_STR),
            (f"private-chat-{CONV_STR}", "new-message", CONV_STR),
        },
        SHOP_A: {
            (f"private-seller-{SHOP_A}", "order-update", ORDER_OID),
            (f"private-seller-{SHOP_A}", "new-message", CONV_OID),
            (f"private-order-{ORDER_OID}", "order-update", ORDER_OID),
            (f"private-chat-{CONV_OID}", "new-message", CONV_OID),
        },
        SHOP_B: {
            (f"private-order-{ORDER_OID}", "order-update", ORDER_OID),
            (f"private-order-{ORDER_STR}", "order-update", ORDER_STR),
            (f"private-chat-{CONV_STR}", "new-message", CONV_STR),
        },
        ADMIN_ID: {
            ("private-admin", "order-update", ORDER_OID),
            ("private-admin", "order-update", ORDER_STR),
            (f"private-order-{ORDER_OID}", "order-update", ORDER_OID),
        },
    }
    for sub_id, sub in browsers.items():
        await sub.wait_for(at_least(len(expected[sub_id])), timeout_s=15)
        got = {
            (r.channel, r.event, r.data.get("orderId") or r.data.get("conversationId"))
            for r in sub.events()
        }
        assert got == expected[sub_id], sub_id
    allowed = sum(len(a.channels) for a in ACCOUNTS)
    assert (
        fanout.sample("bazaar_fanout_auth_requests_total", endpoint="channel", outcome="allowed")
        == allowed
    )


async def test_cookie_and_json_bodies_are_accepted(fanout: Fanout) -> None:
    """The configured cookie carries the token, and a JSON body works like the form."""
    sub = await browser(fanout)
    by_cookie = authorizer(fanout, cookies={COOKIE: token(U2)})
    await sub.subscribe(f"private-order-{ORDER_STR}", by_cookie)

    status, body, _ = await post(
        fanout,
        "/pusher/auth",
        json_body={"socket_id": sub.socket_id, "channel_name": f"private-chat-{CONV_STR}"},
        headers=bearer(U2),
    )
    assert status == 200
    await sub.subscribe(f"private-chat-{CONV_STR}", lambda _sid, _ch: str(body["auth"]))

    await fanout.publish(status_changed(ORDER_STR, U2, SHOP_B))
    await fanout.publish(message(CONV_STR, (SHOP_B, "seller"), (U2, "user")))
    await sub.wait_for(lambda got: len(got) >= 2, timeout_s=15)
    assert sorted((r.channel, r.event) for r in sub.events()) == [
        (f"private-chat-{CONV_STR}", "new-message"),
        (f"private-order-{ORDER_STR}", "order-update"),
    ]


async def test_a_bearer_header_wins_over_the_cookie(fanout: Fanout) -> None:
    """With both present the header decides: a forged header is refused despite a good cookie."""
    status, body, _ = await post(
        fanout,
        "/pusher/auth",
        form={"socket_id": "1.2", "channel_name": f"private-user-{U2}"},
        headers=bearer(U2, secret="x" * 64),
        cookies={COOKIE: token(U2)},
    )
    assert (status, body) == (401, {"error": "bad_signature"})


async def test_user_auth_signs_the_tokens_subject(fanout: Fanout) -> None:
    """/pusher/user-auth signs ``{id: sub, user_info: {role}}`` with the Soketi app secret."""
    socket_id = "1234.5678"
    status, body, text = await post(
        fanout, "/pusher/user-auth", form={"socket_id": socket_id}, headers=bearer(SHOP_B, "seller")
    )
    assert status == 200
    assert json.loads(body["user_data"]) == {"id": SHOP_B, "user_info": {"role": "seller"}}
    signed = f"{socket_id}::user::{body['user_data']}".encode()
    digest = hmac.new(fanout.soketi.secret.encode(), signed, hashlib.sha256).hexdigest()
    assert body["auth"] == f"{fanout.soketi.key}:{digest}"
    assert fanout.soketi.secret not in text
    assert (
        fanout.sample("bazaar_fanout_auth_requests_total", endpoint="user", outcome="allowed") == 1
    )


async def test_without_a_secret_the_endpoints_answer_503(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> None:
    """With AUTH_JWT_SECRET unset both endpoints answer 503 ``auth_disabled``, counted."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
    ) as fanout:
        form = {"socket_id": "1.2", "channel_name": f"private-user-{U2}"}
        answers = [
            (await post(fanout, path, form=form, headers=bearer(U2)))[:2]
            for path in ("/pusher/auth", "/pusher/user-auth")
        ]
        counted = [
            fanout.sample("bazaar_fanout_auth_requests_total", endpoint=e, outcome="unavailable")
            for e in ("channel", "user")
        ]
    assert answers == [(503, {"error": "auth_disabled"})] * 2
    assert counted == [1, 1]


async def test_mongodb_down_answers_503_only_where_facts_are_needed(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any, mongo_proxy: TcpProxy
) -> None:
    """With MongoDB cut, chat channels answer 503 ``store_unavailable``; personal ones still 200."""
    parts = urlsplit(mongo_url)
    via = urlunsplit((parts.scheme, f"127.0.0.1:{mongo_proxy.port}", parts.path or "/", "", ""))
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        worker_mongo_url=via,
        mongodb_timeout_s=0.5,
        auth_jwt_secret=JWT_SECRET,
    ) as fanout:
        await seed(fanout.db)
        await mongo_proxy.cut()
        chat = await post(
            fanout,
            "/pusher/auth",
            form={"socket_id": "1.2", "channel_name": f"private-chat-{CONV_STR}"},
            headers=bearer(U2),
        )
        own = await post(
            fanout,
            "/pusher/auth",
            form={"socket_id": "1.2", "channel_name": f"private-user-{U2}"},
            headers=bearer(U2),
        )
        await mongo_proxy.restore()
    assert chat[:2] == (503, {"error": "store_unavailable"})
    assert own[0] == 200
