"""``make demo`` (``python -m devtools demo``): the whole pipeline, with a marketplace on it.

Starts local Soketi and the MongoDB stand-in (or uses ``MONGODB_URL``), makes sure RabbitMQ
runs, seeds the marketplace (:mod:`devtools.marketplace`), runs the worker, publishes the
marketplace's stream and prints what each watched channel receives, as a browser subscribed
to it would.

Broker and database names come from ``EVENTS_EXCHANGE``, ``WORKER_QUEUE`` and ``MONGODB_DB``
(defaults :data:`EVENTS_EXCHANGE`, :data:`WORKER_QUEUE`, :data:`MONGODB_DB`), so a test run
can give the demo names of its own; ports are free loopback ports unless ``HTTP_PORT`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import jwt

from devtools import devstack, marketplace
from devtools.marketplace import WATCHED_CUSTOMER, WATCHED_SHOP, conversation_id
from devtools.watch import PusherSubscriber, Received, sign_channel
from worker import app
from worker.broker.connections import publishing
from worker.config import Settings
from worker.events import message_of
from worker.ops.publish import complete, validate

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
EVENTS_EXCHANGE = "bazaar.events"
WORKER_QUEUE = "bazaar.fanout.demo"
MONGODB_DB = "bazaar_demo"
#: The demo worker's retry tiers (short, so a retried event shows up while you watch).
RETRY_DELAYS_S = (2.0, 5.0, 15.0)
SOKETI_APP_ID, SOKETI_APP_KEY = "1001", "demo-key"
STREAM_SEED = 7
TAIL_S = 1.5  # after the last publish, how long the tail of the stream gets to arrive
WORKER_START_TIMEOUT_S = 30.0
#: The payload fields a received event's terminal line shows, when present.
SUMMARY_FIELDS = (
    "orderId",
    "status",
    "shopTotal",
    "content",
    "productName",
    "currentStock",
    "title",
    "name",
    "customerName",
    "senderName",
    "amount",
    "userId",
)


@dataclass(frozen=True, slots=True)
class Stack:
    """The local services the demo runs against."""

    settings: Settings
    soketi: devstack.SoketiServer
    mongo: devstack.MongoStandin | None

    def stop(self) -> None:
        """Stop what the demo started (Soketi, the stand-in); RabbitMQ is shared and stays."""
        self.soketi.stop()
        if self.mongo is not None:
            self.mongo.stop()


async def main(*, duration_s: float = 0, rate: float = 4.0) -> int:
    """Run the demo until Ctrl-C or ``duration_s`` seconds; return the exit code."""
    stack = _start_stack()
    try:
        await marketplace.seed(
            stack.settings.mongodb_url.get_secret_value(), stack.settings.mongodb_db
        )
        return await _run(stack, duration_s, rate)
    finally:
        stack.stop()


def _start_stack() -> Stack:
    rabbitmq_url = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    parts = urlsplit(rabbitmq_url)
    _say(f"RabbitMQ   {parts.hostname}:{parts.port or 5672} (starting it if needed)")
    devstack.ensure_rabbitmq(parts.hostname or "127.0.0.1", parts.port or 5672)
    soketi = devstack.start_soketi(SOKETI_APP_ID, key=SOKETI_APP_KEY, secret=secrets.token_hex(16))
    _say(f"Soketi     {soketi.url} (app {SOKETI_APP_ID}, key {SOKETI_APP_KEY})")
    standin = None
    try:
        mongo_url, standin = devstack.mongodb_url_or_standin()
        if standin is not None:
            _say(f"MongoDB    {mongo_url} (nx-27017 stand-in, in memory)")
        else:
            _say("MongoDB    MONGODB_URL")
        return Stack(_settings(rabbitmq_url, mongo_url, soketi, standin), soketi, standin)
    except BaseException:
        soketi.stop()
        if standin is not None:
            standin.stop()
        raise


def _settings(
    rabbitmq_url: str,
    mongo_url: str,
    soketi: devstack.SoketiServer,
    standin: devstack.MongoStandin | None,
) -> Settings:
    """The worker's settings for the demo: local services, console logs, short retries."""
    return Settings(
        rabbitmq_url=rabbitmq_url,
        mongodb_url=mongo_url,
        mongodb_db=os.environ.get("MONGODB_DB", MONGODB_DB),
        events_exchange=os.environ.get("EVENTS_EXCHANGE", EVENTS_EXCHANGE),
        worker_queue=os.environ.get("WORKER_QUEUE", WORKER_QUEUE),
        soketi_app_id=soketi.app_id,
        soketi_app_key=soketi.key,
        soketi_app_secret=soketi.secret,
        soketi_host=soketi.host,
        soketi_port=soketi.port,
        http_host="127.0.0.1",
        http_port=int(os.environ.get("HTTP_PORT", "0")),
        retry_delays_s=RETRY_DELAYS_S,
        mongodb_ttl_indexes=standin is None,  # the stand-in purges TTL collections per query
        # A random local secret: the console's demo tokens are valid for this run only.
        auth_jwt_secret=secrets.token_hex(32),
        log_format="console",
        log_level="warning",
    )


async def _run(stack: Stack, duration_s: float, rate: float) -> int:
    stop = asyncio.Event()
    started = asyncio.get_running_loop().create_future()
    worker = asyncio.create_task(
        app.run(stack.settings, stop=stop, on_started=started.set_result), name="worker"
    )
    watcher: PusherSubscriber | None = None
    try:
        info = await asyncio.wait_for(asyncio.shield(started), WORKER_START_TIMEOUT_S)
        _say(f"Worker     http://127.0.0.1:{info.http_port}/metrics  /readyz  /healthz")
        _say(f"Console    {console_url(stack.settings, info.http_port)}")
        watcher = await _watch(stack)
        _say("Publishing a marketplace stream; Ctrl-C stops.\n")
        printer = asyncio.create_task(_print_received(watcher), name="printer")
        try:
            await _publish_stream(stack.settings, duration_s, rate)
            await asyncio.sleep(TAIL_S)  # let the tail of the stream arrive before stopping
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
        _say(f"\n{len(watcher.events())} events received on the watched channels.")
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    finally:
        if watcher is not None:
            await watcher.close()
        stop.set()
        await worker


def console_url(settings: Settings, http_port: int, ttl_s: float = 12 * 3600) -> str:
    """The console's address with a demo token per pane in its fragment (never sent to servers)."""
    secret = settings.auth_jwt_secret
    assert secret is not None
    expires = int(time.time() + ttl_s)

    def mint(sub: str, role: str) -> str:
        claims = {"sub": sub, "role": role, "exp": expires}
        return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256")

    fragment = "&".join(
        (
            f"admin={mint('admin-demo', 'admin')}",
            f"seller={mint(WATCHED_SHOP, 'seller')}",
            f"customer={mint(WATCHED_CUSTOMER, 'user')}",
            f"chat={conversation_id(WATCHED_CUSTOMER, WATCHED_SHOP)}",
        )
    )
    return f"http://127.0.0.1:{http_port}/console#{fragment}"


async def _watch(stack: Stack) -> PusherSubscriber:
    watcher = PusherSubscriber()
    await watcher.connect(stack.soketi.host, stack.soketi.port, stack.soketi.key)

    def authorize(socket_id: str, channel: str) -> str:
        return sign_channel(stack.soketi.key, stack.soketi.secret, socket_id, channel)

    channels = [
        "private-admin",
        f"private-seller-{WATCHED_SHOP}",
        f"private-user-{WATCHED_CUSTOMER}",
        f"private-chat-{conversation_id(WATCHED_CUSTOMER, WATCHED_SHOP)}",
        "public",
    ]
    for channel in channels:
        await watcher.subscribe(channel, authorize if channel != "public" else None)
    _say("Watching   " + ", ".join(channels))
    return watcher


async def _print_received(watcher: PusherSubscriber) -> None:
    shown = 0

    def more_than(count: int) -> Callable[[list[Received]], bool]:
        return lambda received: len(received) > count

    while True:
        await watcher.wait_for(more_than(shown), timeout_s=3600)
        for received in watcher.events()[shown:]:
            print(_line(received), flush=True)
        shown = len(watcher.events())


def _line(received: Received) -> str:
    """One terminal line: time, channel, Pusher event, the telling fields, and the event's age."""
    data = received.data if isinstance(received.data, dict) else {}
    summary = " ".join(f"{k}={data[k]}" for k in SUMMARY_FIELDS if data.get(k) is not None)
    age_ms = time.time() * 1000 - data.get("timestamp", time.time() * 1000)
    return (
        f"{datetime.now().strftime('%H:%M:%S')}  {received.channel:<38} "
        f"{received.event:<17} {summary[:90]}  ({age_ms:.0f} ms)"
    )


async def _publish_stream(settings: Settings, duration_s: float, rate: float) -> None:
    url = settings.rabbitmq_url.get_secret_value()
    async with publishing(url, settings.events_exchange, purpose="demo") as exchange:
        deadline = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        for envelope in marketplace.events(random.Random(STREAM_SEED)):
            if time.monotonic() >= deadline:
                return
            event = validate(complete(envelope))
            await exchange.publish(message_of(event), routing_key=event.type)
            await asyncio.sleep(1 / rate)


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)
