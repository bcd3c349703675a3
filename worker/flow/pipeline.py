"""Processing one message: parse -> drop stale | skip duplicate -> load -> decide -> deliver.

Deliveries of non-ephemeral events are numbered and recorded in history (``Deps.history``)
between decide and deliver, so every payload carries its channel cursor. A message's
``Turn`` (``worker.lanes``) orders numbering and handing over to Soketi within its
conversation; everything else runs concurrently.

Nothing here acks, rejects or publishes: the consumer's ``settle`` does that, driven by the
``Result`` returned or the ``FanoutError`` raised.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

from handlers import route
from handlers.model import Delivery, Store
from schemas import EPHEMERAL_TYPES, Event
from worker.errors import FanoutError, TransientError
from worker.events import parse
from worker.flow.lanes import NUMBER, SEND, UNORDERED, Turn

Outcome = Literal["delivered", "duplicate", "dropped"]


class ProcessedIds(Protocol):
    """The record of envelope ids already pushed (``worker.mongo.gateway.ProcessedLog``).

    ``seen`` may start its query when called, before it is awaited (``BatchingProcessedIds``).
    """

    def seen(self, ids: Collection[str]) -> Awaitable[set[str]]: ...

    async def record(self, ids: Collection[str]) -> None: ...


class Deliverer(Protocol):
    """Something that triggers deliveries on Soketi (``worker.soketi.client.SoketiClient``)."""

    async def deliver(
        self,
        deliveries: Sequence[Delivery],
        socket_id: str | None = None,
        queued: Callable[[], None] | None = None,
    ) -> int: ...


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


class NoHistory:
    """A ``Recorder`` that records nothing and leaves deliveries as they are."""

    async def stamp(
        self,
        event: Event,
        deliveries: Sequence[Delivery],
        turn: Turn = UNORDERED,
        maybe_recorded: bool = True,
    ) -> list[Delivery]:
        """``deliveries`` unchanged."""
        await turn.wait(NUMBER)
        turn.passed(NUMBER)
        return list(deliveries)


class InFlightIds:
    """Serialises processing of one envelope id inside this process.

    Two copies of an id (a redelivery racing the original, a backend publishing twice) may
    sit in the same prefetch window; without this both could pass the duplicate check before
    either is recorded. The consumer holds a message's id from arrival to settlement, so a
    copy never waits on a lane turn of the copy it waits for.
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


class Unrecorded:
    """Ids Soketi accepted whose record in the processed log failed (MongoDB unreachable).

    A later attempt of the same event in this process (held for an open circuit, or back
    from a retry tier) records the id instead of pushing it again. Bounded, oldest first
    out: a forgotten id may repeat once, as after a crash between push and record.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._pushed: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._limit = limit

    def add(self, event_id: str, deliveries: int, age_s: float) -> None:
        """Remember that ``event_id`` was pushed (``deliveries``, at ``age_s``) but not recorded."""
        self._pushed[event_id] = (deliveries, age_s)
        self._pushed.move_to_end(event_id)
        while len(self._pushed) > self._limit:
            self._pushed.popitem(last=False)

    def get(self, event_id: str) -> tuple[int, float] | None:
        """What was pushed for ``event_id`` and not yet recorded, if anything."""
        return self._pushed.get(event_id)

    def discard(self, event_id: str) -> None:
        """``event_id`` is recorded now."""
        self._pushed.pop(event_id, None)


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
class Deps:
    """The collaborators processing needs, typed by protocol."""

    store: Store
    processed: ProcessedIds
    soketi: Deliverer
    clock: Callable[[], float]
    ephemeral_max_age_s: float = 10.0
    in_flight: InFlightIds = field(default_factory=InFlightIds)
    unrecorded: Unrecorded = field(default_factory=Unrecorded)
    history: Recorder = field(default_factory=NoHistory)
    soketi_gate: Gate = field(default_factory=OpenGate)


@dataclass(frozen=True, slots=True)
class Result:
    """What processing did with a valid event."""

    event: Event
    outcome: Outcome
    deliveries: int = 0
    age_s: float = 0.0
    detail: str = ""


async def process(
    body: bytes, deps: Deps, turn: Turn = UNORDERED, *, maybe_recorded: bool = True
) -> Result:
    """Take one message body all the way to Soketi; raise a ``FanoutError`` when it cannot.

    The caller holds the event id (``Deps.in_flight``) and finishes ``turn`` afterwards.
    """
    event = parse(body)
    try:
        if event.type in EPHEMERAL_TYPES:
            return await _process_ephemeral(event, deps, turn)
        return await _deliver_once(event, deps, turn, maybe_recorded)
    except FanoutError as error:
        error.event_type, error.event_id = event.type, event.id
        raise


async def _deliver_once(
    event: Event, deps: Deps, turn: Turn, maybe_recorded: bool = False
) -> Result:
    pushed = deps.unrecorded.get(event.id)
    if pushed is None:
        handler = route(event)
        # The duplicate check and the lookups go out together: a duplicate is rare, and its
        # wasted lookups cost less than a round trip of waiting on every message.
        checking = deps.processed.seen((event.id,))
        try:
            found = await handler.load(event, deps.store)
        except BaseException:
            if isinstance(checking, Coroutine):
                checking.close()
            raise
        if await checking:
            return Result(event, "duplicate")
        deliveries = handler.decide(event, found)
        if deliveries:
            deliveries = await deps.history.stamp(event, deliveries, turn, maybe_recorded)
            # Recorded first: while Soketi is down, polling clients already see it.
            await deps.soketi_gate.wait()
            await turn.wait(SEND)
            await deps.soketi.deliver(deliveries, event.socket_id, partial(turn.passed, SEND))
        pushed = (len(deliveries), deps.clock() - event.timestamp_ms / 1000)
    try:
        await deps.processed.record((event.id,))
    except BaseException:
        # Soketi has it: whatever retries this event must only record it, not push again.
        deps.unrecorded.add(event.id, *pushed)
        raise
    deps.unrecorded.discard(event.id)
    return Result(event, "delivered", *pushed)


async def _process_ephemeral(event: Event, deps: Deps, turn: Turn) -> Result:
    """Typing events: no retry, no history; stale or undeliverable ones are dropped."""
    age_s = deps.clock() - event.timestamp_ms / 1000
    if age_s > deps.ephemeral_max_age_s:
        return Result(event, "dropped", age_s=age_s, detail="stale")
    if not deps.soketi_gate.is_open():
        return Result(event, "dropped", age_s=age_s, detail="soketi_unavailable")
    try:
        return await _deliver_once(event, deps, turn)
    except TransientError as error:
        return Result(event, "dropped", age_s=age_s, detail=error.reason)
