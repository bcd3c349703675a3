"""The sharded fleet's members (collection ``fanout_workers``): who is there to own shards.

Each worker replaces its own document ``{_id: worker id, beat, seen}`` about every second
(``beat`` counts up; ``seen`` is the writer's wall clock, for people and for pruning) and
deletes it on a graceful stop. Readers judge liveness by ``beat`` changing
(``flow/shards.py``), so the hosts' clocks need not agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from worker.mongo.gateway import MongoGateway

WORKERS: Final = "fanout_workers"


@dataclass(frozen=True, slots=True)
class Member:
    """One worker's last announcement."""

    worker: str
    beat: int
    seen: datetime


class FleetStore:
    """Announcements in ``fanout_workers``."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    async def beat(self, worker: str, beat: int, now: datetime) -> None:
        """Replace ``worker``'s announcement (created on its first beat)."""
        collection = self._gateway.db[WORKERS]
        document = {"_id": worker, "beat": beat, "seen": now}

        async def query() -> None:
            await collection.replace_one({"_id": worker}, document, upsert=True)

        await self._gateway.run("fleet beat", query)

    async def members(self) -> list[Member]:
        """Every announcement, in id order."""
        docs = await self._gateway.find(WORKERS, {}, operation="fleet members")
        members = []
        for doc in docs:
            seen = doc.get("seen")
            if not isinstance(seen, datetime):
                continue
            if seen.tzinfo is None:  # BSON dates come back naive (UTC)
                seen = seen.replace(tzinfo=UTC)
            members.append(Member(str(doc["_id"]), int(doc.get("beat", 0)), seen))
        return sorted(members, key=lambda m: m.worker)

    async def leave(self, worker: str) -> None:
        """Remove ``worker``'s announcement: the others reassign its shards at once."""
        collection = self._gateway.db[WORKERS]

        async def query() -> None:
            await collection.delete_one({"_id": worker})

        await self._gateway.run("fleet leave", query)

    async def forget_before(self, cutoff: datetime) -> int:
        """Delete announcements last written before ``cutoff`` (dead workers' leftovers)."""
        return await self._gateway.delete_before(WORKERS, "seen", cutoff, operation="fleet forget")
