"""The depth of the worker's queues, sampled in the background (``queue_messages``)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aio_pika.abc import AbstractChannel

from worker.broker.topology import Topology, tier_label
from worker.metrics import Metrics

log = structlog.get_logger("fanout")


def queue_labels(topology: Topology) -> dict[str, str]:
    """Queue name -> metric label, a closed set derived from the configuration."""
    labels = {topology.queue: "main", topology.dlq: "dlq"}
    for index, delay_s in enumerate(topology.retry_delays_s):
        labels[topology.tier(index)] = f"retry_{tier_label(delay_s)}"
    for index in range(topology.shards):
        labels[topology.shard(index)] = f"shard_{index}"
    return labels


async def sample_queues(
    channel: AbstractChannel, topology: Topology, metrics: Metrics, interval_s: float = 10.0
) -> None:
    """Every ``interval_s``, read the ready-message count of each queue (passive declare)."""
    labels = queue_labels(topology)
    while True:
        for name, label in labels.items():
            with contextlib.suppress(Exception):
                # The raw channel: aio-pika's declare_queue(passive=True) returns a stale count.
                underlay = await asyncio.wait_for(channel.get_underlay_channel(), 5)
                declared = await underlay.queue_declare(name, passive=True, timeout=5)
                metrics.queue_messages.labels(queue=label).set(declared.message_count or 0)
        await asyncio.sleep(interval_s)
