"""The JS client (clients/js) on the real worker, auth endpoints, history and Soketi."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import jwt
import pytest

from devtools.devstack import SoketiServer, start_soketi
from tests.conftest import SOKETI_APP_ID, Names
from tests.integration.harness import Fanout, envelope, running_worker

JS_DIR = Path(__file__).parents[2] / "clients" / "js"
NODE = shutil.which("node")
NPM = shutil.which("npm")
JWT_SECRET = secrets.token_hex(32)
POLL_MS = 250
RECONNECT_MS = 1000

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are not on PATH (Node 20+ is needed)"
)

Line = dict[str, Any]


@pytest.fixture(autouse=True)
def _node_modules_installed() -> None:
    """Fail with the fix, not a stack trace, when clients/js has no dependencies installed."""
    if not (JS_DIR / "node_modules" / "pusher-js").is_dir():
        pytest.fail("clients/js has no node_modules: run `make install`")


def mint(sub: str, role: str, *, secret: str = JWT_SECRET, ttl_s: int = 600) -> str:
    """An HS256 session token as the backend issues it."""
    claims = {"sub": sub, "role": role, "exp": int(time.time()) + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


class Watcher:
    """``node examples/watch.js``: its JSON lines, read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[Line] = []
        self.stderr = b""
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self._errors = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(cls, env: dict[str, str]) -> Watcher:
        """Start the watcher with ``env`` added to ours."""
        assert NODE is not None
        process = await asyncio.create_subprocess_exec(
            NODE,
            "examples/watch.js",
            cwd=JS_DIR,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            async with self._changed:
                self.lines.append(json.loads(raw))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = await self.process.stderr.read()

    async def wait_for(
        self, condition: Callable[[Watcher], bool], what: str, timeout_s: float = 20
    ) -> None:
        """Wait until ``condition(self)`` holds, re-checking at each new line, or fail."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                while not condition(self):
                    if self._reader.done():
                        raise AssertionError(f"the watcher exited while waiting for {what}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}\n{self.report()}") from None

    def states(self) -> list[str]:
        """Every state the client reported, in order."""
        return [line["state"] for line in self.lines if line["type"] == "state"]

    def events(self, channel: str) -> list[Line]:
        """The events the client delivered on ``channel``, in order."""
        return [e for e in self.lines if e["type"] == "event" and e["channel"] == channel]

    def ids(self, channel: str) -> list[str]:
        """The eventIds the client delivered on ``channel``, in order."""
        return [e["eventId"] for e in self.events(channel)]

    def has_all(self, channel: str, ids: list[str]) -> bool:
        """True when every id of ``ids`` was delivered on ``channel``."""
        return set(ids) <= set(self.ids(channel))

    def report(self) -> str:
        """The last lines and stderr, for failure messages."""
        tail = "\n".join(json.dumps(line) for line in self.lines[-40:])
        return f"stdout tail:\n{tail}\nstderr:\n{self.stderr.decode(errors='replace')[-2000:]}"

    async def stop(self) -> None:
        """Close stdin (the watcher closes the client and exits); kill it if it does not."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(self._reader, self._errors, return_exceptions=True)


@contextlib.asynccontextmanager
async def watching(env: dict[str, str]) -> AsyncIterator[Watcher]:
    """A watcher for the duration of the block."""
    watcher = await Watcher.start(env)
    try:
        yield watcher
    finally:
        await watcher.stop()


@pytest.fixture
async def fanout(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names
) -> AsyncIterator[Fanout]:
    """A worker on the session's Soketi with the auth endpoints on."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=soketi,
        names=names,
        auth_jwt_secret=JWT_SECRET,
    ) as running:
        yield running


@pytest.fixture
def own_soketi() -> Iterator[SoketiServer]:
    """A Soketi only this test stops and restarts, so the session's stays up for the others."""
    server = start_soketi(
        SOKETI_APP_ID, key=f"key-{secrets.token_hex(8)}", secret=secrets.token_hex(24)
    )
    try:
        yield server
    finally:
        server.stop()


def client_env(fanout: Fanout, token: str, *channels: str) -> dict[str, str]:
    """What examples/watch.js needs to reach ``fanout`` as the holder of ``token``."""
    return {
        "WORKER_URL": f"http://127.0.0.1:{fanout.http_port}",
        "SOKETI_KEY": fanout.soketi.key,
        "SOKETI_HOST": fanout.soketi.host,
        "SOKETI_PORT": str(fanout.soketi.port),
        "TOKEN": token,
        "CHANNELS": ",".join(channels),
        "POLL_MS": str(POLL_MS),
        "RECONNECT_MS": str(RECONNECT_MS),
    }


async def test_node_suite_passes_against_the_real_auth_endpoints(fanout: Fanout) -> None:
    """`npm test` in clients/js passes, its real-stack tests (auth 200/403/401, history) too."""
    user = f"u-{uuid.uuid4().hex[:12]}"
    assert NPM is not None
    process = await asyncio.create_subprocess_exec(
        NPM,
        "test",
        "--silent",
        cwd=JS_DIR,
        env={
            **os.environ,
            "FANOUT_TEST_WORKER_URL": f"http://127.0.0.1:{fanout.http_port}",
            "FANOUT_TEST_SOKETI_KEY": fanout.soketi.key,
            "FANOUT_TEST_SOKETI_HOST": fanout.soketi.host,
            "FANOUT_TEST_SOKETI_PORT": str(fanout.soketi.port),
            "FANOUT_TEST_ADMIN_TOKEN": mint("admin-1", "admin"),
            "FANOUT_TEST_USER_TOKEN": mint(user, "user"),
            "FANOUT_TEST_USER_ID": user,
            "FANOUT_TEST_FORGED_TOKEN": mint("admin-1", "admin", secret=secrets.token_hex(32)),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    report = f"stdout:\n{out.decode()[-6000:]}\nstderr:\n{err.decode()[-3000:]}"
    assert process.returncode == 0, report
    assert "# fail 0" in out.decode(), report
    assert "# SKIP" not in out.decode(), report
    assert "a token signed with another secret is refused with 401" in out.decode(), report


def polled(watcher: Watcher, channel: str) -> set[str]:
    """The eventIds the watcher delivered on ``channel`` from the history endpoint."""
    return {e["eventId"] for e in watcher.events(channel) if e["source"] == "history"}


def polled_some(channel: str, ids: list[str], watcher: Watcher) -> bool:
    """True once at least one of ``ids`` came to ``channel`` from the history endpoint."""
    return bool(polled(watcher, channel) & set(ids))


def polled_all(channel: str, ids: set[str], watcher: Watcher) -> bool:
    """True once every one of ``ids`` came to ``channel`` from the history endpoint."""
    return polled(watcher, channel) >= ids


async def recorded_ids(fanout: Fanout, channel: str, ids: list[str]) -> set[str]:
    """Those of ``ids`` the worker has recorded in ``channel``'s history."""
    found = fanout.db.fanout_history.find({"channel": channel, "eventId": {"$in": ids}})
    return {doc["eventId"] async for doc in found}


def chat_message(conversation: str, shop: str, user: str, n: int) -> dict[str, Any]:
    """A seller's chat message to ``user``: private-chat-{conversation} and private-user-{user}."""
    return envelope(
        "message.created",
        {
            "messageId": f"m{n}-{uuid.uuid4().hex[:6]}",
            "conversationId": conversation,
            "senderId": shop,
            "senderType": "seller",
            "recipientId": user,
            "recipientType": "user",
            "content": f"message {n}",
        },
    )


def admin_alert(n: int) -> dict[str, Any]:
    """A system alert for private-admin."""
    return envelope(
        "system.alert",
        {
            "severity": "info",
            "title": f"alert {n}",
            "message": "js client test",
            "audience": "admin",
        },
    )


async def test_client_polls_while_soketi_is_down_then_catches_up_without_repeats_or_gaps(
    rabbitmq_url: str, mongo_url: str, own_soketi: SoketiServer, names: Names
) -> None:
    """Soketi stopped and restarted mid-stream: the client polls, catches up, every event once."""
    async with running_worker(
        rabbitmq_url=rabbitmq_url,
        mongo_url=mongo_url,
        soketi=own_soketi,
        names=names,
        auth_jwt_secret=JWT_SECRET,
    ) as fanout:
        user, shop, conversation = (f"{p}-{uuid.uuid4().hex[:10]}" for p in "usc")
        await fanout.db.conversations.insert_one({"_id": conversation, "members": [user, shop]})
        chat, personal = f"private-chat-{conversation}", f"private-user-{user}"
        chat_ids: list[str] = []
        alert_ids: list[str] = []

        async def publish_round(count: int) -> tuple[list[str], list[str]]:
            """Publish ``count`` chat messages and ``count`` admin alerts, interleaved."""
            chats, alerts = [], []
            for _ in range(count):
                message, alert = (
                    chat_message(conversation, shop, user, len(chat_ids)),
                    admin_alert(len(alert_ids)),
                )
                await fanout.publish(message)
                await fanout.publish(alert)
                chat_ids.append(message["id"])
                alert_ids.append(alert["id"])
                chats.append(message["id"])
                alerts.append(alert["id"])
            return chats, alerts

        async with (
            watching(client_env(fanout, mint(user, "user"), chat, personal)) as member,
            watching(client_env(fanout, mint("admin-1", "admin"), "private-admin")) as admin,
        ):
            for watcher in (member, admin):
                await watcher.wait_for(lambda w: "live" in w.states(), "the client to go live")

            # Before the outage: live.
            chats, alerts = await publish_round(3)
            await member.wait_for(
                lambda w: w.has_all(chat, chats) and w.has_all(personal, chats), "round 1 (member)"
            )
            await admin.wait_for(lambda w: w.has_all("private-admin", alerts), "round 1 (admin)")

            # Soketi down: both clients fall back to polling the history endpoint.
            await asyncio.to_thread(own_soketi.stop)
            for watcher in (member, admin):
                await watcher.wait_for(lambda w: w.states()[-1:] == ["polling"], "polling")
            chats, alerts = await publish_round(3)
            # The worker records an event before it calls Soketi; its Soketi circuit opens
            # after a few failures and holds the rest unrecorded. What it recorded is polled.
            rounds = (
                (member, chat, chats),
                (member, personal, chats),
                (admin, "private-admin", alerts),
            )
            for watcher, channel, ids in rounds:
                await watcher.wait_for(partial(polled_some, channel, ids), f"polling on {channel}")
                recorded = await recorded_ids(fanout, channel, ids)
                await watcher.wait_for(
                    partial(polled_all, channel, recorded),
                    f"every event recorded on {channel} to be polled",
                )
            assert own_soketi.is_running is False

            # Soketi back on the same port: reconnect, catch up, live again.
            await asyncio.to_thread(own_soketi.start)
            for watcher in (member, admin):
                await watcher.wait_for(
                    lambda w: w.states()[-2:] == ["catching-up", "live"],
                    "catching-up then live",
                    45,
                )
            await fanout.wait_settled(12, "delivered", timeout_s=45)  # the held ones went out too
            chats, alerts = await publish_round(3)
            await member.wait_for(
                lambda w: w.has_all(chat, chats) and w.has_all(personal, chats), "round 3 (member)"
            )
            await admin.wait_for(lambda w: w.has_all("private-admin", alerts), "round 3 (admin)")
            await fanout.wait_settled(18, "delivered")

        assert fanout.settled("dead_lettered") == 0
        for watcher in (member, admin):
            states = watcher.states()
            assert states[0] == "catching-up" and "polling" in states, watcher.report()
            down = states.index("polling")
            assert states[down - 1 : down + 3] == ["live", "polling", "catching-up", "live"], states
            assert not [line for line in watcher.lines if line["type"] in ("gap", "error")], (
                watcher.report()
            )
        # Every event exactly once, and a conversation's events in publish order.
        assert member.ids(chat) == chat_ids, member.report()
        assert member.ids(personal) == chat_ids, member.report()
        assert sorted(admin.ids("private-admin")) == sorted(alert_ids), admin.report()
        assert len(admin.ids("private-admin")) == len(alert_ids), admin.report()
        for watcher, channel, ids in (
            (member, chat, chat_ids),
            (admin, "private-admin", alert_ids),
        ):
            by_id = {e["eventId"]: e for e in watcher.events(channel)}
            assert {by_id[i]["source"] for i in ids[:3] + ids[6:]} == {"live"}, watcher.report()
            cursors = [e["cursor"] for e in watcher.events(channel) if e["source"] == "history"]
            assert cursors == sorted(cursors)
