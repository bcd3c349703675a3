"""The periodic sweep: expired documents deleted, for servers without TTL indexes.

Real MongoDB's TTL indexes delete expired processed ids and history entries by themselves;
the stand-in used in tests (and any server without TTL) relies on this loop. One loop per
collection, each as often as its retention asks; a failed sweep is logged, never fatal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, Final, Protocol

import structlog

from worker.errors import FanoutError

log = structlog.get_logger("fanout")

#: The longest wait between two sweeps of a collection.
MAX_INTERVAL_S: Final = 3600.0


class Expiring(Protocol):
    """A collection whose documents expire after ``retention``."""

    @property
    def retention(self) -> timedelta: ...

    def sweep(self) -> Awaitable[int]: ...


def interval_s(retention: timedelta) -> float:
    """Sweep ten times per retention period, between once a second and once an hour."""
    return min(MAX_INTERVAL_S, max(1.0, retention.total_seconds() / 10))


def sweeper(name: str, collection: Expiring) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background task deleting ``collection``'s expired documents, forever."""

    async def sweep_forever() -> None:
        while True:
            try:
                removed = await collection.sweep()
            except FanoutError as error:
                log.warning("fanout.sweep_failed", collection=name, error=str(error))
            else:
                if removed:
                    log.info("fanout.swept", collection=name, removed=removed)
            await asyncio.sleep(interval_s(collection.retention))

    sweep_forever.__qualname__ = f"sweep:{name}"
    return sweep_forever
