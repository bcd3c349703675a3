"""Reference data that changes rarely, remembered for a while: a TTL cache before a Coalescer.

Names and images of users, shops and products change seldom and are read for almost every
event. ``CachedLookup`` answers the ids it saw found less than ``ttl_s`` ago from memory; only
the others join the next bulk call of its ``Coalescer``, and what that call finds is kept.
What it does not find is not kept: a missing document is rare (an account deleted, or an
event that overtook the backend's own write), and remembering it would hide the document
for a whole TTL once it is there. A failed call (MongoDB unreachable) keeps nothing.
So a name may be ``ttl_s`` old (plus one query's duration); ``ttl_s=0`` turns the cache off.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Generator, Hashable, Mapping
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

from worker.mongo.coalesce import Answer, Bulk, Coalescer

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING: Any = object()


class CachedLookup(Generic[K, V]):
    """Values by key: recent ones from a bounded TTL cache, the rest through a ``Coalescer``."""

    def __init__(
        self,
        bulk: Bulk[K, V],
        *,
        ttl_s: float,
        max_size: int,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Keep found values ``ttl_s`` seconds (0: keep none), at most ``max_size`` of them
        (the least recently used go first); ``clock`` defaults to ``time.monotonic``."""
        self._bulk = bulk
        self._cache: TTLCache[K, V] | None = (
            TTLCache(maxsize=max_size, ttl=ttl_s, timer=clock or time.monotonic)
            if ttl_s > 0
            else None
        )
        self._coalescer: Coalescer[K, V] = Coalescer(bulk if self._cache is None else self._fetch)

    def ask(self, keys: Collection[K]) -> Awaitable[dict[K, V]]:
        """Ask for ``keys`` now (the misses join the next bulk call at once); await the values
        found, absent keys left out."""
        cache = self._cache
        if cache is None:
            return self._coalescer.ask(keys)
        hits: dict[K, V] = {}
        misses: list[K] = []
        for key in keys:
            value = cache.get(key, _MISSING)
            if value is _MISSING:
                misses.append(key)
            else:
                hits[key] = value
        if not misses:
            return _Found(hits, None)
        return _Found(hits, self._coalescer.ask(misses))

    async def _fetch(self, keys: list[K]) -> Mapping[K, V]:
        found = await self._bulk(keys)  # a failure raises: nothing is kept
        assert self._cache is not None  # only used with a cache
        self._cache.update(found)
        return found


class _Found(Generic[K, V]):
    """Cache hits, and the ``Answer`` for the misses (if any): awaited, all values found."""

    __slots__ = ("_hits", "_rest")

    def __init__(self, hits: dict[K, V], rest: Answer[K, V] | None) -> None:
        self._hits = hits
        self._rest = rest

    def __await__(self) -> Generator[Any, None, dict[K, V]]:
        if self._rest is None:
            return self._hits
        found = yield from self._rest.__await__()
        found.update(self._hits)
        return found
