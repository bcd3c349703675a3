"""What the browser-facing features share: one frozen record, every collaborator built once.

A leaf of the web room: the features (auth, presence, history, stats, console) take a
``WebContext`` and import nothing from each other through it, so no import runs back up.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractExchange

from worker.config import Settings
from worker.metrics import Metrics
from worker.mongo.access import AccessStore
from worker.mongo.history import HistoryLog
from worker.mongo.presence import PresenceStore
from worker.mongo.stats import StatsStore
from worker.soketi.batcher import TriggerBatcher
from worker.soketi.client import SoketiClient

#: A background coroutine the worker runs until it stops.
Task = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class WebContext:
    """The collaborators of the web side, built by the wiring and shared, never rebuilt."""

    settings: Settings
    metrics: Metrics
    #: Soketi's read calls (occupied channels, for presence reconciliation).
    soketi: SoketiClient
    #: The one way to trigger events (admin stats).
    deliverer: TriggerBatcher
    #: The events exchange on the publishing connection (confirmed publishes).
    events: AbstractExchange
    access: AccessStore
    presence: PresenceStore
    #: The fleet's stats reports and the sender's lease (``fanout_stats``).
    stats: StatsStore
    history: HistoryLog
