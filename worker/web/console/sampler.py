"""The console's ops pane: throughput by outcome, event age, circuits and queue depths.

The figures come from the worker's own metrics registry: a ``Sampler`` keeps ``WINDOW_S``
of cumulative samples, and the pure functions here turn them into a summary.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from worker.metrics import PREFIX, Metrics

SAMPLE_INTERVAL_S: Final = 5.0
WINDOW_S: Final = 600.0
AGE_WINDOW_S: Final = 60.0
DOWNSTREAMS: Final = ("soketi", "mongodb")


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters at one moment: settled messages by outcome, event-age buckets."""

    at_s: float
    outcomes: Mapping[str, float]
    age_buckets: tuple[tuple[float, float], ...]


def take_sample(metrics: Metrics, at_s: float) -> Sample:
    """Read the counters a throughput chart and an age estimate need."""
    outcomes: dict[str, float] = {}
    for metric in metrics.messages.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                outcome = s.labels["outcome"]
                outcomes[outcome] = outcomes.get(outcome, 0.0) + s.value
    buckets: list[tuple[float, float]] = []
    for metric in metrics.event_age_seconds.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
    return Sample(at_s, outcomes, tuple(buckets))


def series(samples: list[Sample]) -> list[dict[str, Any]]:
    """Messages settled per outcome between consecutive samples, oldest first."""
    points = []
    for before, after in itertools.pairwise(samples):
        outcomes = {
            name: max(0.0, value - before.outcomes.get(name, 0.0))
            for name, value in after.outcomes.items()
        }
        points.append(
            {
                "at": int(after.at_s * 1000),
                "seconds": after.at_s - before.at_s,
                "outcomes": outcomes,
            }
        )
    return points


def age_quantile(before: Sample, after: Sample, q: float) -> float | None:
    """Upper bucket bound of the ``q`` quantile of event ages observed between two samples."""
    earlier = dict(before.age_buckets)
    deltas = [(le, count - earlier.get(le, 0.0)) for le, count in after.age_buckets]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for le, count in deltas:
        if count >= q * total:
            return le
    return None


def gauge_values(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    """Every sample of gauge ``name`` by its ``label``."""
    found: dict[str, float] = {}
    for metric in metrics.registry.collect():
        for s in metric.samples:
            if s.name == name and label in s.labels:
                found[s.labels[label]] = s.value
    return found


class Sampler:
    """Keeps ``WINDOW_S`` of samples, taken every ``SAMPLE_INTERVAL_S`` by a background task."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(WINDOW_S / SAMPLE_INTERVAL_S) + 1)
        self._samples.append(take_sample(metrics, clock()))

    def take(self) -> None:
        """Add a sample now."""
        self._samples.append(take_sample(self._metrics, self._clock()))

    async def run_forever(self) -> None:
        """Sample until cancelled."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self.take()

    def summary(self) -> dict[str, Any]:
        """What ``GET /console/api/ops`` answers."""
        now = take_sample(self._metrics, self._clock())
        samples = [*self._samples, now]
        recent = [s for s in samples if s.at_s >= now.at_s - AGE_WINDOW_S] or [now]
        oldest = recent[0] if len(recent) > 1 else samples[0]
        metrics = self._metrics
        circuits = gauge_values(metrics, f"{PREFIX}_circuit_open", "downstream")
        return {
            "now": int(now.at_s * 1000),
            "totals": dict(now.outcomes),
            "series": series(samples),
            "eventAge": {
                "p50": age_quantile(oldest, now, 0.5),
                "p95": age_quantile(oldest, now, 0.95),
                "windowSeconds": AGE_WINDOW_S,
            },
            "circuits": {
                name: "open" if circuits.get(name, 0.0) >= 1 else "closed"
                for name in sorted({*DOWNSTREAMS, *circuits})
            },
            "queues": gauge_values(metrics, f"{PREFIX}_queue_messages", "queue"),
            "inFlight": metrics.registry.get_sample_value(f"{PREFIX}_in_flight_messages") or 0,
            "consuming": (metrics.registry.get_sample_value(f"{PREFIX}_consumer_up") or 0) >= 1,
        }
