"""Recording: a cursor on every non-ephemeral delivery, numbered in lane order.

Between ``decide`` and ``deliver`` the pipeline passes an event's deliveries to
``History.stamp``. Each (event, channel) gets the next number of that channel, handed out
in-process in lane order (a conversation's cursors follow publish order), is stored in
``fanout_history`` under ``{eventId}:{channel}``, the event's first entry under the event id
(``worker.mongo.history``: one ``bulk_write`` for all the messages processed at that moment,
which also carries their pushed marks; the unique
``(channel, seq)`` index refuses a number another worker took, and the entry is
renumbered), and goes to Soketi with its cursor in the payload. A retried event finds its
entries by id and reuses their cursors: it is never numbered twice. Typing events are not
recorded.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

import structlog

from handlers.model import Delivery
from schemas import EPHEMERAL_TYPES, Event
from worker.errors import FanoutError, StoreUnavailable
from worker.flow.lanes import NUMBER, UNORDERED, Turn
from worker.history.cursor import record_ids, stamped
from worker.mongo.gateway import Document
from worker.mongo.history import MARKER_CHANNEL, HistoryLog, key_of

log = structlog.get_logger("fanout")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class History:
    """Numbers and records the deliveries of non-ephemeral events (the pipeline's recorder).

    Numbers are handed out in-process, from the last number this worker knows per channel
    (its floor in MongoDB the first time a channel is seen), so numbering costs no round
    trip. The insert is the arbiter: when another worker took a number first, the unique
    ``(channel, seq)`` index refuses the entry, and it is numbered again after the channel's
    newest entry. Lookups, inserts and floor updates of concurrently processed messages are
    merged by ``HistoryLog``: one ``$in`` lookup, one ``insert_many``, one bulk ``$max``.
    """

    def __init__(
        self,
        log: HistoryLog,
        *,
        clock: Callable[[], datetime] = _utcnow,
        known_channels: int = 100_000,
    ) -> None:
        self._log = log
        self._clock = clock
        # The last number handed out (or known taken) per channel, least recently used first.
        self._last: OrderedDict[str, int] = OrderedDict()
        self._known_channels = known_channels
        self._raised: dict[str, int] = {}
        self._raising: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        """Create the numbering and retention indexes (idempotent)."""
        await self._log.ensure_indexes()

    async def stamp(
        self,
        event: Event,
        deliveries: Sequence[Delivery],
        turn: Turn = UNORDERED,
        maybe_recorded: bool = True,
    ) -> list[Delivery]:
        """``deliveries`` with their cursors, recorded once per event and channel.

        Numbers are taken in ``turn`` order (its ``NUMBER`` step); the write that follows
        runs concurrently with other messages'.
        """
        if event.type in EPHEMERAL_TYPES or not deliveries:
            await turn.wait(NUMBER)
            turn.passed(NUMBER)
            return list(deliveries)
        ids = record_ids(event.id, [d.channel for d in deliveries])
        seqs, lead_taken = await self._log.seqs(event.id, ids) if maybe_recorded else ({}, False)
        fresh = [(key, d) for key, d in zip(ids, deliveries, strict=True) if key not in seqs]
        await turn.wait(NUMBER)
        numbers = await self._take([d.channel for _, d in fresh]) if fresh else []
        turn.passed(NUMBER)
        done = await self._record(event.id, fresh, numbers, lead_taken) if fresh else {}
        return [
            done[key] if key in done else stamped(d, seqs[key])
            for key, d in zip(ids, deliveries, strict=True)
        ]

    async def stamp_batch(
        self, batch: Sequence[tuple[Event, Sequence[Delivery], Turn]]
    ) -> list[list[Delivery]]:
        """``stamp`` for the first deliveries of several events at once (no earlier attempt
        can have recorded them): the floors of channels met for the first time in one query,
        numbers taken in each ``Turn``'s order, every entry in one write.

        An event whose entries another worker's numbers refused is renumbered on its own, as
        ``stamp`` does.
        """
        known = self._last  # (up to ``known_channels`` of them: never copied per batch)
        cold = {
            d.channel for _, deliveries, _ in batch for d in deliveries if d.channel not in known
        }
        if cold:
            floors = await self._log.floors(cold)
            for channel in cold:
                self._last.setdefault(channel, floors.get(channel, 0))
        plans: list[tuple[str, Sequence[Delivery], list[str], list[int]]] = []
        for event, deliveries, turn in batch:
            await turn.wait(NUMBER)
            if event.type in EPHEMERAL_TYPES or not deliveries:
                turn.passed(NUMBER)
                plans.append((event.id, deliveries, [], []))
                continue
            ids = record_ids(event.id, [d.channel for d in deliveries])
            numbers = await self._take([d.channel for d in deliveries])
            turn.passed(NUMBER)
            plans.append((event.id, deliveries, ids, numbers))
        staged = [
            self._stage(event_id, list(zip(ids, deliveries, strict=True)), numbers, False)
            if ids
            else ({}, {})
            for event_id, deliveries, ids, numbers in plans
        ]
        written = [doc for _, docs in staged for doc in docs.values()]
        refused_ids = await self._log.insert(written) if written else set()
        if written:
            self._raise_floors({doc["channel"]: doc["seq"] for doc in written})
        stamped_batch: list[list[Delivery]] = []
        for (event_id, deliveries, ids, numbers), (done, docs) in zip(plans, staged, strict=True):
            if any(doc["_id"] in refused_ids for doc in docs.values()):
                fresh = list(zip(ids, deliveries, strict=True))
                first = (done, docs, refused_ids)
                done = await self._record(event_id, fresh, numbers, False, first)
            stamped_batch.append([done[key] for key in ids] if ids else list(deliveries))
        return stamped_batch

    async def _take(self, channels: Sequence[str]) -> list[int]:
        """The next number of each of ``channels`` (in order; a channel may repeat)."""
        while cold := {c for c in channels if c not in self._last}:
            floors = await self._log.floors(cold)
            for channel in cold:
                self._last.setdefault(channel, floors.get(channel, 0))
        numbers = []
        for channel in channels:
            number = self._last[channel] + 1
            self._last[channel] = number
            self._last.move_to_end(channel)
            numbers.append(number)
        while len(self._last) > self._known_channels:
            self._last.popitem(last=False)
        return numbers

    def _stage(
        self,
        event_id: str,
        fresh: Sequence[tuple[str, Delivery]],
        numbers: Sequence[int],
        lead_taken: bool,
    ) -> tuple[dict[str, Delivery], dict[str, Document]]:
        """The stamped deliveries and the documents that record them, by key.

        The first entry written for an event takes the event id as its ``_id`` (the lead:
        the duplicate check's mark goes there); the others, and all once the lead is taken,
        are stored under their key."""
        at = self._clock()
        staged = {key: stamped(d, number) for (key, d), number in zip(fresh, numbers, strict=True)}
        docs: dict[str, Document] = {}
        for (key, d), number in zip(staged.items(), numbers, strict=True):
            first = not lead_taken and not docs
            docs[key] = {
                "_id": event_id if first else key,
                "key": key,
                "channel": d.channel,
                "event": d.event,
                "payload": d.payload,
                "eventId": event_id,
                "cursor": d.payload["cursor"],
                "seq": number,
                "at": at,
            }
        return staged, docs

    async def _record(
        self,
        event_id: str,
        fresh: list[tuple[str, Delivery]],
        numbers: list[int],
        lead_taken: bool,
        written: tuple[dict[str, Delivery], dict[str, Document], set[str]] | None = None,
    ) -> dict[str, Delivery]:
        """Write ``fresh`` under ``numbers``; the deliveries with the cursors they ended up with.

        ``written``: the first write was made already (``stamp_batch``): what it staged and
        the ``_id``s the store refused."""
        done: dict[str, Delivery] = {}
        for _ in range(NUMBERING_ATTEMPTS):
            if written is None:
                staged, docs = self._stage(event_id, fresh, numbers, lead_taken)
                refused_ids = await self._log.insert(list(docs.values()))
                self._raise_floors({doc["channel"]: doc["seq"] for doc in docs.values()})
            else:
                (staged, docs, refused_ids), written = written, None
            refused = [key for key, doc in docs.items() if doc["_id"] in refused_ids]
            done.update({key: d for key, d in staged.items() if key not in refused})
            if not refused:
                return done
            # Another attempt or worker recorded the same event first: use its numbers.
            existing = await self._log.find([event_id, *refused])
            lead_taken = lead_taken or event_id in existing
            entries = {
                key_of(doc): doc for doc in existing.values() if doc["channel"] != MARKER_CHANNEL
            }
            lead = existing.get(event_id)
            if lead is not None and event_id in refused_ids and lead["channel"] != MARKER_CHANNEL:
                # A copy of this event decided other channels first and its lead holds an
                # entry this write just stored a second time under its key: drop that one.
                twin = key_of(lead)
                if twin in docs and docs[twin]["_id"] == twin and twin not in refused:
                    await self._log.delete([twin])
                    done.pop(twin, None)
                    refused.append(twin)
            originals = dict(fresh)
            done.update(
                {
                    key: stamped(originals[key], int(entries[key]["seq"]))
                    for key in refused
                    if key in entries
                }
            )
            # The rest lost their number (or the lead) to another worker: renumber after the
            # newest entry.
            fresh = [(key, d) for key, d in fresh if key in refused and key not in entries]
            if not fresh:
                return done
            for channel in sorted({d.channel for _, d in fresh}):
                newest = await self._log.newest(channel)
                self._last[channel] = max(self._last.get(channel, 0), newest)
            numbers = await self._take([d.channel for _, d in fresh])
        raise StoreUnavailable("history numbers kept colliding with another worker's; will retry")

    def _raise_floors(self, highest: Mapping[str, int]) -> None:
        """Raise the channels' floors in the background, at most once per ``FLOOR_INTERVAL_S``.

        A floor only matters once a channel's entries have all expired, or to a worker that
        meets the channel for the first time; one lost with a crash is repaired by the next
        refused insert (the entries themselves are the truth).
        """
        for channel, seq in highest.items():
            self._raised[channel] = max(seq, self._raised.get(channel, 0))
        if self._raising is None or self._raising.done():
            self._raising = asyncio.create_task(self._raise_pending())

    async def _raise_pending(self) -> None:
        while self._raised:
            await self._write_floors()
            await asyncio.sleep(FLOOR_INTERVAL_S)  # a rate limit, not a synchronisation

    async def _write_floors(self) -> None:
        batch, self._raised = self._raised, {}
        try:
            await self._log.raise_floors(batch)
        except FanoutError as error:
            log.warning("fanout.history_floor_failed", channels=len(batch), error=str(error))

    async def close(self) -> None:
        """Stop the background floor writer and write what it still holds (best effort)."""
        if self._raising is not None:
            self._raising.cancel()
            await asyncio.gather(self._raising, return_exceptions=True)
        if self._raised:
            await self._write_floors()


#: How often one event's entries are renumbered after losing numbers to other workers. With
#: sharded mode spreading lanes over workers, several may number one busy personal channel
#: at once; each lost race costs one round trip, and giving up sends the message through a
#: retry tier (late, out of order), so the bound is generous.
NUMBERING_ATTEMPTS: Final = 20
#: The least time between two background writes of channel floors.
FLOOR_INTERVAL_S: Final = 1.0
