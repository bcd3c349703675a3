"""The pipeline seam: an event Soketi accepted but MongoDB failed to record is not pushed twice."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime

import orjson
import pytest

from handlers.model import Account, Product
from tests.unit.fakes import Processed, Soketi
from worker.errors import StoreUnavailable
from worker.flow.ids import Unrecorded
from worker.flow.pipeline import Pipeline


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
