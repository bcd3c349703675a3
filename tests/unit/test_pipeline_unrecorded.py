"""The pipeline seam: an event Soketi accepted but MongoDB failed to record is not pushed twice."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

import worker.broker.messages as broker
from handlers.model import Account, Product
from tests.unit.fakes import Processed, Soketi, handled
from tests.unit.test_consumer_seam import Exchange, Message
from worker.errors import Interrupted, PushedUnrecorded, StoreUnavailable
from worker.flow.circuit import Circuit, Circuits
from worker.flow.consumer import Consumer
from worker.flow.ids import Unrecorded
from worker.flow.pipeline import Pipeline
from worker.flow.settle import SettlePaths, settle
from worker.metrics import Metrics


class Store:
    """Every user exists and is called Asha."""

    async def users(self, ids: Collection[str]) -> Mapping[str, Account]:
        return {i: Account(i, "Asha") for i in ids}

    async def shops(self, ids: Collection[str]) -> Mapping[str, Account]:
        return {}

    async def products(self, ids: Collection[str]) -> Mapping[str, Product]:
        return {}


BODY = orjson.dumps(
    {
        "id": "evt1",
        "type": "user.registered",
        "occurredAt": datetime.now(UTC).isoformat(),
        "data": {"userId": "u1"},
    }
)


async def test_record_failure_after_push_records_on_retry_without_pushing_again() -> None:
    """A retry after a failed record only records the id: Soketi sees the event once."""
    processed, soketi = Processed(), Soketi()
    pipeline = Pipeline(store=Store(), processed=processed, soketi=soketi, clock=lambda: 0.0)
    processed.down = True
    with pytest.raises(StoreUnavailable):
        await pipeline.process(BODY)
    processed.down = False
    result = await pipeline.process(BODY)
    assert (result.outcome, result.deliveries, len(soketi.pushed)) == ("delivered", 1, 1)
    assert processed.ids == {"evt1"}
    assert pipeline.unrecorded.get("evt1") is None
    assert (await pipeline.process(BODY)).outcome == "duplicate"


def test_unrecorded_forgets_the_oldest_beyond_its_limit() -> None:
    """The memory of pushed-but-unrecorded ids is bounded, oldest out first."""
    unrecorded = Unrecorded(limit=2)
    for event_id in ("a", "b", "c"):
        unrecorded.add(event_id, 1, 0.0)
    assert [unrecorded.get(i) for i in ("a", "b", "c")] == [None, (1, 0.0), (1, 0.0)]


# --- the pushed fact travels with the message (``fanout-pushed``), across processes ---


class Tier(Exchange):
    """A retry tier that remembers what it was given."""

    name = "q.retry.2s"


def _consumer(processed: Processed, soketi: Soketi, retries: tuple[Exchange, ...]) -> Consumer:
    """A consumer as one worker process builds it: its own pipeline, its own memory."""

    async def healthy() -> None:
        return None

    return Consumer(
        pipeline=Pipeline(store=Store(), processed=processed, soketi=soketi, clock=lambda: 0.0),
        paths=SettlePaths(dead=Exchange(), retries=retries),  # type: ignore[arg-type]
        metrics=Metrics.create(),
        circuits=Circuits(Circuit("soketi", healthy), Circuit("mongodb", healthy)),
    )


def _incoming(copy: Any) -> Message:
    """What a worker receives for a copy the fake exchange was given."""
    return Message(copy.body, message_id=copy.message_id, headers=dict(copy.headers))


async def test_a_failed_record_raises_pushed_unrecorded_with_what_was_pushed() -> None:
    """The error says Soketi has it, so settle can say so on the retry copy."""
    processed, soketi = Processed(), Soketi()
    pipeline = Pipeline(store=Store(), processed=processed, soketi=soketi, clock=lambda: 0.0)
    processed.down = True
    with pytest.raises(PushedUnrecorded) as raised:
        await pipeline.process(BODY)
    assert isinstance(raised.value, StoreUnavailable)  # same circuit, same retry path
    assert raised.value.pushed is not None and raised.value.pushed[0] == 1
    assert raised.value.reason == "store_unavailable"


async def test_a_message_marked_pushed_is_only_recorded_by_a_fresh_process() -> None:
    """``pushed`` (the header's fact) makes a pipeline without memory record, not push."""
    processed, soketi = Processed(), Soketi()
    pipeline = Pipeline(store=Store(), processed=processed, soketi=soketi, clock=lambda: 0.0)
    result = await pipeline.process(BODY, pushed=(2, 1.5))
    assert (result.outcome, result.deliveries, result.age_s) == ("delivered", 2, 1.5)
    assert soketi.pushed == [] and processed.ids == {"evt1"}


async def test_the_retry_copy_carries_fanout_pushed_and_a_restarted_worker_does_not_push() -> None:
    """Record fails after the push: the retry-tier copy says ``fanout-pushed``; a new process
    (fresh memory) receiving it only records the id. Soketi saw the event once."""
    processed, soketi, tier = Processed(), Soketi(), Tier()
    processed.down = True
    first = Message(BODY, message_id="evt1", routing_key="user.registered")
    await handled(_consumer(processed, soketi, (tier,)), first)
    assert first.settled == ["ack"] and len(soketi.pushed) == 1
    [(copy, _)] = tier.published
    assert copy.headers[broker.PUSHED] == 1
    assert isinstance(copy.headers[broker.PUSHED_AGE_MS], int)
    assert copy.headers[broker.ATTEMPTS] == 1

    processed.down = False
    again = _incoming(copy)
    restarted = _consumer(processed, soketi, (tier,))
    await handled(restarted, again)
    assert again.settled == ["ack"] and len(soketi.pushed) == 1
    assert processed.ids == {"evt1"}


async def test_a_pushed_copy_failing_to_record_again_keeps_the_header() -> None:
    """Still no MongoDB on the second attempt: the next copy says ``fanout-pushed`` again."""
    processed, soketi, tiers = Processed(), Soketi(), (Tier(), Tier())
    processed.down = True
    message = Message(BODY, message_id="evt1", headers=broker.pushed_headers((3, 0.25)))
    await handled(_consumer(processed, soketi, tiers), message)
    [(copy, _)] = tiers[0].published
    assert (copy.headers[broker.PUSHED], copy.headers[broker.PUSHED_AGE_MS]) == (3, 250)
    assert soketi.pushed == []


async def test_a_dead_lettered_pushed_message_keeps_the_header() -> None:
    """Retries exhausted: the DLQ copy keeps ``fanout-pushed``; a replay only records."""
    processed, soketi = Processed(), Soketi()
    processed.down = True
    consumer = _consumer(processed, soketi, ())
    await handled(consumer, Message(BODY, message_id="evt1"))
    dead = consumer.paths.dead
    [(copy, _)] = dead.published  # type: ignore[attr-defined]
    assert copy.headers[broker.PUSHED] == 1
    assert copy.headers["fanout-reason"] == "retries_exhausted"
    assert {broker.PUSHED, broker.PUSHED_AGE_MS} == broker.KEPT_ON_REPLAY


async def test_an_interrupted_pushed_message_goes_to_a_tier_not_back_bare() -> None:
    """Held for an open circuit after the push, then the worker stops: a plain requeue would
    lose the pushed fact, so settle republishes it with ``fanout-pushed`` (attempts unchanged)."""
    tier = Tier()
    interrupted = Interrupted("worker stopping while a downstream was unavailable")
    interrupted.pushed = (1, 0.5)
    message = Message(BODY, message_id="evt1")
    paths = SettlePaths(dead=Exchange(), retries=(tier,))  # type: ignore[arg-type]
    settled = await settle(message, interrupted, paths)  # type: ignore[arg-type]
    assert settled.outcome == "retried" and message.settled == ["ack"]
    [(copy, _)] = tier.published
    assert (copy.headers[broker.PUSHED], copy.headers[broker.ATTEMPTS]) == (1, 0)


async def test_an_interrupted_message_not_pushed_is_requeued_as_before() -> None:
    """Without the pushed fact, a stop still hands the message back untouched."""
    message = Message(BODY, message_id="evt1")
    paths = SettlePaths(dead=Exchange(), retries=(Tier(),))  # type: ignore[arg-type]
    settled = await settle(message, Interrupted("stopping"), paths)  # type: ignore[arg-type]
    assert (settled.outcome, message.settled) == ("requeued", ["nack"])


def test_pushed_of_ignores_malformed_headers() -> None:
    """Only a non-negative integer count counts; a bad age reads as 0."""
    for headers in ({}, {broker.PUSHED: "1"}, {broker.PUSHED: -1}, {broker.PUSHED: True}):
        assert broker.pushed_of(Message(BODY, headers=headers)) is None  # type: ignore[arg-type]
    bad_age = Message(BODY, headers={broker.PUSHED: 2, broker.PUSHED_AGE_MS: "x"})
    assert broker.pushed_of(bad_age) == (2, 0.0)  # type: ignore[arg-type]
