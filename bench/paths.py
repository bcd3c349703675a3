"""What every measured path takes (:class:`Options`) and gives (:class:`Result`), and the
arithmetic they share.

The paths themselves: three baselines in :mod:`bench.baselines`, ``node-direct`` in
:mod:`bench.node_direct`, the worker (live, backlog, latency, long run) in
:mod:`bench.worker_paths`. Every path gets its own copy of
the stream (fresh event ids) and its own subscribers. Throughput counts from the first send
(or publish) to the last witness receipt at the subscribers.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from bench.receipts import Receivers, Tally
from bench.stream import BenchEvent, amqp_message, stamp
from bench.usage import WORKER, Usage

PUBLISH_WINDOW = 500  # confirmed publishes in flight at once


@dataclass(frozen=True, slots=True)
class Options:
    """What every path needs to know besides the stream."""

    subscribers: int
    prefetch: int
    worker_source: Path
    worker_log_level: str
    worker_env: dict[str, str]


@dataclass(frozen=True, slots=True)
class MongoShare:
    """Summed per-message durations from the worker's histograms over one run."""

    processing_s: float
    mongodb_s: float
    soketi_s: float
    messages: int
    operations: dict[str, tuple[int, float]]  # operation -> (count, summed seconds)
    soketi_calls: int = 0
    soketi_triggers: int = 0  # Pusher events those calls carried


@dataclass(slots=True)
class Result:
    """One path's measurement in one run."""

    path: str
    events: int
    rate: float | None = None  # events/s over the path's main window
    e2e_rate: float | None = None  # worker: from publish start to last receipt
    ages_s: list[float] = field(default_factory=list)
    cpu_s_per_1k: float | None = None
    node_cpu_s_per_1k: float | None = None  # node-direct: its Node process's CPU
    peak_rss_mb: float | None = None
    # CPU s per 1,000 events by process (bench.usage.WORKER, STANDIN, ...): the worker and
    # the others that could be read at both ends of the window
    process_cpu_s_per_1k: dict[str, float] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    receipts: int = 0
    unexpected: int = 0
    mongo: MongoShare | None = None
    mongo_documents: dict[str, int] = field(default_factory=dict)  # fanout_* after the run
    mongo_documents_per_event: float | None = None  # their sum / events
    mongo_round_trips_per_event: float | None = None  # mongodb_query_seconds_count / events
    note: str = ""

    def percentile_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of event age in milliseconds, if ages were measured."""
        if len(self.ages_s) < 2:
            return None
        cuts = statistics.quantiles(self.ages_s, n=1000, method="inclusive")
        return cuts[min(998, max(0, round(q * 1000) - 1))] * 1000


def run_timeout_s(events: int, floor_rate: float = 10.0) -> float:
    """The most a run may take; a run ends earlier when receipts stall (``Receivers.wait``)."""
    return 30.0 + events / floor_rate


def events_per_s(count: int, start: float, end: float) -> float | None:
    """``count`` events over the window from ``start`` to ``end`` (None if it is empty)."""
    return count / (end - start) if end > start else None


def with_tally(result: Result, tally: Tally) -> Result:
    """``result`` with the subscribers' counts (lost, duplicated, ...) and notes about them."""
    if tally.dropped:
        result.note = "; ".join(
            filter(None, [result.note, f"{tally.dropped} stale typing events dropped"])
        )
    if tally.stalled:
        result.note = "; ".join(filter(None, [result.note, "STALLED: receipts stopped coming"]))
    result.lost, result.duplicated = tally.lost, tally.duplicated
    result.receipts, result.unexpected = tally.receipts, tally.unexpected
    return result


def record_cost(result: Result, before: Usage, after: Usage, events: int) -> None:
    """Set the CPU per 1,000 events (worker and neighbours) and peak RSS of a window."""
    result.cpu_s_per_1k = (after.cpu_s - before.cpu_s) / events * 1000
    result.peak_rss_mb = after.hwm_kb / 1024
    result.process_cpu_s_per_1k = {WORKER: result.cpu_s_per_1k}
    for name, now in after.processes.items():
        then = before.processes.get(name, {})
        common = now.keys() & then.keys()  # a process that went away or is new is left out
        if common:
            spent = sum(now[pid] - then[pid] for pid in common)
            result.process_cpu_s_per_1k[name] = spent / events * 1000


def record_mongo(result: Result, share: MongoShare, documents: dict[str, int]) -> None:
    """Set the run's MongoDB share, its documents by collection, and documents and round
    trips per event."""
    result.mongo = share
    result.mongo_round_trips_per_event = (
        sum(count for count, _ in share.operations.values()) / result.events
    )
    result.mongo_documents = documents
    if documents:
        result.mongo_documents_per_event = sum(documents.values()) / result.events


def mongo_share(before: dict[str, float], after: dict[str, float]) -> MongoShare:
    """Where the worker's time went between two ``/metrics`` readings."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    prefix = "bazaar_fanout_"
    operations: dict[str, tuple[int, float]] = {}
    for key in after:
        if key.startswith(f"{prefix}mongodb_query_seconds_sum{{operation="):
            operation = key.split("operation=", 1)[1].rstrip("}")
            count_key = key.replace("_sum{", "_count{")
            operations[operation] = (int(delta(count_key)), delta(key))
    return MongoShare(
        processing_s=delta(f"{prefix}processing_seconds_sum"),
        mongodb_s=delta(f"{prefix}mongodb_query_seconds_sum"),
        soketi_s=delta(f"{prefix}soketi_request_seconds_sum"),
        messages=int(delta(f"{prefix}processing_seconds_count")),
        operations=operations,
        soketi_calls=int(delta(f"{prefix}triggers_per_request_count")),
        soketi_triggers=int(delta(f"{prefix}triggers_per_request_sum")),
    )


async def publish_all(
    publish: Callable[[aio_pika.Message, str], Awaitable[object]],
    events: Iterable[BenchEvent],
    *,
    stamp_each: Receivers | None,
) -> None:
    """Publish with confirms, ``PUBLISH_WINDOW`` at a time; stamp ``occurredAt`` when asked."""
    window: list[Awaitable[object]] = []
    for event in events:
        if stamp_each is not None:
            stamp_each.sent(event.event_id, stamp(event.envelope))
        window.append(publish(amqp_message(event.envelope), event.type))
        if len(window) >= PUBLISH_WINDOW:
            await asyncio.gather(*window)
            window = []
    await asyncio.gather(*window)
