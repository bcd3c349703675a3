"""The worker's own health: the event loop's heartbeat, readiness checks, stopping tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from worker.flow.circuit import Circuit
from worker.metrics import Metrics
from worker.web.server import Check

log = structlog.get_logger("fanout")

#: How long stopping waits for cancelled background tasks before going on without them.
CANCEL_TIMEOUT_S = 5.0


class Heartbeat:
    """Ticks on the event loop; a stale tick means the loop was blocked."""

    def __init__(self, metrics: Metrics, interval_s: float = 0.5) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._last = time.monotonic()

    @property
    def silence_s(self) -> float:
        """Seconds since the last tick."""
        return time.monotonic() - self._last

    async def run(self) -> None:
        """Tick forever, recording how late each tick was."""
        while True:
            expected = time.monotonic() + self._interval_s
            await asyncio.sleep(self._interval_s)
            now = time.monotonic()
            self._metrics.loop_lag_seconds.set(max(now - expected, 0.0))
            self._last = now

    def alive(self, limit_s: float) -> Callable[[], str | None]:
        """A liveness answer: ``None`` while the loop ticks, else why not (``/healthz``)."""

        def check() -> str | None:
            silence_s = self.silence_s
            if silence_s > limit_s:
                return f"event loop blocked for {silence_s:.1f}s"
            return None

        return check


def downstream_check(circuit: Circuit, ping: Callable[[], Awaitable[None]]) -> Check:
    """A readiness check of one downstream: its circuit's state, then one ping."""

    async def check() -> str | None:
        if circuit.state == "open":
            return f"circuit open: {circuit.reason}"
        await ping()
        return None

    return check


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait for them, at most ``CANCEL_TIMEOUT_S``."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT_S)
    if stuck:
        # A task ignoring its cancellation (e.g. a broker call during a reconnect) must not
        # keep the worker from stopping.
        log.warning("fanout.tasks_stuck_on_stop", tasks=sorted(t.get_name() for t in stuck))
