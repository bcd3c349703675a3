"""Processing one message: parse -> drop stale | skip duplicate -> load -> decide -> deliver.

Deliveries of non-ephemeral events are numbered and recorded in history (the recorder,
``worker.history``) between decide and deliver, so every payload carries its channel
cursor. A message's ``Turn`` (``worker.flow.lanes``) orders numbering and handing over to
Soketi within its lane; everything else runs concurrently.

Nothing here acks, rejects or publishes: the consumer's ``settle`` does that, driven by the
``Result`` returned or the ``FanoutError`` raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, Protocol

from handlers import route
from handlers.model import Delivery, Store
from schemas import EPHEMERAL_TYPES, Event
from worker.errors import FanoutError, PushedUnrecorded, StoreUnavailable, TransientError
from worker.events import parse
from worker.flow.ids import InFlightIds, Unrecorded
from worker.flow.lanes import NUMBER, SEND, UNORDERED, Turn

Outcome = Literal["delivered", "duplicate", "dropped"]


class ProcessedIds(Protocol):
    """The record of envelope ids already pushed (``worker.mongo.processed.ProcessedLog``).

    ``seen`` may start its query when called, before it is awaited.
    """

    def seen(self, ids: Collection[str]) -> Awaitable[set[str]]: ...

    async def record(self, ids: Collection[str]) -> None: ...


class Deliverer(Protocol):
    """Something that triggers deliveries on Soketi (``worker.soketi.batcher.TriggerBatcher``)."""

    async def deliver(
        self,
        deliveries: Sequence[Delivery],
        socket_id: str | None = None,
        queued: Callable[[], None] | None = None,
    ) -> int: ...

    def enqueue(
        self, deliveries: Sequence[Delivery], socket_id: str | None = None
    ) -> asyncio.Future[int]:
        """Put the deliveries in line now; the future answers as ``deliver`` would."""


class Recorder(Protocol):
    """Numbers and records deliveries before they go out (``worker.history.recorder.History``).

    ``stamp`` waits for ``turn``'s ``NUMBER`` step before numbering and passes it once the
    numbers are taken. ``maybe_recorded`` is false on a message's first delivery, when no
    earlier attempt can have recorded it (a lookup saved).
    """

    async def stamp(
        self,
        event: Event,
        deliveries: Sequence[Delivery],
        turn: Turn = UNORDERED,
        maybe_recorded: bool = True,
    ) -> list[Delivery]: ...

    async def stamp_batch(
        self, batch: Sequence[tuple[Event, Sequence[Delivery], Turn]]
    ) -> list[list[Delivery]]:
        """``stamp`` for several events' first deliveries: numbers in turn order, one write."""


class Gate(Protocol):
    """Whether Soketi may be called now; ``wait`` returns once it may (or raises on shutdown)."""

    def is_open(self) -> bool: ...

    async def wait(self) -> None: ...


class OpenGate:
    """A gate that never closes (tests, tools)."""

    def is_open(self) -> bool:
        """Always open."""
        return True

    async def wait(self) -> None:
        """Never waits."""


@dataclass(frozen=True, slots=True)
class Result:
    """What processing did with a valid event."""

    event: Event
    outcome: Outcome
    deliveries: int = 0
    age_s: float = 0.0
    detail: str = ""


class Pipeline:
    """Takes one message body all the way to Soketi; raises a ``FanoutError`` when it cannot.

    Built once by the wiring with its collaborators (typed by protocol). It owns the
    process's memory of ids in flight (the consumer holds a message's id from arrival to
    settlement) and of ids pushed but not recorded. The latter also travels with the message:
    ``PushedUnrecorded`` -> settle -> the ``fanout-pushed`` header -> ``process(pushed=...)``.
    """

    def __init__(
        self,
        *,
        store: Store,
        processed: ProcessedIds,
        soketi: Deliverer,
        clock: Callable[[], float],
        ephemeral_max_age_s: float = 10.0,
        history: Recorder | None = None,
        soketi_gate: Gate | None = None,
    ) -> None:
        self.store = store
        self.processed = processed
        self.soketi = soketi
        self.clock = clock
        self.ephemeral_max_age_s = ephemeral_max_age_s
        self.history = history
        self.soketi_gate: Gate = soketi_gate or OpenGate()
        self.in_flight = InFlightIds()
        self.unrecorded = Unrecorded()

    async def process(
        self,
        body: bytes,
        turn: Turn = UNORDERED,
        *,
        maybe_recorded: bool = True,
        pushed: tuple[int, float] | None = None,
    ) -> Result:
        """Parse, then deliver once (or drop, for ephemeral events); the caller finishes
        ``turn`` afterwards.

        ``pushed`` (``(deliveries, age_s)``, from the message's ``fanout-pushed`` header) says
        Soketi already accepted the event: it is only marked pushed, never sent again.
        """
        event = parse(body)
        try:
            if event.type in EPHEMERAL_TYPES:
                return await self._process_ephemeral(event, turn)
            return await self._deliver_once(event, turn, maybe_recorded, pushed)
        except FanoutError as error:
            error.event_type, error.event_id = event.type, event.id
            raise

    async def _deliver_once(
        self,
        event: Event,
        turn: Turn,
        maybe_recorded: bool = False,
        pushed: tuple[int, float] | None = None,
    ) -> Result:
        if pushed is None:
            pushed = self.unrecorded.get(event.id)
        if pushed is None:
            handler = route(event)
            # The duplicate check and the lookups go out together: a duplicate is rare, and its
            # wasted lookups cost less than a round trip of waiting on every message.
            checking = self.processed.seen((event.id,))
            try:
                found = await handler.load(event, self.store)
            except BaseException:
                if isinstance(checking, Coroutine):
                    checking.close()
                raise
            if await checking:
                return Result(event, "duplicate")
            deliveries = handler.decide(event, found)
            if deliveries:
                deliveries = await self._stamp(event, deliveries, turn, maybe_recorded)
                # Recorded first: while Soketi is down, polling clients already see it.
                await self.soketi_gate.wait()
                await turn.wait(SEND)
                await self.soketi.deliver(deliveries, event.socket_id, partial(turn.passed, SEND))
            pushed = (len(deliveries), self.clock() - event.timestamp_ms / 1000)
        try:
            await self.processed.record((event.id,))
        except BaseException as error:
            # Soketi has it: whatever retries this event must only record it, not push again.
            # This process remembers it (another copy of the id, a redelivery after a failed
            # settle); the error carries it to the retry tier's copy (``fanout-pushed``).
            self.unrecorded.add(event.id, *pushed)
            if isinstance(error, StoreUnavailable) and not isinstance(error, PushedUnrecorded):
                raise PushedUnrecorded(str(error), deliveries=pushed[0], age_s=pushed[1]) from error
            if isinstance(error, FanoutError):
                error.pushed = pushed  # settle keeps ``fanout-pushed`` on whatever copy it makes
            raise
        self.unrecorded.discard(event.id)
        return Result(event, "delivered", *pushed)

    async def _process_ephemeral(self, event: Event, turn: Turn) -> Result:
        """Typing events: no retry, no history; stale or undeliverable ones are dropped."""
        age_s = self.clock() - event.timestamp_ms / 1000
        if age_s > self.ephemeral_max_age_s:
            return Result(event, "dropped", age_s=age_s, detail="stale")
        if not self.soketi_gate.is_open():
            return Result(event, "dropped", age_s=age_s, detail="soketi_unavailable")
        try:
            return await self._deliver_once(event, turn)
        except TransientError as error:
            return Result(event, "dropped", age_s=age_s, detail=error.reason)

    async def _stamp(
        self, event: Event, deliveries: list[Delivery], turn: Turn, maybe_recorded: bool
    ) -> list[Delivery]:
        """Number and record ``deliveries`` in ``turn`` order (left as they are without a
        recorder: tests and tools)."""
        if self.history is not None:
            return await self.history.stamp(event, deliveries, turn, maybe_recorded)
        await turn.wait(NUMBER)
        turn.passed(NUMBER)
        return deliveries
