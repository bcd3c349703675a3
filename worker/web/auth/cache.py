"""What the backend said about a session, remembered briefly: ``SubjectCache``.

- Only a subject (the backend said "signed in") is kept, for ``ttl_s`` counted from when the
  question was *asked*, so a slow answer never lives longer than a quick one.
- A refusal is never kept, and drops whatever was kept for that key: after the backend says
  401, nothing cached says otherwise. Signing in again works at once.
- Concurrent questions about one key share one call to the backend (pusher-js asks for
  several channels at once when a page opens).
- At most ``max_entries`` keys; the least recently used goes first.

Keys are digests of the credentials (``worker.web.auth.forward``), never the credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from worker.web.auth.subject import Subject

Load = Callable[[], Awaitable[Subject]]


@dataclass(frozen=True, slots=True)
class _Entry:
    subject: Subject
    expires_at: float


class SubjectCache:
    """Subjects by credential digest, for a few seconds; one backend call per key at a time."""

    def __init__(
        self, ttl_s: float, max_entries: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._flights: dict[bytes, asyncio.Task[Subject]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, key: bytes) -> Subject | None:
        """The subject kept for ``key`` if it has not expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.subject

    async def get(self, key: bytes, load: Load) -> Subject:
        """The subject for ``key``: kept, or from the call in flight, or from ``load()``."""
        subject = self.cached(key)
        if subject is not None:
            return subject
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.create_task(self._load(key, load), name="auth-forward")
            # Kept until done; a caller that goes away does not cancel the others' answer.
            self._flights[key] = flight
            flight.add_done_callback(_retrieve)
        return await asyncio.shield(flight)

    def forget(self, key: bytes) -> None:
        """Drop what is kept for ``key``."""
        self._entries.pop(key, None)

    async def close(self) -> None:
        """Cancel the calls in flight and forget everything."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        self._entries.clear()

    async def _load(self, key: bytes, load: Load) -> Subject:
        asked_at = self._clock()
        try:
            subject = await load()
        except BaseException:
            self.forget(key)
            raise
        finally:
            self._flights.pop(key, None)
        if self._ttl_s > 0:
            self._entries[key] = _Entry(subject, asked_at + self._ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return subject


def _retrieve(task: asyncio.Task[Subject]) -> None:
    # Every waiter may have gone: read the outcome so asyncio does not report it as lost.
    if not task.cancelled():
        task.exception()
