"""Admin live stats: every ``STATS_INTERVAL_S`` a ``stats-update`` straight to ``private-admin``.

The payload is ``{accountsOnline, eventsPerMinute: {type: n}, dlqDepth, timestamp}``.
``eventsPerMinute`` comes from this worker's own ``messages`` counter (outcome
``delivered``): a rolling window of samples, the newest minus the oldest within 60 s.
``dlqDepth`` is the last ``queue_messages{queue="dlq"}`` sample (``null`` before the first).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from handlers.channels import PRIVATE_ADMIN
from handlers.model import Delivery
from worker.metrics import PREFIX, Metrics
from worker.web.context import WebContext

log = structlog.get_logger("fanout")

EVENT = "stats-update"
WINDOW_S = 60.0


class EventRates:
    """Events per type over the last ``window_s``, from samples of a monotonically rising total."""

    def __init__(self, started_s: float, window_s: float = WINDOW_S) -> None:
        self._window_s = window_s
        # Counters start at zero with the process, so "nothing yet" is a true first sample.
        self._samples: deque[tuple[float, dict[str, float]]] = deque([(started_s, {})])

    def observe(self, now_s: float, totals: Mapping[str, float]) -> dict[str, int]:
        """Record ``totals`` at ``now_s``; return the increase per type within the window."""
        self._samples.append((now_s, dict(totals)))
        while len(self._samples) > 1 and self._samples[0][0] < now_s - self._window_s:
            self._samples.popleft()
        oldest = self._samples[0][1]
        rates = {kind: int(total - oldest.get(kind, 0.0)) for kind, total in totals.items()}
        return {kind: n for kind, n in sorted(rates.items()) if n > 0}


def delivered_totals(metrics: Metrics) -> dict[str, float]:
    """Messages delivered so far, per event type (summed over the ``reason`` label)."""
    totals: dict[str, float] = {}
    for metric in metrics.messages.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("outcome") == "delivered":
                kind = sample.labels["event_type"]
                totals[kind] = totals.get(kind, 0.0) + sample.value
    return totals


def dlq_depth(metrics: Metrics) -> int | None:
    """The last sampled DLQ depth, or ``None`` before the first sample."""
    value = metrics.registry.get_sample_value(f"{PREFIX}_queue_messages", {"queue": "dlq"})
    return None if value is None else int(value)


class Stats:
    """Builds and sends ``stats-update``."""

    def __init__(self, ctx: WebContext, clock: Callable[[], float] = time.time) -> None:
        self._ctx = ctx
        self._store = ctx.presence
        self._clock = clock
        self._rates = EventRates(clock())

    async def payload(self) -> dict[str, Any]:
        """The current numbers."""
        metrics = self._ctx.metrics
        online = await self._store.count_online()
        metrics.accounts_online.set(online)
        now_s = self._clock()
        return {
            "accountsOnline": online,
            "eventsPerMinute": self._rates.observe(now_s, delivered_totals(metrics)),
            "dlqDepth": dlq_depth(metrics),
            "timestamp": int(now_s * 1000),
        }

    async def send(self) -> None:
        """Send one ``stats-update`` to the admins."""
        await self._ctx.deliverer.deliver([Delivery(PRIVATE_ADMIN, EVENT, await self.payload())])

    async def send_forever(self) -> None:
        """Send every ``stats_interval_s``; failures are logged, never fatal."""
        while True:
            await asyncio.sleep(self._ctx.settings.stats_interval_s)
            try:
                await self.send()
            except Exception as error:  # a background loop must outlive outages
                log.warning("fanout.stats_failed", error=f"{type(error).__name__}: {error}")
