"""The backend's own documents (tests/fixtures/bhavya.py) in MongoDB: enrichment and order
parties read them as the backend writes them, and never leak an object's repr."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from bson import ObjectId

from devtools.devstack import SoketiServer
from devtools.watch import PusherSubscriber
from tests.fixtures import bhavya
from tests.integration.harness import Fanout, envelope, running_worker

JWT_SECRET = "real-documents-jwt-secret-" + "7a" * 24


@dataclass(frozen=True)
class Marketplace:
    """One marketplace's documents: two customers, two shops, their products, chat and orders."""

    aarav: dict[str, Any]
    priya: dict[str, Any]
    chai: dict[str, Any]
    kirana: dict[str, Any]
    tea: dict[str, Any]
    rice: dict[str, Any]
    chat: dict[str, Any]
    chai_order: dict[str, Any]
    kirana_order: dict[str, Any]


def marketplace(*, as_objects: bool = False) -> Marketplace:
    """Fresh documents; with ``as_objects`` every avatar and image is ``{public_id, url}``."""

    def img(name: str) -> str | dict[str, Any]:
        return bhavya.image(name, as_object=as_objects)

    aarav = bhavya.user(name="Aarav Sharma", avatar=img("avatar-aarav-1717.png"))
    chai = bhavya.shop(name="Chai Point", avatar=img("chai-point.png"))
    kirana = bhavya.shop(name="Kirana Corner")  # avatar null: never uploaded
    tea = bhavya.product(chai, name="Masala Chai 250 g", images=[img("chai-1.jpg"), "chai-2.jpg"])
    rice = bhavya.product(kirana, name="Basmati Rice 5 kg", images=[], discount_price=640.5)
    return Marketplace(
        aarav=aarav,
        priya=bhavya.user(name="Priya Verma"),
        chai=chai,
        kirana=kirana,
        tea=tea,
        rice=rice,
        chat=bhavya.conversation(aarav, chai),
        # The checkout of one cart with both shops' products: one order per shop.
        chai_order=bhavya.order(aarav, [(tea, 2)]),
        kirana_order=bhavya.order(aarav, [(rice, 1)], payment_type="Credit Card"),
    )


async def seed(db: Any, world: Marketplace) -> None:
    """Insert ``world`` into the backend's collections."""
    await db.users.insert_many([world.aarav, world.priya])
    await db.shops.insert_many([world.chai, world.kirana])
    await db.products.insert_many([world.tea, world.rice])
    await db.conversations.insert_one(world.chat)
    await db.orders.insert_many([world.chai_order, world.kirana_order])


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Any
) -> AsyncIterator[Fanout]:
    """A worker verifying the backend's JWTs (the default auth mode), on an empty database."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        auth_jwt_secret=JWT_SECRET,
    ) as running:
        yield running


def oid(doc: dict[str, Any]) -> str:
    """A document's id as events and channel names carry it."""
    return str(doc["_id"])


async def publish_and_receive(
    fanout: Fanout, sub: PusherSubscriber, event_type: str, data: dict[str, Any], count: int
) -> dict[str, Any]:
    """Publish one event; wait for its ``count`` deliveries; return them by channel."""
    env = envelope(event_type, data)
    await fanout.publish(env)

    def mine(got: list[Any]) -> list[Any]:
        return [r for r in got if r.data.get("eventId") == env["id"]]

    await sub.wait_for(lambda got: len(mine(got)) >= count, 15)
    received = mine(sub.events())
    assert len(received) == count
    return {r.channel: r.data for r in received}


async def test_chat_messages_carry_the_senders_name_and_avatar_as_stored(fanout: Fanout) -> None:
    """A text and a photo message built from real message documents reach the chat and the
    recipient with ``type``, the attachment and the sender's name and avatar string."""
    world = marketplace()
    await seed(fanout.db, world)
    chat = f"private-chat-{oid(world.chat)}"
    sub = await fanout.subscriber(
        chat, f"private-seller-{oid(world.chai)}", f"private-user-{oid(world.aarav)}"
    )
    text = bhavya.message(world.chat, world.aarav, text="Is it fresh?")
    got = await publish_and_receive(
        fanout, sub, "message.created", bhavya.message_created(text, world.chat, "user"), 2
    )
    for payload in got.values():
        assert payload["content"] == "Is it fresh?"
        assert (payload["type"], payload["attachmentUrl"]) == ("text", None)
        assert (payload["senderName"], payload["senderAvatar"]) == (
            "Aarav Sharma",
            "avatar-aarav-1717.png",
        )
        assert "kind" not in payload
    photo = bhavya.message(world.chat, world.chai, text="", images="photo-1717.jpeg")
    got = await publish_and_receive(
        fanout, sub, "message.created", bhavya.message_created(photo, world.chat, "seller"), 2
    )
    assert set(got) == {chat, f"private-user-{oid(world.aarav)}"}
    for payload in got.values():
        assert (payload["type"], payload["attachmentUrl"]) == ("image", "photo-1717.jpeg")
        assert (payload["senderName"], payload["senderAvatar"]) == ("Chai Point", "chai-point.png")


async def test_orders_are_enriched_from_the_product_documents(fanout: Fanout) -> None:
    """order.created built from a saved order (``user``, ``cart``) names the customer and each
    item's product and first image; a product without images has none."""
    world = marketplace()
    await seed(fanout.db, world)
    order_id, chai = oid(world.chai_order), oid(world.chai)
    sub = await fanout.subscriber(
        f"private-seller-{chai}", f"private-order-{order_id}", "private-admin"
    )
    got = await publish_and_receive(
        fanout, sub, "order.created", bhavya.order_created(world.chai_order), 3
    )
    item = {"productId": oid(world.tea), "shopId": chai, "quantity": 2, "price": 180}
    seller = got[f"private-seller-{chai}"]
    assert seller["items"] == [{**item, "name": "Masala Chai 250 g", "image": "chai-1.jpg"}]
    assert (seller["customerName"], seller["shopTotal"]) == ("Aarav Sharma", 360)
    assert got[f"private-order-{order_id}"]["status"] == "placed"
    assert got["private-admin"]["customerName"] == "Aarav Sharma"

    kirana = oid(world.kirana)
    sub = await fanout.subscriber(f"private-seller-{kirana}")
    got = await publish_and_receive(
        fanout, sub, "order.created", bhavya.order_created(world.kirana_order), 1
    )
    [line] = got[f"private-seller-{kirana}"]["items"]
    assert (line["name"], line["image"]) == ("Basmati Rice 5 kg", None)


async def test_image_objects_give_their_url_and_never_a_repr(fanout: Fanout) -> None:
    """Avatars and product images stored as ``{public_id, url}`` reach browsers as the url."""
    world = marketplace(as_objects=True)
    await seed(fanout.db, world)
    chai = oid(world.chai)
    sub = await fanout.subscriber(f"private-chat-{oid(world.chat)}", f"private-seller-{chai}")
    text = bhavya.message(world.chat, world.aarav)
    chat = await publish_and_receive(
        fanout, sub, "message.created", bhavya.message_created(text, world.chat, "user"), 2
    )
    order = await publish_and_receive(
        fanout, sub, "order.created", bhavya.order_created(world.chai_order), 1
    )
    assert {p["senderAvatar"] for p in chat.values()} == {world.aarav["avatar"]["url"]}
    [line] = order[f"private-seller-{chai}"]["items"]
    assert line["image"] == world.tea["images"][0]["url"]
    for payload in [*chat.values(), *order.values()]:
        assert b"public_id" not in orjson.dumps(payload)


def bearer(subject: dict[str, Any] | str, role: str) -> dict[str, str]:
    """The ``Authorization`` header of a backend session token (``sub``, ``role``, ``exp``)."""
    sub = subject if isinstance(subject, str) else oid(subject)
    claims = {"sub": sub, "role": role, "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


async def ask_auth(
    fanout: Fanout, channel: str, headers: dict[str, str], socket_id: str = "1234.5678"
) -> tuple[int, dict[str, Any]]:
    """What the worker's ``/pusher/auth`` answers pusher-js for ``channel``: status and body."""
    url = f"http://127.0.0.1:{fanout.http_port}/pusher/auth"
    form = {"socket_id": socket_id, "channel_name": channel}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=form, headers=headers) as response,
    ):
        return response.status, orjson.loads(await response.read())


async def auth_status(fanout: Fanout, channel: str, headers: dict[str, str]) -> int:
    """The status ``/pusher/auth`` answers for ``channel``."""
    return (await ask_auth(fanout, channel, headers))[0]


async def test_a_real_orders_customer_shop_and_admins_may_subscribe(fanout: Fanout) -> None:
    """``private-order-{id}`` of an order saved by the backend admits its customer (``user._id``),
    its shop (``cart[].shopId``) and admins; another customer or shop is refused."""
    world = marketplace()
    # Other code embeds the customer with an ObjectId: read alike.
    legacy = {
        **world.kirana_order,
        "user": {**world.kirana_order["user"], "_id": world.aarav["_id"]},
    }
    await seed(fanout.db, dataclasses.replace(world, kirana_order=legacy))
    cases = [
        (world.chai_order, bearer(world.aarav, "user"), 200),
        (world.chai_order, bearer(world.chai, "seller"), 200),
        (world.chai_order, bearer("admin-1", "admin"), 200),
        (world.chai_order, bearer(world.kirana, "seller"), 403),
        (world.chai_order, bearer(world.priya, "user"), 403),
        (world.chai_order, bearer(world.aarav, "seller"), 403),
        (legacy, bearer(world.aarav, "user"), 200),
        (legacy, bearer(world.kirana, "seller"), 200),
        (legacy, bearer(world.chai, "seller"), 403),
        ({"_id": ObjectId()}, bearer(world.aarav, "user"), 403),
    ]
    got = [await auth_status(fanout, f"private-order-{oid(o)}", h) for o, h, _ in cases]
    assert got == [status for _, _, status in cases]


async def test_a_real_orders_parties_receive_its_status_changes(fanout: Fanout) -> None:
    """The customer and the shop, signed in with their JWTs, subscribe to the order's channel
    through the worker and receive its status change."""
    world = marketplace()
    await seed(fanout.db, world)
    channel = f"private-order-{oid(world.chai_order)}"
    customer, shop = await browser(fanout), await browser(fanout)
    await customer.subscribe(channel, signer(fanout, bearer(world.aarav, "user")))
    await shop.subscribe(channel, signer(fanout, bearer(world.chai, "seller")))
    data = bhavya.status_changed(world.chai_order, "Transferred to delivery partner")
    got = await publish_and_receive(fanout, customer, "order.status_changed", data, 1)
    assert got[channel]["status"] == "Transferred to delivery partner"
    await shop.wait_for(lambda received: len(received) >= 1, 15)
    assert [r.data["status"] for r in shop.events(channel, "order-update")] == [
        "Transferred to delivery partner"
    ]


async def browser(fanout: Fanout) -> PusherSubscriber:
    """A browser-like WebSocket connected to Soketi, closed with the worker."""
    sub = PusherSubscriber()
    await sub.connect(fanout.soketi.host, fanout.soketi.port, fanout.soketi.key)
    fanout.subscribers.append(sub)
    return sub


def signer(fanout: Fanout, headers: dict[str, str]) -> Callable[[str, str], Awaitable[str]]:
    """pusher-js's channel authorization through the worker's ``/pusher/auth``."""

    async def sign(socket_id: str, channel: str) -> str:
        status, body = await ask_auth(fanout, channel, headers, socket_id)
        assert status == 200, body
        return str(body["auth"])

    return sign


async def test_a_real_conversations_members_may_subscribe(fanout: Fanout) -> None:
    """A conversation saved with ``members: [userId, shopId]`` admits both, and nobody else."""
    world = marketplace()
    await seed(fanout.db, world)
    channel = f"private-chat-{oid(world.chat)}"
    statuses = [
        await auth_status(fanout, channel, bearer(world.aarav, "user")),
        await auth_status(fanout, channel, bearer(world.chai, "seller")),
        await auth_status(fanout, channel, bearer(world.priya, "user")),
        await auth_status(fanout, channel, bearer(world.kirana, "seller")),
    ]
    assert statuses == [200, 200, 403, 403]
