"""The worker's lifecycle on the real services: stop, crash, misconfiguration, consumer cancel.

The worker runs as a subprocess (``python -m worker run``), exactly as the Procfile starts it,
except in the consumer-cancel test, which needs nothing but the broker to misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractChannel
from prometheus_client.parser import text_string_to_metric_families

import worker.broker.topology as broker
from devtools.devstack import SoketiServer
from devtools.processes import free_port
from devtools.watch import PusherSubscriber, sign_channel
from tests.conftest import Names
from tests.integration.harness import envelope, running_worker

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "private-admin"
PREFETCH = 50
DRAIN_TIMEOUT_S = 5.0
STREAM = 1500

T = TypeVar("T")


# --- a worker subprocess -------------------------------------------------------------------


def worker_env(
    names: Names, rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, **extra: str
) -> dict[str, str]:
    """The environment of a ``python -m worker run`` on this test's own exchange, queue and db."""
    return {
        **os.environ,
        "RABBITMQ_URL": rabbitmq_url,
        "EVENTS_EXCHANGE": names.exchange,
        "WORKER_QUEUE": names.queue,
        "MONGODB_URL": mongo_url,
        "MONGODB_DB": names.db,
        "SOKETI_APP_ID": soketi.app_id,
        "SOKETI_APP_KEY": soketi.key,
        "SOKETI_APP_SECRET": soketi.secret,
        "SOKETI_HOST": soketi.host,
        "SOKETI_PORT": str(soketi.port),
        "HTTP_HOST": "127.0.0.1",
        "PREFETCH_COUNT": str(PREFETCH),
        "DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        # The ``names`` fixture cleans up the tiers of Names.retry_delays_s.
        "RETRY_DELAYS_S": ",".join(str(d) for d in names.retry_delays_s),
        "LOG_FORMAT": "json",
        # No stats-update on private-admin or presence calls to Soketi unless a test asks.
        "STATS_INTERVAL_S": "0",
        "PRESENCE_RECONCILE_S": "0",
        **extra,
    }


@dataclass
class WorkerProcess:
    """A ``python -m worker run`` subprocess and its HTTP port."""

    process: asyncio.subprocess.Process
    http_port: int
    log_path: Path
    http: aiohttp.ClientSession

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the worker logged, to explain a failure."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    async def readyz(self) -> tuple[int, dict[str, Any]] | None:
        """``GET /readyz`` as (status, JSON), or ``None`` while nothing answers."""
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.http_port}/readyz",
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def metric(self, name: str, **labels: str) -> float | None:
        """One sample from ``GET /metrics`` (0 when absent), or ``None`` while nothing answers."""
        try:
            async with self.http.get(
                f"http://127.0.0.1:{self.http_port}/metrics",
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    async def wait_ready(self, timeout_s: float = 20) -> None:
        """Wait until ``/readyz`` answers 200."""

        async def ready() -> bool:
            answer = await self.readyz()
            return answer is not None and answer[0] == 200

        await self.wait(ready, timeout_s, "/readyz to answer 200")

    async def wait(
        self, check: Callable[[], Awaitable[T | None]], timeout_s: float, what: str
    ) -> T:
        """Poll ``check`` until it returns something truthy; fail early if the worker exits."""

        async def alive_check() -> T | None:
            result = await check()
            if not result and self.process.returncode is not None:
                raise AssertionError(
                    f"worker exited with {self.process.returncode} while waiting for {what}:\n"
                    + self.log_tail()
                )
            return result

        try:
            return await poll(alive_check, timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {timeout_s} s; worker log:\n{self.log_tail()}"
            ) from None

    async def stop(self, signum: signal.Signals, timeout_s: float) -> tuple[int, float]:
        """Send ``signum``; return the exit code and how long the worker took to exit."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"worker still running {timeout_s} s after {signum.name}:\n{self.log_tail()}"
            ) from None
        return code, time.monotonic() - sent


@contextlib.asynccontextmanager
async def worker_process(env: dict[str, str], log_path: Path) -> AsyncIterator[WorkerProcess]:
    """Start ``python -m worker run`` with ``env`` on a free HTTP port; kill it afterwards."""
    port = free_port()
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "run",
            env={**env, "HTTP_PORT": str(port)},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as http:
            yield WorkerProcess(process, port, log_path, http)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def poll(
    check: Callable[[], Awaitable[T | None]], timeout_s: float, every_s: float = 0.1
) -> T:
    """Await ``check()`` until it returns something truthy, at most ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        # The worker is another process: HTTP and the broker are all we can watch.
        while not (result := await check()):  # noqa: ASYNC110  # nothing to await instead
            await asyncio.sleep(every_s)
        return result


# --- the test's own broker and browser ------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_channel(url: str) -> AsyncIterator[AbstractChannel]:
    """A confirming channel of the test's own connection (the backend's side)."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        yield await connection.channel(publisher_confirms=True)


async def publish_all(
    channel: AbstractChannel, exchange_name: str, envelopes: list[dict[str, Any]]
) -> None:
    """Publish every envelope persistently with its id as ``message_id``, confirmed, in batches."""
    exchange = await channel.get_exchange(exchange_name, ensure=False)
    for start in range(0, len(envelopes), 100):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        orjson.dumps(env),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=env["id"],
                    ),
                    routing_key=env["type"],
                )
                for env in envelopes[start : start + 100]
            )
        )


async def queue_state(url: str, queue: str) -> tuple[int, int] | None:
    """Ready messages and consumers of ``queue`` (passive declare), ``None`` when it is gone."""
    async with broker_channel(url) as channel:
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        result = declared.declaration_result
        assert result.message_count is not None and result.consumer_count is not None
        return result.message_count, result.consumer_count


async def depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (unacked ones are not counted)."""
    state = await queue_state(url, queue)
    assert state is not None, f"queue {queue} does not exist"
    return state[0]


@contextlib.asynccontextmanager
async def admin_subscriber(soketi: SoketiServer) -> AsyncIterator[PusherSubscriber]:
    """A browser-like subscriber on ``private-admin``, signed with the app's real secret."""
    async with PusherSubscriber() as sub:
        await sub.connect(soketi.host, soketi.port, soketi.key)
        await sub.subscribe(
            ADMIN, lambda socket_id, ch: sign_channel(soketi.key, soketi.secret, socket_id, ch)
        )
        yield sub


def delivered(sub: PusherSubscriber) -> Counter[str]:
    """How many times each ``eventId`` reached the subscriber."""
    return Counter(r.data["eventId"] for r in sub.events(ADMIN))


def registrations(count: int, tag: str) -> list[dict[str, Any]]:
    """``count`` ``user.registered`` envelopes with unique ids."""
    return [
        envelope("user.registered", {"userId": f"u{i}"}, id=f"{tag}-{i:05d}") for i in range(count)
    ]


async def wait_delivered(sub: PusherSubscriber, ids: set[str], timeout_s: float) -> None:
    """Wait until every id in ``ids`` reached the subscriber at least once."""
    await sub.wait_for(lambda got: ids <= {r.data["eventId"] for r in got}, timeout_s)


async def wait_idle(worker: WorkerProcess, url: str, queue: str, timeout_s: float = 15) -> None:
    """Wait until ``queue`` has no ready message and the worker holds none in flight."""

    async def idle() -> bool:
        in_flight = await worker.metric("bazaar_fanout_in_flight_messages")
        return in_flight == 0 and await depth(url, queue) == 0

    await worker.wait(idle, timeout_s, "empty queue and nothing in flight")


async def prepare(url: str, names: Names, envelopes: list[dict[str, Any]]) -> None:
    """Declare the worker's topology (as the worker itself will) and queue up ``envelopes``.

    Publishing before the worker starts puts a real backlog in front of it, so a signal sent
    after the first deliveries reliably lands mid-stream with a full prefetch window.
    """
    async with broker_channel(url) as channel:
        await broker.declare(channel, names.topology())
        await publish_all(channel, names.exchange, envelopes)


# --- tests ---------------------------------------------------------------------------------


async def test_sigterm_mid_stream_drains_then_restart_delivers_rest_once(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names, tmp_path: Path
) -> None:
    """SIGTERM mid-stream exits 0 within the drain timeout and a restart delivers the rest once."""
    env = worker_env(names, rabbitmq_url, mongo_url, soketi)
    envelopes = registrations(STREAM, "term")
    ids = {env["id"] for env in envelopes}
    async with admin_subscriber(soketi) as sub:
        await prepare(rabbitmq_url, names, envelopes)
        async with worker_process(env, tmp_path / "first.log") as first:
            await sub.wait_for(lambda got: len(got) >= STREAM // 10, 30)
            seen_at_signal = len(delivered(sub))
            code, drain_s = await first.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        print(f"SIGTERM after {seen_at_signal} delivered; exit {code} after {drain_s:.2f} s")
        assert code == 0, first.log_tail()
        assert seen_at_signal < STREAM  # the signal really landed mid-stream
        assert drain_s < DRAIN_TIMEOUT_S + 3

        async with worker_process(env, tmp_path / "second.log") as second:
            await wait_delivered(sub, ids, 30)
            await wait_idle(second, rabbitmq_url, names.queue)
            code, _ = await second.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, second.log_tail()
        counts = delivered(sub)
    assert set(counts) == ids
    assert {event_id: n for event_id, n in counts.items() if n > 1} == {}
    assert await depth(rabbitmq_url, names.dlq) == 0


async def test_kill_9_mid_stream_repeats_at_most_the_in_flight_window(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names, tmp_path: Path
) -> None:
    """After kill -9 mid-stream and a restart, all events arrive and at most a prefetch repeats."""
    env = worker_env(names, rabbitmq_url, mongo_url, soketi)
    envelopes = registrations(STREAM, "kill")
    ids = {env["id"] for env in envelopes}
    async with admin_subscriber(soketi) as sub:
        await prepare(rabbitmq_url, names, envelopes)
        async with worker_process(env, tmp_path / "first.log") as first:
            await sub.wait_for(lambda got: len(got) >= STREAM // 10, 30)
            seen_at_signal = len(delivered(sub))
            code, _ = await first.stop(signal.SIGKILL, 5)
        assert code == -signal.SIGKILL
        assert seen_at_signal < STREAM

        async with worker_process(env, tmp_path / "second.log") as second:
            await wait_delivered(sub, ids, 30)
            await wait_idle(second, rabbitmq_url, names.queue)
            code, _ = await second.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, second.log_tail()
        counts = delivered(sub)
    repeats = {event_id: n - 1 for event_id, n in counts.items() if n > 1}
    print(
        f"kill -9 after {seen_at_signal} delivered: {sum(repeats.values())} repeated "
        f"({len(repeats)} distinct ids), in-flight window {PREFETCH}"
    )
    assert set(counts) == ids
    assert sum(repeats.values()) <= PREFETCH
    assert await depth(rabbitmq_url, names.dlq) == 0


async def test_wrong_soketi_secret_holds_messages_instead_of_dead_lettering(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names, tmp_path: Path
) -> None:
    """With a wrong Soketi secret nothing is dead-lettered or lost; a fixed worker delivers once."""
    bad_env = worker_env(
        names, rabbitmq_url, mongo_url, soketi, SOKETI_APP_SECRET="not-" + soketi.secret
    )
    envelopes = registrations(5, "secret")
    ids = {env["id"] for env in envelopes}
    async with admin_subscriber(soketi) as sub:
        await prepare(rabbitmq_url, names, envelopes)
        async with worker_process(bad_env, tmp_path / "bad.log") as bad:

            async def circuit_open() -> dict[str, Any] | None:
                answer = await bad.readyz()
                if answer is None or not answer[1]["checks"]["soketi"].startswith("circuit open"):
                    return None
                return {"status": answer[0], **answer[1]}

            report = await bad.wait(circuit_open, 20, "an open Soketi circuit on /readyz")
            assert report["status"] == 503
            assert report["ready"] is False
            assert "SOKETI_APP_ID/KEY/SECRET" in report["checks"]["soketi"]
            assert report["checks"]["consumer"] == "not consuming"
            assert await bad.metric("bazaar_fanout_circuit_open", downstream="soketi") == 1
            # Held, not settled: every message is either back in the queue or in the worker's hands.
            in_flight = await bad.metric("bazaar_fanout_in_flight_messages")
            assert in_flight is not None
            assert in_flight + await depth(rabbitmq_url, names.queue) == len(envelopes)
            assert await depth(rabbitmq_url, names.dlq) == 0
            assert delivered(sub) == Counter()
            code, _ = await bad.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, bad.log_tail()
        assert await depth(rabbitmq_url, names.queue) == len(envelopes)

        good_env = worker_env(names, rabbitmq_url, mongo_url, soketi)
        async with worker_process(good_env, tmp_path / "good.log") as good:
            await wait_delivered(sub, ids, 20)
            await wait_idle(good, rabbitmq_url, names.queue)
            code, _ = await good.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, good.log_tail()
        counts = delivered(sub)
    assert counts == Counter(dict.fromkeys(ids, 1))
    assert await depth(rabbitmq_url, names.dlq) == 0


async def test_deleted_queue_is_redeclared_and_consumed_again(
    rabbitmq_url: str, mongo_url: str, soketi: SoketiServer, names: Names
) -> None:
    """After its queue is deleted under it, the worker consumes again and delivers new events."""
    async with (
        running_worker(
            rabbitmq_url=rabbitmq_url,
            mongo_url=mongo_url,
            soketi=soketi,
            names=names,
        ) as fanout,
        aiohttp.ClientSession() as http,
        broker_channel(rabbitmq_url) as channel,
    ):
        sub = await fanout.subscriber(ADMIN)
        before = envelope("user.registered", {"userId": "before"})
        await fanout.publish(before)
        await sub.wait_for(lambda got: len(got) >= 1, 15)

        assert await queue_state(rabbitmq_url, names.queue) == (0, 1)
        await channel.queue_delete(names.queue)

        async def recovered() -> bool:
            async with http.get(f"http://127.0.0.1:{fanout.http_port}/readyz") as response:
                ready = response.status == 200
            return ready and await queue_state(rabbitmq_url, names.queue) == (0, 1)

        started = time.monotonic()
        await poll(recovered, 20)
        print(f"consuming again {time.monotonic() - started:.2f} s after the queue was deleted")
        after = envelope("user.registered", {"userId": "after"})
        await fanout.publish(after)
        await sub.wait_for(lambda got: len(got) >= 2, 15)
        assert delivered(sub) == Counter({before["id"]: 1, after["id"]: 1})
        # The supervisor noticed the broker's Basic.Cancel and registered a new consumer.
        assert fanout.sample("bazaar_fanout_reconnects_total", kind="consumer") >= 1
