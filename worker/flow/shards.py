"""Which worker owns which shard: the fleet's live members, and a balanced assignment.

Sharded mode's single-active-consumer queues give each shard to one worker at a time, but
RabbitMQ 3.x activates the *first registered* consumer (it ignores ``x-priority`` under
single active consumer), so on its own the first worker to start keeps every shard. Here
each worker announces itself in ``fanout_workers`` (``mongo/fleet.py``) and computes, from
the same sorted list of live workers, the same assignment; ``flow/subscription.py`` then
re-registers the shards it does not own behind their owner (``flow/handover.py``: a
hand-over that keeps the shard's order), so the broker activates the owner.

``assign`` is pure: rendezvous hashing with bounded loads, so every worker owns
``N // W`` or ``N // W + 1`` shards and a join or leave moves few shards besides the
ones that must move. ``Liveness`` is pure too: a member is alive while its beat counter
keeps changing (judged on this process's monotonic clock, so clock skew between hosts does
not matter).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from worker.errors import FanoutError
from worker.mongo.fleet import FleetStore, Member

log = structlog.get_logger("fanout")

#: Announcements not written for this long are deleted (a dead worker's leftovers), checked
#: every ``FORGET_EVERY`` beats; liveness itself never waits this long.
FORGET_AFTER = timedelta(minutes=10)
FORGET_EVERY = 60


def _score(shard: int, worker: str) -> int:
    """A stable pseudo-random score of ``worker`` for ``shard`` (the same in every process)."""
    digest = hashlib.blake2b(f"{shard}\x00{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(shards: int, workers: Sequence[str]) -> dict[int, str]:
    """Shard index -> owning worker: balanced (loads differ by at most one), deterministic.

    Pairs (shard, worker) are taken by descending score; a shard goes to the first worker
    of its pairs that still has room. The workers first in sorted order get the
    ``shards % len(workers)`` larger loads. No workers: no owners.
    """
    members = sorted(set(workers))
    if not members or shards <= 0:
        return {}
    base, extra = divmod(shards, len(members))
    room = {worker: base + (1 if i < extra else 0) for i, worker in enumerate(members)}
    pairs = sorted(
        ((_score(shard, worker), shard, worker) for shard in range(shards) for worker in members),
        reverse=True,
    )
    owners: dict[int, str] = {}
    for _, shard, worker in pairs:
        if shard not in owners and room[worker] > 0:
            owners[shard] = worker
            room[worker] -= 1
    return owners


def owned_by(owners: Mapping[int, str], worker: str) -> frozenset[int]:
    """The shards ``owners`` gives to ``worker``."""
    return frozenset(shard for shard, owner in owners.items() if owner == worker)


@dataclass
class Liveness:
    """Who is alive, from successive reads of the members' beat counters."""

    stale_s: float
    #: worker id -> (last beat seen, monotonic time it was first seen)
    _beats: dict[str, tuple[int, float]] = field(default_factory=dict)

    def observe(
        self, members: Sequence[Member], *, now_mono: float, now_wall: datetime
    ) -> list[str]:
        """Record a read of ``fanout_workers``; return the live worker ids, sorted.

        A member seen for the first time counts as alive when its wall-clock ``seen`` is
        recent (so a new worker does not wait out a dead one's stale entry); afterwards,
        while its beat changed within ``stale_s`` of this process's monotonic clock.
        """
        live = []
        current = {m.worker for m in members}
        for member in members:
            previous = self._beats.get(member.worker)
            if previous is None:
                age_s = (now_wall - member.seen).total_seconds()
                since = now_mono if age_s <= self.stale_s else now_mono - self.stale_s - 1
                self._beats[member.worker] = (member.beat, since)
            elif previous[0] != member.beat:
                self._beats[member.worker] = (member.beat, now_mono)
            if now_mono - self._beats[member.worker][1] <= self.stale_s:
                live.append(member.worker)
        for gone in set(self._beats) - current:
            del self._beats[gone]
        return sorted(live)


OnAssigned = Callable[[Mapping[int, str]], None]


class Fleet:
    """This worker's membership: beat, read the members, tell the subscription the owners."""

    def __init__(
        self,
        store: FleetStore,
        worker: str,
        shards: int,
        on_assigned: OnAssigned,
        *,
        interval_s: float = 1.0,
        stale_s: float = 3.0,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker = worker
        self._store = store
        self._shards = shards
        self._on_assigned = on_assigned
        self._interval_s = interval_s
        self._liveness = Liveness(stale_s)
        self._wall = wall
        self._mono = mono
        self._beat = 0
        self._live: list[str] | None = None

    async def tick(self) -> None:
        """One beat and one read; on a change of the live set, a new assignment.

        MongoDB out of reach: the last assignment stays (the standby consumers keep the
        broker's fail-over working meanwhile). This worker always counts itself as live.
        """
        self._beat += 1
        await self._store.beat(self.worker, self._beat, self._wall())
        if self._beat % FORGET_EVERY == 1:
            await self._store.forget_before(self._wall() - FORGET_AFTER)
        members = await self._store.members()
        live = self._liveness.observe(members, now_mono=self._mono(), now_wall=self._wall())
        if self.worker not in live:
            live = sorted([*live, self.worker])
        if live != self._live:
            self._live = live
            owners = assign(self._shards, live)
            log.info(
                "fanout.shards_assigned",
                workers=live,
                owned=sorted(owned_by(owners, self.worker)),
            )
            self._on_assigned(owners)

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled, then leave the fleet."""
        try:
            while True:
                try:
                    await self.tick()
                except FanoutError as error:
                    log.warning("fanout.fleet_unavailable", error=str(error))
                await asyncio.sleep(self._interval_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._store.leave(self.worker), 2)
