"""Pushed but not recorded, then a restart: the retry copy says ``fanout-pushed``, so the new
process only marks it and the browser sees each event once.

MongoDB is cut (a loopback TCP proxy) at the moment the worker's next trigger reaches Soketi:
that batch is accepted by Soketi, its pushed marks fail, and it goes to the retry tier. The
worker is stopped (SIGTERM) and a new ``python -m worker run`` takes over before the tier
returns the copies; before this fix the fact lived only in process memory and the new
process pushed them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import AsyncMongoClient

from devtools.devstack import SoketiServer
from devtools.processes import free_port
from tests.conftest import Names
from tests.integration.proxy import TcpProxy
from tests.integration.test_lifecycle import (
    DRAIN_TIMEOUT_S,
    admin_subscriber,
    delivered,
    depth,
    prepare,
    registrations,
    wait_delivered,
    wait_idle,
    worker_env,
    worker_process,
)

STREAM = 300


class TripwireProxy:
    """Forwards to Soketi; once armed, the next request from the worker first runs ``trip``."""

    def __init__(self, target: tuple[str, int], trip: Callable[[], Awaitable[None]]) -> None:
        self.target = target
        self.port = free_port()
        self.tripped = asyncio.Event()
        self.armed = False
        self._trip = trip
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TripwireProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, upstream=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.armed and b"POST " in data and not self.tripped.is_set():
                    self.tripped.set()
                    await self._trip()  # MongoDB goes before Soketi has even seen the trigger
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"127.0.0.1:{port}"
    if parts.username is not None:
        netloc = f"{parts.username}:{parts.password or ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


@contextlib.asynccontextmanager
async def _marks(
    mongo_url: str, db: str
) -> AsyncIterator[Callable[[set[str]], Awaitable[set[str]]]]:
    """The ids among some that carry a pushed mark, read over the test's own connection."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)

    async def marked(ids: set[str]) -> set[str]:
        docs = client[db].fanout_history.find({"_id": {"$in": sorted(ids)}, "pushed": True})
        return {str(doc["_id"]) async for doc in docs}

    try:
        yield marked
    finally:
        await client.close()


@pytest.mark.parametrize("run", range(3))  # a fault test must hold more than once
async def test_pushed_unrecorded_events_are_not_pushed_again_after_a_restart(
    run: int,
    rabbitmq_url: str,
    mongo_url: str,
    soketi: SoketiServer,
    mongo_proxy: TcpProxy,
    names: Names,
    tmp_path: Path,
) -> None:
    """MongoDB cut right as a trigger goes out, then SIGTERM and a new process: 0 duplicates,
    0 lost, DLQ empty; and some events really were pushed but unmarked across the restart."""
    names.retry_delays_s = (2, 30)  # so cleanup deletes these tiers
    envelopes = registrations(STREAM, f"unrec{run}")
    ids = {env["id"] for env in envelopes}
    async with (
        TripwireProxy((soketi.host, soketi.port), mongo_proxy.cut) as tripwire,
        admin_subscriber(soketi) as sub,
        _marks(mongo_url, names.db) as marked,
    ):
        first_env = worker_env(
            names,
            rabbitmq_url,
            _via(mongo_url, mongo_proxy.port),
            soketi,
            SOKETI_PORT=str(tripwire.port),
            MONGODB_TIMEOUT_S="1",
        )
        await prepare(rabbitmq_url, names, envelopes)
        async with worker_process(first_env, tmp_path / "first.log") as first:
            await sub.wait_for(lambda got: len(got) >= 30, 30)
            tripwire.armed = True
            await asyncio.wait_for(tripwire.tripped.wait(), 10)

            async def retried() -> bool:
                return bool(await first.metric("bazaar_fanout_retries_scheduled_total") or 0)

            await first.wait(retried, 15, "a message sent to the retry tier")
            code, _ = await first.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 10)
        assert code == 0, first.log_tail()
        await mongo_proxy.restore()
        seen = set(delivered(sub))
        unmarked = seen - await marked(seen)
        print(f"run {run}: {len(seen)} delivered before the restart, {len(unmarked)} unmarked")
        assert unmarked, "no event was pushed but left unmarked: the fault missed its window"

        second_env = worker_env(names, rabbitmq_url, mongo_url, soketi)
        async with worker_process(second_env, tmp_path / "second.log") as second:
            await wait_delivered(sub, ids, 60)
            # The unmarked ones come back from the 2 s tier: marked, not pushed again.
            await second.wait(
                lambda: _all_marked(marked, unmarked), 60, "the unmarked events to be marked"
            )
            await wait_idle(second, rabbitmq_url, names.queue)
            code, _ = await second.stop(signal.SIGTERM, DRAIN_TIMEOUT_S + 5)
        assert code == 0, second.log_tail()
        counts = delivered(sub)
    assert set(counts) == ids
    assert {event_id: n for event_id, n in counts.items() if n > 1} == {}
    assert await depth(rabbitmq_url, names.dlq) == 0


async def _all_marked(marked: Callable[[set[str]], Awaitable[set[str]]], ids: set[str]) -> bool:
    return await marked(ids) == ids
