"""What this process remembers about envelope ids: those in flight, those pushed but unrecorded.

Both are per-process memory with the pipeline as their only owner; nothing here touches
a broker or a database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator


class InFlightIds:
    """Serialises processing of one envelope id inside this process.

    Two copies of an id (a redelivery racing the original, a backend publishing twice) may
    sit in the same prefetch window; without this both could pass the duplicate check before
    either is recorded. The consumer holds a message's id from arrival until it is processed
    (a batch takes it with ``try_hold`` on arrival); a copy that arrives while its id is held
    takes no lane turn, so nobody waits on a copy that waits.
    """

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Event] = {}

    def __contains__(self, event_id: str) -> bool:
        """Whether some task processes ``event_id`` now."""
        return event_id in self._running

    def try_hold(self, event_id: str) -> bool:
        """Hold ``event_id`` now if nobody does (``release`` it when done); False if taken."""
        if event_id in self._running:
            return False
        self._running[event_id] = asyncio.Event()
        return True

    def release(self, event_id: str) -> None:
        """Let go of an id taken with ``try_hold``; the next copy waiting for it goes on."""
        done = self._running.pop(event_id, None)
        if done is not None:
            done.set()

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
