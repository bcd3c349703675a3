"""Admin live stats: the whole fleet's figures, sent by one worker every ``STATS_INTERVAL_S``.

Every interval each worker writes its own report to ``fanout_stats`` (events it delivered in
the last minute, per type, from its ``messages`` counter with outcome ``delivered``, and the
DLQ depth it last sampled) and tries to take or renew the sender's lease
(``worker.mongo.stats``). The lease holder alone sums the fresh reports (a worker silent for
``STALE_INTERVALS`` intervals stops counting) and sends ``stats-update`` to ``private-admin``
and to ``private-cache-admin-stats``, a Pusher cache channel: Soketi replays its last event
to every new subscriber, so an admin page has figures the moment it subscribes.

The payload is ``{accountsOnline, customersOnline, sellersOnline, eventsPerMinute: {type: n},
dlqDepth, workers, timestamp}``: ``accountsOnline`` = customers + sellers (from
``fanout_presence``, shared by the fleet), ``dlqDepth`` the newest sample any worker reported
(``null`` before the first), ``workers`` how many reports were summed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog

from handlers.channels import ADMIN_STATS, PRIVATE_ADMIN
from handlers.model import Delivery
from worker.metrics import PREFIX, Metrics
from worker.mongo.stats import WorkerReport
from worker.web.context import WebContext

log = structlog.get_logger("fanout")

EVENT: Final = "stats-update"
WINDOW_S: Final = 60.0
#: A report older than this many intervals no longer counts; the lease lasts as long.
STALE_INTERVALS: Final = 3
#: Reports older than this are deleted by the sender (they stopped counting long before).
FORGET_AFTER_S: Final = 3600.0


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


def fleet_payload(
    reports: Sequence[WorkerReport], online: Mapping[str, int], now_ms: int
) -> dict[str, Any]:
    """The ``stats-update`` payload: the fresh ``reports`` summed, ``online`` split by type."""
    per_minute: dict[str, int] = {}
    for report in reports:
        for kind, n in report.per_minute.items():
            per_minute[kind] = per_minute.get(kind, 0) + n
    sampled = [r for r in sorted(reports, key=lambda r: r.at) if r.dlq_depth is not None]
    customers, sellers = online.get("user", 0), online.get("seller", 0)
    return {
        "accountsOnline": customers + sellers,
        "customersOnline": customers,
        "sellersOnline": sellers,
        "eventsPerMinute": {kind: n for kind, n in sorted(per_minute.items()) if n > 0},
        "dlqDepth": sampled[-1].dlq_depth if sampled else None,
        "workers": len(reports),
        "timestamp": now_ms,
    }


def instance_id() -> str:
    """This worker process's name in ``fanout_stats``: ``{host}:{pid}:{random}``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Stats:
    """Reports this worker's figures and, while it holds the lease, sends the fleet's."""

    def __init__(
        self, ctx: WebContext, clock: Callable[[], float] = time.time, instance: str = ""
    ) -> None:
        self._ctx = ctx
        self._clock = clock
        self.instance = instance or instance_id()
        self._rates = EventRates(clock())

    @property
    def stale_after_s(self) -> float:
        """How old a report may be and still count; also how long the lease lasts."""
        return STALE_INTERVALS * self._ctx.settings.stats_interval_s

    async def tick(self) -> bool:
        """Report this worker's figures; send the fleet's if it holds the lease (say so)."""
        now_s = self._clock()
        now = datetime.fromtimestamp(now_s, UTC)
        metrics = self._ctx.metrics
        rates = self._rates.observe(now_s, delivered_totals(metrics))
        store = self._ctx.stats
        await store.report(WorkerReport(self.instance, now, rates, dlq_depth(metrics)))
        if not await store.hold_lease(self.instance, now, self.stale_after_s):
            return False
        reports = await store.fresh_reports(now - timedelta(seconds=self.stale_after_s))
        online = await self._ctx.presence.count_online_by_type()
        metrics.accounts_online.set(sum(online.values()))
        figures = fleet_payload(reports, online, int(now_s * 1000))
        await self._ctx.deliverer.deliver(
            [Delivery(PRIVATE_ADMIN, EVENT, figures), Delivery(ADMIN_STATS, EVENT, figures)]
        )
        await store.forget_before(now - timedelta(seconds=max(FORGET_AFTER_S, self.stale_after_s)))
        return True

    async def send_forever(self) -> None:
        """Tick now and every ``stats_interval_s``; failures are logged, never fatal."""
        sending = False
        while True:
            try:
                sent = await self.tick()
            except Exception as error:  # a background loop must outlive outages
                log.warning("fanout.stats_failed", error=f"{type(error).__name__}: {error}")
            else:
                if sent != sending:
                    log.info("fanout.stats_sender", sending=sent, instance=self.instance)
                sending = sent
            await asyncio.sleep(self._ctx.settings.stats_interval_s)
