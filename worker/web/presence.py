"""Presence: Soketi's signed webhooks and a periodic reconciliation turn personal channels
into ``presence.online`` / ``presence.offline`` events (contract sections 3 and 6).

``POST /webhooks/soketi`` is verified by ``worker.web.presence_rules`` (key, signature,
``time_ms`` window, replays), then each ``channel_occupied`` / ``channel_vacated`` of a
personal channel is applied, one account at a time (a FIFO lock per account), webhooks older
than the newest already seen for that account ignored:

- occupied: online at once; an offline still held for the account is cancelled;
- vacated: held for ``PRESENCE_GRACE_S``, then offline only if Soketi still reports the
  channel unoccupied (a signed ``GET /channels/{name}``). A page reload reconnects within the
  grace and changes nothing; with a grace of 0 the check is made at once. Asking Soketi is
  what makes a quick reconnect safe whatever order its two webhooks arrive in, on this
  worker or on another replica.

A change is stored in ``fanout_presence`` and published to the events exchange, so it flows
through the normal pipeline (``handlers.accounts``). It is published first and stored
second: its envelope id is derived from the state it replaces, so any repeat of the same
change (a lost store write, two replicas, the reconciler racing a webhook) is the same id
and the worker's duplicate suppression delivers it once. Soketi sends each webhook once and
never retries, so every ``PRESENCE_RECONCILE_S`` the occupied channels Soketi reports are
compared with the stored state and the drift is fixed both ways (offlines through the grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web

from handlers.channels import PERSONAL_PREFIXES
from worker.events import message_of
from worker.web.context import WebContext
from worker.web.presence_rules import (
    Change,
    Pending,
    Recency,
    Rejected,
    ReplayGuard,
    changes_of,
    drift,
    event_of,
    subject_of,
    to_ms,
    verify,
)

log = structlog.get_logger("fanout")

WEBHOOK_PATH = "/webhooks/soketi"


class KeyedLocks:
    """One FIFO lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold ``key``'s lock for the ``async with`` block."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class Presence:
    """Applies presence changes: store, publish, and keep ``accounts_online`` current."""

    def __init__(
        self,
        ctx: WebContext,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._store = ctx.presence
        self._clock = clock
        self._monotonic = monotonic
        self._replays = ReplayGuard()
        self._locks = KeyedLocks()
        self._recency = Recency()
        self._pending = Pending()
        self._wake = asyncio.Event()

    async def webhook(self, request: web.Request) -> web.Response:
        """``POST /webhooks/soketi``: verify, then apply each presence change in order."""
        body = await request.read()
        now_ms = int(self._clock() * 1000)
        settings = self._ctx.settings
        signature = request.headers.get("X-Pusher-Signature")
        try:
            webhook = verify(
                body,
                request.headers.get("X-Pusher-Key"),
                signature,
                app_key=settings.soketi_app_key,
                secret=settings.soketi_app_secret.get_secret_value(),
                now_ms=now_ms,
            )
            if not self._replays.first_time(signature or "", webhook.time_ms, now_ms):
                raise Rejected("stale", 401, "webhook already received")
        except Rejected as rejected:
            self._ctx.metrics.webhooks.labels(outcome=rejected.outcome).inc()
            log.warning("fanout.webhook_rejected", outcome=rejected.outcome, error=str(rejected))
            return web.json_response({"error": str(rejected)}, status=rejected.status)
        self._ctx.metrics.webhooks.labels(outcome="accepted").inc()
        changes = changes_of(webhook)
        try:
            applied = [await self.receive(change, webhook.time_ms) for change in changes]
            await self._count()
        except Exception as error:  # Soketi never retries: log; reconcile repairs
            log.warning("fanout.presence_failed", error=f"{type(error).__name__}: {error}")
            return web.json_response({"error": "presence not stored"}, status=503)
        return web.json_response({"changes": len(changes), "applied": sum(applied)})

    async def receive(self, change: Change, time_ms: int) -> bool:
        """Apply one webhook's change in its account's turn; say whether it was stored now."""
        key = change.subject.key
        async with self._locks.hold(key):
            if not self._recency.admit(key, time_ms):
                log.info("fanout.presence_out_of_order", subject_type=change.subject.type)
                return False
            if change.online:
                if self._pending.cancel(key):
                    log.info("fanout.presence_offline_cancelled", subject_type=change.subject.type)
                return await self.apply(change)
            return await self._vacated(change)

    async def _vacated(self, change: Change) -> bool:
        """Hold an offline through the grace, or check it with Soketi now (grace 0)."""
        grace_s = self._ctx.settings.presence_grace_s
        if grace_s <= 0:
            return await self._confirm_offline(change)
        self._pending.add(change, self._monotonic() + grace_s)
        self._wake.set()
        return False

    async def _confirm_offline(self, change: Change) -> bool:
        """Store ``change`` (an offline) only if Soketi reports the channel unoccupied now."""
        if await self._ctx.soketi.channel_occupied(change.subject.channel):
            return False
        return await self.apply(change)

    async def apply(self, change: Change) -> bool:
        """Publish and store ``change`` unless the stored state already says so or is newer."""
        change = Change(change.subject, change.online, to_ms(change.at))
        previous = await self._store.get(change.subject.key)
        if previous is not None and (
            previous.online == change.online or previous.since > change.at
        ):
            return False
        event = event_of(change, previous)
        await self._ctx.events.publish(message_of(event), routing_key=event.type)
        stored = await self._store.change(change.subject.key, previous, change.online, change.at)
        log.info(
            "fanout.presence_changed",
            event_type=event.type,
            subject_type=change.subject.type,
            stored=stored,
        )
        return stored

    async def settle_forever(self) -> None:
        """Apply each held offline once its grace is over; failures are logged, never fatal."""
        while True:
            for change in self._pending.pop_due(self._monotonic()):
                try:
                    async with self._locks.hold(change.subject.key):
                        stored = await self._confirm_offline(change)
                    if stored:
                        await self._count()
                except Exception as error:  # a background loop must outlive outages
                    log.warning("fanout.presence_failed", error=f"{type(error).__name__}: {error}")
            await self._until_due()

    async def _until_due(self) -> None:
        """Wait until the next held offline is due or a new one is held."""
        self._wake.clear()  # before reading the schedule, so an addition is never missed
        due_s = self._pending.next_due_s()
        if due_s is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due_s - self._monotonic())):
                await self._wake.wait()

    async def reconcile(self) -> int:
        """Compare the store with Soketi's occupied personal channels; apply the drift."""
        at = to_ms(datetime.fromtimestamp(self._clock(), UTC))
        occupied: set[str] = set()
        for prefix in PERSONAL_PREFIXES:
            occupied |= await self._ctx.soketi.occupied_channels(prefix)
        keys = {s.key for s in filter(None, map(subject_of, occupied))}
        stored = {state.key: state for state in await self._store.online()}
        stored.update(await self._store.many(keys - stored.keys()))
        applied = 0
        for change in drift(occupied, stored, at=at):
            async with self._locks.hold(change.subject.key):
                # A lost vacate goes through the grace too: it may be a reload in progress.
                applied += await (self.apply(change) if change.online else self._vacated(change))
        await self._count()
        return applied

    async def reconcile_forever(self) -> None:
        """Reconcile now and every ``presence_reconcile_s``; failures are logged, never fatal."""
        while True:
            try:
                fixed = await self.reconcile()
            except Exception as error:  # a background loop must outlive outages
                log.warning(
                    "fanout.presence_reconcile_failed", error=f"{type(error).__name__}: {error}"
                )
            else:
                if fixed:
                    log.info("fanout.presence_reconciled", fixed=fixed)
            await asyncio.sleep(self._ctx.settings.presence_reconcile_s)

    async def _count(self) -> None:
        self._ctx.metrics.accounts_online.set(await self._store.count_online())
