"""In-memory stand-ins for the pipeline's collaborators, for seam tests of pure logic."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

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
