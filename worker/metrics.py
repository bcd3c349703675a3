"""Prometheus metrics on an injected registry; every label comes from a closed set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "bazaar_fanout"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

_M = TypeVar("_M", Counter, Gauge, Histogram)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Every metric the worker exports; build one per process (tests: per test) with ``create``."""

    registry: CollectorRegistry
    messages: Counter
    processing_seconds: Histogram
    event_age_seconds: Histogram
    soketi_responses: Counter
    soketi_request_seconds: Histogram
    triggers_per_request: Histogram
    mongodb_query_seconds: Histogram
    in_flight: Gauge
    batch_messages: Histogram
    consumer_up: Gauge
    shards_owned: Gauge
    retries_scheduled: Counter
    circuit_open: Gauge
    reconnects: Counter
    queue_messages: Gauge
    loop_lag_seconds: Gauge
    auth_requests: Counter
    webhooks: Counter
    accounts_online: Gauge
    history_requests: Counter
    #: Labelled children already looked up, by metric and label values (see ``child``).
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Register every metric on ``registry`` (a fresh one when omitted)."""
        reg = registry if registry is not None else CollectorRegistry()
        built: dict[str, Any] = {spec.field: spec.build(reg) for spec in _SPECS}
        return cls(registry=reg, **built)

    def child(self, metric: _M, *values: str) -> _M:
        """``metric.labels(*values)`` (label values in the metric's label order), looked up
        once: a hot path pays a dict lookup per message instead of ``labels``' checks and
        lock. Labels come from closed sets, so this holds as many children as the metric."""
        key = (id(metric), values)
        found: _M | None = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def soketi_response(self, status: int, duration_s: float) -> None:
        """Count one Soketi answer (status 0: no answer at all) and its duration."""
        status_class = f"{status // 100}xx" if status else "error"
        self.child(self.soketi_responses, status_class).inc()
        self.soketi_request_seconds.observe(duration_s)

    def mongodb_query(self, operation: str, duration_s: float) -> None:
        """Time one MongoDB query; ``operation`` is one of the gateway's fixed names."""
        self.child(self.mongodb_query_seconds, operation).observe(duration_s)


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one metric is registered."""

    field: str
    kind: type[Counter | Gauge | Histogram]
    suffix: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    def build(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        """The metric, registered on ``registry``."""
        name = f"{PREFIX}_{self.suffix}"
        if self.buckets is not None:
            return Histogram(name, self.help, self.labels, buckets=self.buckets, registry=registry)
        return self.kind(name, self.help, self.labels, registry=registry)


#: Every metric: its field, kind, name after ``PREFIX``, help, labels and buckets.
_SPECS: Final[tuple[_Spec, ...]] = (
    _Spec(
        "messages",
        Counter,
        "messages",
        "Messages settled, by event type, outcome and dead-letter reason.",
        ("event_type", "outcome", "reason"),
    ),
    _Spec(
        "processing_seconds",
        Histogram,
        "processing_seconds",
        "Time from receiving a message to settling it.",
        ("event_type",),
        _LATENCY_BUCKETS,
    ),
    _Spec(
        "event_age_seconds",
        Histogram,
        "event_age_seconds",
        "Age of an event (now - occurredAt) when Soketi accepted it.",
        (),
        _AGE_BUCKETS,
    ),
    _Spec(
        "soketi_responses",
        Counter,
        "soketi_responses",
        "Soketi HTTP API answers by status class (2xx, 4xx, 5xx, error).",
        ("status_class",),
    ),
    _Spec(
        "soketi_request_seconds",
        Histogram,
        "soketi_request_seconds",
        "Duration of Soketi HTTP API calls.",
        (),
        _LATENCY_BUCKETS,
    ),
    _Spec(
        "triggers_per_request",
        Histogram,
        "triggers_per_request",
        "Pusher events carried by one Soketi API call.",
        (),
        (1, 2, 3, 5, 10, 20, 50, 100),
    ),
    _Spec(
        "mongodb_query_seconds",
        Histogram,
        "mongodb_query_seconds",
        "Duration of MongoDB queries by operation.",
        ("operation",),
        _LATENCY_BUCKETS,
    ),
    _Spec(
        "batch_messages",
        Histogram,
        "batch_messages",
        "First deliveries processed together as one batch (worker.flow.batch).",
        (),
        (1, 2, 5, 10, 20, 50, 100, 200, 500),
    ),
    _Spec(
        "in_flight",
        Gauge,
        "in_flight_messages",
        "Messages received and not yet settled.",
        (),
    ),
    _Spec(
        "consumer_up",
        Gauge,
        "consumer_up",
        "1 while the worker is consuming its queue.",
        (),
    ),
    _Spec(
        "shards_owned",
        Gauge,
        "shards_owned",
        "Shards the fleet assigns to this worker (sharded mode; its consumer is the one the "
        "broker should activate on them).",
        (),
    ),
    _Spec(
        "retries_scheduled",
        Counter,
        "retries_scheduled",
        "Messages sent to a delayed-retry tier, by tier.",
        ("tier",),
    ),
    _Spec(
        "circuit_open",
        Gauge,
        "circuit_open",
        "1 while the circuit breaker of a downstream (soketi, mongodb) is open.",
        ("downstream",),
    ),
    _Spec(
        "reconnects",
        Counter,
        "reconnects",
        "Broker connection recoveries and consumers re-registered after a loss.",
        ("kind",),
    ),
    _Spec(
        "queue_messages",
        Gauge,
        "queue_messages",
        "Messages ready in the worker's queues, sampled: main, dlq, retry_<tier>.",
        ("queue",),
    ),
    _Spec(
        "loop_lag_seconds",
        Gauge,
        "event_loop_lag_seconds",
        "How late the event loop's heartbeat last ran (a blocked loop shows here).",
        (),
    ),
    _Spec(
        "auth_requests",
        Counter,
        "auth_requests",
        "Channel and user authorization requests by endpoint (channel, user) and "
        "outcome (allowed, unauthenticated, forbidden, invalid, unavailable).",
        ("endpoint", "outcome"),
    ),
    _Spec(
        "webhooks",
        Counter,
        "webhooks",
        "Soketi webhooks by outcome (accepted, forged, stale, invalid).",
        ("outcome",),
    ),
    _Spec(
        "accounts_online",
        Gauge,
        "accounts_online",
        "Accounts with at least one browser on their personal channel.",
        (),
    ),
    _Spec(
        "history_requests",
        Counter,
        "history_requests",
        "Channel history reads by outcome (ok, gone, unauthenticated, forbidden, invalid).",
        ("outcome",),
    ),
)
