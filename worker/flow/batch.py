"""Processing messages a batch at a time: one pass per stage for everything that arrived.

The consumer hands over the first deliveries that arrived together (``Consumer.handle``
gathers them for one loop turn). One coroutine then takes them through the stages of
``Pipeline.process`` with one call per stage for the whole batch: parse, one duplicate
check, the lookups (concurrent, so one query per collection), ``decide``, numbering in lane
order and one history write (``Recorder.stamp_batch``), the Soketi hand-over in lane order
(``Deliverer.enqueue``: the trigger batcher packs the calls), and one pushed mark for all.

This is the fast path, not a second set of rules. A message leaves the batch for the
per-message path (``fallback``) the moment anything about it is unusual: its lookups or
``decide`` failed, a stage failed for the whole batch (a MongoDB error), its Soketi call
failed, or Soketi accepted it but the mark did not go out (then it carries what was
pushed, and the per-message path only marks it). There the circuits, holding, retry tiers
and dead-lettering apply exactly as they do to any message. A message leaves before any
ordered step it has not passed, and hands its ``Turn`` to the fallback with it, so lane
order holds across both paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from handlers import route
from handlers.model import Delivery
from schemas import EPHEMERAL_TYPES, Event
from worker.errors import (
    FanoutError,
    InvalidMessage,
    PushedUnrecorded,
    StoreUnavailable,
    TransientError,
)
from worker.events import parse
from worker.flow.lanes import NUMBER, SEND, Turn
from worker.flow.pipeline import Pipeline, Result


@dataclass(slots=True)
class Item:
    """One message of a batch: its body and lane turn in; what became of it out.

    ``outcome`` is set when the batch settled it (a ``Result``, or an ``InvalidMessage``
    for the dead-letter queue). ``pushed`` is set when it went to the fallback after Soketi
    accepted it (``(deliveries, age_s)``, as the ``fanout-pushed`` header carries it).
    """

    body: bytes
    turn: Turn
    event: Event | None = None
    outcome: Result | InvalidMessage | None = None
    pushed: tuple[int, float] | None = None
    #: The error it left the batch with, if any: the per-message path starts from it.
    error: BaseException | None = None
    deliveries: Sequence[Delivery] = ()


#: Called with an item that leaves the batch; it must start the item's per-message path now
#: (later items of its lane may be waiting for its turn).
Fallback = Callable[[Item], None]


def _nothing() -> None:
    return None


async def process_batch(
    pipeline: Pipeline,
    items: Sequence[Item],
    fallback: Fallback,
    waiting: Callable[[], None] = _nothing,
) -> None:
    """Take first deliveries through the pipeline together; see the module docstring.

    Every item ends with an ``outcome`` or handed to ``fallback``; the caller settles the
    first kind and finishes their turns (already finished here when settled early).
    ``waiting`` is called when the batch, recorded, starts waiting for Soketi's circuit to
    close: the caller may start more batches meanwhile (they are recorded too, so polling
    clients see them during the outage).
    """
    live = _parse(pipeline, items, fallback)
    live = await _check_and_load(pipeline, live, fallback)
    if live:
        live = await _stamp(pipeline, live, fallback)
    if live:
        live = await _deliver(pipeline, live, fallback, waiting)
    if live:
        await _mark(pipeline, live, fallback)


def _parse(pipeline: Pipeline, items: Sequence[Item], fallback: Fallback) -> list[Item]:
    now = pipeline.clock()
    live: list[Item] = []
    for item in items:
        try:
            event = item.event = parse(item.body)
        except InvalidMessage as error:
            _settled(item, error)
            continue
        if pipeline.unrecorded.get(event.id) is not None:  # pushed already: only mark it
            fallback(item)
            continue
        if event.type in EPHEMERAL_TYPES:
            age_s = now - event.timestamp_ms / 1000
            if age_s > pipeline.ephemeral_max_age_s:
                _settled(item, Result(event, "dropped", age_s=age_s, detail="stale"))
                continue
            if not pipeline.soketi_gate.is_open():
                detail = "soketi_unavailable"
                _settled(item, Result(event, "dropped", age_s=age_s, detail=detail))
                continue
        live.append(item)
    return live


async def _check_and_load(pipeline: Pipeline, live: list[Item], fallback: Fallback) -> list[Item]:
    """One duplicate check for all, the lookups of all at once, then ``decide``."""
    events = [item.event for item in live if item.event is not None]
    # Started before the lookups: both round trips overlap, as in ``Pipeline._deliver_once``.
    checking = pipeline.processed.seen([event.id for event in events])
    loads = await asyncio.gather(
        *(route(event).load(event, pipeline.store) for event in events), return_exceptions=True
    )
    try:
        seen = await checking
    except Exception as error:
        return _leave(live, fallback, error)
    kept: list[Item] = []
    for item, found in zip(live, loads, strict=True):
        event = item.event
        assert event is not None
        if event.id in seen:
            _settled(item, Result(event, "duplicate"))
            continue
        if isinstance(found, BaseException):
            _fail(item, found, fallback)
            continue
        try:
            item.deliveries = route(event).decide(event, found)
        except Exception as error:
            _fail(item, error, fallback)
            continue
        kept.append(item)
    return kept


async def _stamp(pipeline: Pipeline, live: list[Item], fallback: Fallback) -> list[Item]:
    """Cursors in lane order and one history write (ephemeral events pass unrecorded)."""
    try:
        if pipeline.history is None:
            for item in live:
                await item.turn.wait(NUMBER)
                item.turn.passed(NUMBER)
            return live
        batch = [(item.event, item.deliveries, item.turn) for item in live if item.event]
        stamped = await pipeline.history.stamp_batch(batch)
    except Exception as error:
        return _leave(live, fallback, error)
    for item, deliveries in zip(live, stamped, strict=True):
        item.deliveries = deliveries
    return live


async def _deliver(
    pipeline: Pipeline, live: list[Item], fallback: Fallback, waiting: Callable[[], None]
) -> list[Item]:
    """Hand every item's deliveries over in lane order; wait for their calls together."""
    try:
        if not pipeline.soketi_gate.is_open():
            waiting()
        await pipeline.soketi_gate.wait()
    except Exception:  # shutdown while Soketi was down: the per-message path hands them back
        return _leave(live, fallback, None)
    sending: list[tuple[Item, asyncio.Future[int]]] = []
    kept: list[Item] = []
    for item in live:
        if not item.deliveries:
            await item.turn.wait(SEND)
            item.turn.passed(SEND)
            kept.append(item)
            continue
        await item.turn.wait(SEND)
        assert item.event is not None
        try:
            sent = pipeline.soketi.enqueue(item.deliveries, item.event.socket_id)
        except Exception as error:  # refused before it was in line (PayloadTooLarge)
            _fail(item, error, fallback)
            continue
        sending.append((item, sent))
        item.turn.passed(SEND)
    answers = await asyncio.gather(*(sent for _, sent in sending), return_exceptions=True)
    for (item, _), answer in zip(sending, answers, strict=True):
        if isinstance(answer, BaseException):
            _fail(item, answer, fallback)  # nothing of it reached Soketi
        else:
            kept.append(item)
    return kept


async def _mark(pipeline: Pipeline, live: list[Item], fallback: Fallback) -> None:
    """One pushed mark for every item Soketi accepted (or that had nothing to send)."""
    now = pipeline.clock()
    ages = {}
    for item in live:
        assert item.event is not None
        ages[item.event.id] = now - item.event.timestamp_ms / 1000
    try:
        await pipeline.processed.record(list(ages))
    except Exception as error:
        for item in live:
            assert item.event is not None
            deliveries, age_s = item.pushed = (len(item.deliveries), ages[item.event.id])
            # Soketi has it: every later attempt in this process only marks it, and the error
            # carries that to the retry tier's copy (``fanout-pushed``), as
            # ``Pipeline._deliver_once`` does. Not marked again at once: with MongoDB down
            # that would double the wait before a stop can hand it on.
            pipeline.unrecorded.add(item.event.id, deliveries, age_s)
            if isinstance(error, StoreUnavailable):
                text = str(error)
                item.error = PushedUnrecorded(text, deliveries=deliveries, age_s=age_s)
            fallback(item)
        return
    for item in live:
        assert item.event is not None
        result = Result(item.event, "delivered", len(item.deliveries), ages[item.event.id])
        _settled(item, result)


def _settled(item: Item, outcome: Result | InvalidMessage) -> None:
    """The batch is done with ``item``: it no longer holds up the messages behind it."""
    item.outcome = outcome
    item.turn.finish()


def _fail(item: Item, error: BaseException, fallback: Fallback) -> None:
    """``item`` met ``error``: a typing event is dropped (never retried, as in
    ``Pipeline.process``), anything else goes the per-message way with it."""
    event = item.event
    if event is not None and event.type in EPHEMERAL_TYPES and isinstance(error, TransientError):
        _settled(item, Result(event, "dropped", detail=error.reason))
        return
    item.error = error
    fallback(item)


def _leave(live: list[Item], fallback: Fallback, error: BaseException | None) -> list[Item]:
    """A stage failed for the whole batch: each item goes the per-message way, with the
    error when it is an expected one (MongoDB unavailable), afresh when it is a defect, so
    only the message that meets it again is dead-lettered for it."""
    for item in live:
        if isinstance(error, FanoutError):
            _fail(item, error, fallback)
        else:
            fallback(item)
    return []
