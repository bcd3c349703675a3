"""The common shape of a Pusher payload: data, enrichment, ``eventId`` and ``timestamp``."""

from __future__ import annotations

from typing import Any

from schemas import Event


def payload(event: Event, **enriched: Any) -> dict[str, Any]:
    """``data`` as published (camelCase, defaults filled), then ``enriched``, then the stamps.

    ``enriched`` keys are camelCase payload keys; one that repeats a ``data`` key replaces it
    (``items`` of ``order.created``, ``shopId`` of ``product.stock_low``).
    """
    return {
        **event.data.model_dump(by_alias=True, mode="json"),
        **enriched,
        "eventId": event.id,
        "timestamp": event.timestamp_ms,
    }
