"""Prometheus metrics on an injected registry; every label comes from a closed set."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "bazaar_fanout"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


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
    consumer_up: Gauge
    retries_scheduled: Counter
    circuit_open: Gauge
    reconnects: Counter
    queue_messages: Gauge
    loop_lag_seconds: Gauge
    auth_requests: Counter
    webhooks: Counter
    accounts_online: Gauge
    history_requests: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        """Register every metric on ``registry`` (a fresh one when omitted)."""
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            messages=Counter(
                f"{PREFIX}_messages",
                "Messages settled, by event type, outcome and dead-letter reason.",
                ("event_type", "outcome", "reason"),
                registry=reg,
            ),
            processing_seconds=Histogram(
                f"{PREFIX}_processing_seconds",
                "Time from receiving a message to settling it.",
                ("event_type",),
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            event_age_seconds=Histogram(
                f"{PREFIX}_event_age_seconds",
                "Age of an event (now - occurredAt) when Soketi accepted it.",
                buckets=_AGE_BUCKETS,
                registry=reg,
            ),
            soketi_responses=Counter(
                f"{PREFIX}_soketi_responses",
                "Soketi HTTP API answers by status class (2xx, 4xx, 5xx, error).",
                ("status_class",),
                registry=reg,
            ),
            soketi_request_seconds=Histogram(
                f"{PREFIX}_soketi_request_seconds",
                "Duration of Soketi HTTP API calls.",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            triggers_per_request=Histogram(
                f"{PREFIX}_triggers_per_request",
                "Pusher events carried by one Soketi API call.",
                buckets=(1, 2, 3, 5, 10, 20, 50, 100),
                registry=reg,
            ),
            mongodb_query_seconds=Histogram(
                f"{PREFIX}_mongodb_query_seconds",
                "Duration of MongoDB queries by operation.",
                ("operation",),
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            in_flight=Gauge(
                f"{PREFIX}_in_flight_messages",
                "Messages received and not yet settled.",
                registry=reg,
            ),
            consumer_up=Gauge(
                f"{PREFIX}_consumer_up",
                "1 while the worker is consuming its queue.",
                registry=reg,
            ),
            retries_scheduled=Counter(
                f"{PREFIX}_retries_scheduled",
                "Messages sent to a delayed-retry tier, by tier.",
                ("tier",),
                registry=reg,
            ),
            circuit_open=Gauge(
                f"{PREFIX}_circuit_open",
                "1 while the circuit breaker of a downstream (soketi, mongodb) is open.",
                ("downstream",),
                registry=reg,
            ),
            reconnects=Counter(
                f"{PREFIX}_reconnects",
                "Broker connection recoveries and consumers re-registered after a loss.",
                ("kind",),
                registry=reg,
            ),
            queue_messages=Gauge(
                f"{PREFIX}_queue_messages",
                "Messages ready in the worker's queues, sampled: main, dlq, retry_<tier>.",
                ("queue",),
                registry=reg,
            ),
            loop_lag_seconds=Gauge(
                f"{PREFIX}_event_loop_lag_seconds",
                "How late the event loop's heartbeat last ran (a blocked loop shows here).",
                registry=reg,
            ),
            auth_requests=Counter(
                f"{PREFIX}_auth_requests",
                "Channel and user authorization requests by endpoint (channel, user) and "
                "outcome (allowed, unauthenticated, forbidden, invalid, unavailable).",
                ("endpoint", "outcome"),
                registry=reg,
            ),
            webhooks=Counter(
                f"{PREFIX}_webhooks",
                "Soketi webhooks by outcome (accepted, forged, stale, invalid).",
                ("outcome",),
                registry=reg,
            ),
            accounts_online=Gauge(
                f"{PREFIX}_accounts_online",
                "Accounts with at least one browser on their personal channel.",
                registry=reg,
            ),
            history_requests=Counter(
                f"{PREFIX}_history_requests",
                "Channel history reads by outcome (ok, gone, unauthenticated, forbidden, invalid).",
                ("outcome",),
                registry=reg,
            ),
        )

    def soketi_response(self, status: int, duration_s: float) -> None:
        """Count one Soketi answer (status 0: no answer at all) and its duration."""
        status_class = f"{status // 100}xx" if status else "error"
        self.soketi_responses.labels(status_class=status_class).inc()
        self.soketi_request_seconds.observe(duration_s)

    def mongodb_query(self, operation: str, duration_s: float) -> None:
        """Time one MongoDB query; ``operation`` is one of the gateway's fixed names."""
        self.mongodb_query_seconds.labels(operation=operation).observe(duration_s)
