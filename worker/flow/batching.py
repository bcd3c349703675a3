"""Gathering and running batches: the consumer's side of ``worker.flow.batch``.

First deliveries join the batch that is gathering (``Batches.add``). It starts on the next
loop turn, once ``batch_max`` messages are in, or, while ``batches_in_flight`` batches run,
when one of them is done (or steps aside to wait for Soketi): idle, a message waits one loop
turn; busy, batches grow by themselves. A running batch is processed by
``worker.flow.batch.process_batch``; what it settled is acked here, runs of it with one
``multiple`` ack (``worker.flow.acks``), and what left it goes to the consumer's
per-message path (``Host.alone``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.flow.acks import OpenTags
from worker.flow.batch import Item, process_batch
from worker.flow.circuit import Circuits
from worker.flow.ids import InFlightIds
from worker.flow.observe import observe
from worker.flow.pipeline import Pipeline, Result
from worker.flow.settle import ack_through, give_back, settled_of
from worker.metrics import Metrics

log = structlog.get_logger("fanout")


@dataclass(slots=True)
class Arrived:
    """A message waiting in the batch that is gathering."""

    message: AbstractIncomingMessage
    item: Item
    event_id: str
    started: float
    #: Its per-message work, once it left the batch.
    fallback: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Batch:
    """The messages of one batch, as gathered; ``done`` once the batch has settled them."""

    arrived: list[Arrived] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Held(contextlib.AbstractAsyncContextManager[None]):
    """An id a batch took on arrival (``InFlightIds.try_hold``), released on leaving."""

    def __init__(self, ids: InFlightIds, event_id: str) -> None:
        self._ids = ids
        self._event_id = event_id

    async def __aexit__(self, *_: object) -> None:
        self._ids.release(self._event_id)


class Host(Protocol):
    """What the batches need from the consumer (``worker.flow.consumer.Consumer``)."""

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in a task the consumer tracks (and cancels on ``abandon``)."""
        ...

    def alone(self, arrived: Arrived) -> Coroutine[Any, Any, None]:
        """The per-message path of a message that left its batch (its ``Item`` says how)."""
        ...

    async def settle(
        self, message: AbstractIncomingMessage, result: Result | BaseException, started: float
    ) -> None:
        """Settle, count and log one message; never raises."""
        ...

    def leave(self, message: AbstractIncomingMessage) -> None:
        """``message``'s work is over."""
        ...


class Batches:
    """The batch that is gathering and the batches running."""

    def __init__(
        self,
        host: Host,
        pipeline: Pipeline,
        circuits: Circuits,
        metrics: Metrics,
        open_tags: OpenTags,
        *,
        batch_max: int,
        batches_in_flight: int,
    ) -> None:
        self._host = host
        self._pipeline = pipeline
        self._circuits = circuits
        self._metrics = metrics
        self._open = open_tags
        self._max = batch_max
        self._in_flight = batches_in_flight
        self._gathering: _Batch | None = None
        self._running = 0

    def add(self, arrived: Arrived) -> _Batch:
        """Add ``arrived`` to the batch that is gathering; return that batch.

        The batch starts on the next loop turn, or once ``batch_max`` messages are in, or,
        while ``batches_in_flight`` batches run, when one of them is done: idle, a message
        waits one loop turn; busy, batches grow by themselves.
        """
        batch = self._gathering
        if batch is None:
            batch = self._gathering = _Batch()
            asyncio.get_running_loop().call_soon(self._start, batch)
        batch.arrived.append(arrived)
        if len(batch.arrived) >= self._max:
            self._start(batch, full=True)
        return batch

    def _start(self, batch: _Batch, *, full: bool = False) -> None:
        if self._gathering is not batch:
            return  # started already
        if not full and self._running >= self._in_flight:
            return  # it keeps gathering; the next batch to finish starts it
        self._gathering = None
        self._running += 1
        self._host.spawn(self._run(batch))

    async def _run(self, batch: _Batch) -> None:
        """Process a batch; settle what it settled, in arrival order; hand the rest on."""
        self._metrics.batch_messages.observe(len(batch.arrived))
        running = True

        def step_aside() -> None:  # waiting for Soketi, not working: the next may start
            nonlocal running
            if running:
                running = False
                self._running -= 1
                if self._gathering is not None:
                    self._start(self._gathering)

        try:
            await self._process(batch.arrived, step_aside)
        finally:
            batch.done.set()
            step_aside()

    async def _process(self, arrived: list[Arrived], waiting: Callable[[], None]) -> None:
        by_item = {id(each.item): each for each in arrived}
        handed: set[int] = set()

        def fallback(item: Item) -> None:
            handed.add(id(item))
            each = by_item[id(item)]
            each.fallback = self._host.spawn(self._host.alone(each))

        try:
            try:
                items = [each.item for each in arrived]
                await process_batch(self._pipeline, items, fallback, waiting)
            except Exception as error:  # a defect: what is left goes the per-message way
                log.error("fanout.batch_failed", error=f"{type(error).__name__}: {error}")
                for each in arrived:
                    if each.item.outcome is None and id(each.item) not in handed:
                        fallback(each.item)
        finally:
            done = [each for each in arrived if id(each.item) not in handed]
            for each in done:
                self._pipeline.in_flight.release(each.event_id)
                each.item.turn.finish()
        try:
            outcomes = [each.item.outcome for each in done]
            if any(isinstance(outcome, Result) for outcome in outcomes):
                self._circuits.mongodb.record_success()
            if any(isinstance(o, Result) and o.deliveries for o in outcomes):
                self._circuits.soketi.record_success()
            merged = await self._ack_runs(done)
            for each, outcome in zip(done, outcomes, strict=True):
                if outcome is None:  # cancelled mid-batch (shutdown): the broker requeues it
                    continue
                if id(each.message) not in merged:
                    try:
                        await self._host.settle(each.message, outcome, each.started)
                    except Exception as error:  # a defect: never leave the rest unsettled
                        log.error(
                            "fanout.settle_failed",
                            message_id=each.message.message_id,
                            error=f"{type(error).__name__}: {error}",
                        )
        finally:
            for each in done:
                self._host.leave(each.message)

    async def _ack_runs(self, done: list[Arrived]) -> set[int]:
        """Ack the runs of finished ``Result`` messages that one ``multiple`` ack each can
        cover (``worker.flow.acks``); count and log them; return their ``id``s."""
        results = {id(e.message): e for e in done if isinstance(e.item.outcome, Result)}
        runs, _ = self._open.plan([each.message for each in results.values()])
        merged: set[int] = set()
        for last, covered in runs:
            try:
                await ack_through(last)
            except Exception as error:  # as ``AckFailed``: done, counted, handed back
                log.warning(
                    "fanout.ack_failed",
                    message_id=last.message_id,
                    messages=len(covered),
                    error=f"{type(error).__name__}: {error}",
                )
                await give_back(last)
            now = time.perf_counter()
            for message in covered:
                each = results[id(message)]
                result = each.item.outcome
                assert isinstance(result, Result)
                observe(self._metrics, message, result, settled_of(result), now - each.started)
                merged.add(id(message))
        return merged
