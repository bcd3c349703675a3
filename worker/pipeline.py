"""Processing one message: parse -> drop stale | skip duplicate -> load -> decide -> deliver.

Nothing here acks, rejects or publishes: the consumer's ``settle`` does that, driven by the
``Result`` returned or the ``FanoutError`` raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from handlers import route
from handlers.model import Delivery, Store
from schemas import EPHEMERAL_TYPES, Event, EventRejected, parse_event
from worker.errors import FanoutError, InvalidMessage, TransientError

Outcome = Literal["delivered", "duplicate", "dropped"]


class ProcessedIds(Protocol):
    """The record of envelope ids already pushed (``worker.mongo.ProcessedLog``)."""

    async def seen(self, ids: Collection[str]) -> set[str]: ...

    async def record(self, ids: Collection[str]) -> None: ...


class Deliverer(Protocol):
    """Something that triggers deliveries on Soketi (``worker.soketi.SoketiClient``)."""

    async def deliver(
        self, deliveries: Sequence[Delivery], socket_id: str | None = None
    ) -> int: ...


class InFlightIds:
    """Serialises processing of one envelope id inside this process.

    Two copies of an id (a redelivery racing the original, a backend publishing twice) may
    sit in the same prefetch window; without this both could pass the duplicate check before
    either is recorded.
    """

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def hold(self, event_id: str) -> AsyncIterator[None]:
        """Wait until no other task processes ``event_id``, then hold it for the block."""
        while (other := self._running.get(event_id)) is not None:
            await other.wait()
        done = self._running[event_id] = asyncio.Event()
        try:
            yield
        finally:
            del self._running[event_id]
            done.set()


@dataclass(frozen=True, slots=True)
class Deps:
    """The collaborators processing needs, typed by protocol."""

    store: Store
    processed: ProcessedIds
    soketi: Deliverer
    clock: Callable[[], float]
    ephemeral_max_age_s: float = 10.0
    in_flight: InFlightIds = field(default_factory=InFlightIds)


@dataclass(frozen=True, slots=True)
class Result:
    """What processing did with a valid event."""

    event: Event
    outcome: Outcome
    deliveries: int = 0
    age_s: float = 0.0
    detail: str = ""


def parse(body: bytes) -> Event:
    """Validate a message body into one catalogue event, or raise ``InvalidMessage``."""
    try:
        return parse_event(body)
    except EventRejected as error:
        raise InvalidMessage(str(error), reason=error.reason) from error


async def process(body: bytes, deps: Deps) -> Result:
    """Take one message body all the way to Soketi; raise a ``FanoutError`` when it cannot."""
    event = parse(body)
    try:
        if event.type in EPHEMERAL_TYPES:
            return await _process_ephemeral(event, deps)
        return await _deliver_once(event, deps)
    except FanoutError as error:
        error.event_type, error.event_id = event.type, event.id
        raise


async def _deliver_once(event: Event, deps: Deps) -> Result:
    async with deps.in_flight.hold(event.id):
        if await deps.processed.seen((event.id,)):
            return Result(event, "duplicate")
        handler = route(event)
        deliveries = handler.decide(event, await handler.load(event, deps.store))
        if deliveries:
            await deps.soketi.deliver(deliveries, event.socket_id)
        age_s = deps.clock() - event.timestamp_ms / 1000
        await deps.processed.record((event.id,))
        return Result(event, "delivered", len(deliveries), age_s)


async def _process_ephemeral(event: Event, deps: Deps) -> Result:
    """Typing events: no retry, no history; stale or undeliverable ones are dropped."""
    age_s = deps.clock() - event.timestamp_ms / 1000
    if age_s > deps.ephemeral_max_age_s:
        return Result(event, "dropped", age_s=age_s, detail="stale")
    try:
        return await _deliver_once(event, deps)
    except TransientError as error:
        return Result(event, "dropped", age_s=age_s, detail=error.reason)
