"""The fleet's admin stats (collection ``fanout_stats``): one report per worker, one lease.

Every ``STATS_INTERVAL_S`` each worker replaces its own report, ``{_id: "worker:{instance}",
kind: "worker", at, perMinute: [{type, n}], dlqDepth}`` (event types hold dots, so they are
values, never field names). The lease ``{_id: "lease", holder, until}`` names the one worker
that sends ``stats-update``; it is taken by compare-and-set: inserted when absent, else the
exact document read is replaced, and only when it is the caller's own or has expired, so of
two workers racing for it one wins. Reports older than the staleness window stop counting,
so a worker that died drops out of the figures by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from pymongo.errors import DuplicateKeyError

from worker.mongo.gateway import Document, MongoGateway

STATS: Final = "fanout_stats"
LEASE: Final = "lease"
WORKER: Final = "worker"


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker's figures at ``at``: events delivered in the last minute per type, and the
    DLQ depth it last sampled (``None`` before its first sample)."""

    instance: str
    at: datetime
    per_minute: Mapping[str, int]
    dlq_depth: int | None


class StatsStore:
    """Reports and the sender's lease in ``fanout_stats``."""

    def __init__(self, gateway: MongoGateway) -> None:
        self._gateway = gateway

    async def report(self, report: WorkerReport) -> None:
        """Replace this worker's report (created on its first call)."""
        document = {
            "_id": f"{WORKER}:{report.instance}",
            "kind": WORKER,
            "at": report.at,
            "perMinute": [{"type": kind, "n": n} for kind, n in sorted(report.per_minute.items())],
            "dlqDepth": report.dlq_depth,
        }
        collection = self._gateway.db[STATS]

        async def query() -> None:
            await collection.replace_one({"_id": document["_id"]}, document, upsert=True)

        await self._gateway.run("stats report", query)

    async def fresh_reports(self, since: datetime) -> list[WorkerReport]:
        """The reports written at or after ``since``, oldest first."""
        docs = await self._gateway.find(
            STATS, {"kind": WORKER, "at": {"$gte": since}}, operation="stats reports"
        )
        return sorted(map(_report, docs), key=lambda report: report.at)

    async def forget_before(self, cutoff: datetime) -> int:
        """Delete the reports last written before ``cutoff``; return how many went."""
        return await self._gateway.delete_before(STATS, "at", cutoff, operation="stats forget")

    async def hold_lease(self, holder: str, now: datetime, ttl_s: float) -> bool:
        """Take or renew the sender's lease until ``now + ttl_s``; say whether ``holder`` has it."""
        until = _to_ms(now + timedelta(seconds=ttl_s))
        lease = {"_id": LEASE, "holder": holder, "until": until}
        collection = self._gateway.db[STATS]

        async def query() -> bool:
            current = await collection.find_one({"_id": LEASE})
            if current is None:
                try:
                    await collection.insert_one(lease)
                except DuplicateKeyError:
                    return False  # another worker created it first
                return True
            expires = _aware(current.get("until"))
            if current.get("holder") != holder and expires is not None and expires > now:
                return False
            # The exact document read: a worker that renewed or took it since makes this miss.
            seen = {"_id": LEASE, "holder": current.get("holder"), "until": current.get("until")}
            return bool((await collection.replace_one(seen, lease)).modified_count)

        return await self._gateway.run("stats lease", query)


def _report(doc: Document) -> WorkerReport:
    per_minute: dict[str, int] = {}
    entries = doc.get("perMinute")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("type"), str):
            per_minute[entry["type"]] = int(entry.get("n") or 0)
    depth = doc.get("dlqDepth")
    return WorkerReport(
        instance=str(doc["_id"]).removeprefix(f"{WORKER}:"),
        at=_aware(doc.get("at")) or datetime.fromtimestamp(0, UTC),
        per_minute=per_minute,
        dlq_depth=None if depth is None else int(depth),
    )


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _to_ms(at: datetime) -> datetime:
    """``at`` truncated to milliseconds, as BSON stores it."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)
