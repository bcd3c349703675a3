"""In-memory stand-ins for the pipeline's collaborators, for seam tests of pure logic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from typing import Any

from handlers.model import Delivery
from worker.errors import StoreUnavailable


class Processed:
    """A processed-id log in memory; its writes fail while ``down`` is set."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.down = False

    async def seen(self, ids: Collection[str]) -> set[str]:
        return self.ids & set(ids)

    async def record(self, ids: Collection[str]) -> None:
        if self.down:
            raise StoreUnavailable("MongoDB dedup record failed: AutoReconnect")
        self.ids |= set(ids)


class Soketi:
    """Records what it was asked to trigger, in order; in line as soon as it is asked."""

    def __init__(self) -> None:
        self.pushed: list[Delivery] = []

    async def deliver(
        self,
        deliveries: Sequence[Delivery],
        socket_id: str | None = None,
        queued: Callable[[], None] | None = None,
    ) -> int:
        self.pushed.extend(deliveries)
        if queued is not None:
            queued()
        return 1

    def enqueue(
        self, deliveries: Sequence[Delivery], socket_id: str | None = None
    ) -> asyncio.Future[int]:
        self.pushed.extend(deliveries)
        future = asyncio.get_running_loop().create_future()
        future.set_result(1)
        return future


async def handled(consumer: Any, *messages: Any) -> None:
    """Hand ``messages`` to the consumer together and wait until all are settled (a batched
    message's ``handle`` returns once it is in the gathering batch)."""
    await asyncio.gather(*(consumer.handle(m) for m in messages))
    assert await consumer.drained(5), "messages still in flight after 5 s"
