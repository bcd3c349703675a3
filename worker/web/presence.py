"""Presence: Soketi's signed webhooks and a periodic reconciliation turn personal channels
into ``presence.online`` / ``presence.offline`` events (contract sections 3 and 6).

``POST /webhooks/soketi`` checks ``X-Pusher-Key`` and ``X-Pusher-Signature`` (hex
HMAC-SHA256 of the raw body with the app secret) and ``time_ms`` (older than 5 minutes, more
than one minute ahead, or a body already seen: refused like a forged one), then applies
``channel_occupied`` / ``channel_vacated`` of ``private-user-{id}`` / ``private-seller-{id}``.

A change is stored in ``fanout_presence`` and published to the events exchange, so it flows
through the normal pipeline to ``private-admin``. It is published first and stored second:
its envelope id is derived from the state it replaces, so any repeat of the same change (a
lost store write, two replicas, the reconciler racing a webhook) is the same id and the
worker's duplicate suppression delivers it once. Soketi sends each webhook once and never
retries, so every ``PRESENCE_RECONCILE_S`` the occupied channels Soketi reports are compared
with the stored state and the drift is fixed both ways.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import orjson
import structlog
from aiohttp import web

from handlers.channels import PERSONAL_PREFIXES, parse_channel
from schemas import Event
from worker.events import message_of, parse
from worker.mongo.presence import PresenceState
from worker.web.context import WebContext

log = structlog.get_logger("fanout")

WEBHOOK_PATH = "/webhooks/soketi"
MAX_AGE_MS = 5 * 60 * 1000
MAX_AHEAD_MS = 60 * 1000
OCCUPIED = "channel_occupied"
VACATED = "channel_vacated"

AccountType = Literal["user", "seller"]
WebhookOutcome = Literal["accepted", "forged", "stale", "invalid"]


@dataclass(frozen=True, slots=True)
class PersonalAccount:
    """An account with a personal channel."""

    type: AccountType
    id: str

    @property
    def key(self) -> str:
        """The ``fanout_presence`` document id, ``user:{id}`` or ``seller:{id}``."""
        return f"{self.type}:{self.id}"


def subject_of(channel: str) -> PersonalAccount | None:
    """The account whose personal channel ``channel`` is, by exact name; else ``None``."""
    ref = parse_channel(channel)
    if ref is None or ref.kind not in ("user", "seller"):
        return None
    kind: AccountType = "user" if ref.kind == "user" else "seller"
    return PersonalAccount(kind, ref.id)


def subject_of_key(key: str) -> PersonalAccount | None:
    """The inverse of ``PersonalAccount.key``; ``None`` for anything else."""
    kind, _, account_id = key.partition(":")
    if kind not in ("user", "seller"):
        return None
    return subject_of(f"private-{kind}-{account_id}")


@dataclass(frozen=True, slots=True)
class Change:
    """An account going online or offline at ``at``."""

    subject: PersonalAccount
    online: bool
    at: datetime


@dataclass(frozen=True, slots=True)
class Webhook:
    """A verified webhook: when Soketi sent it, and its ``(name, channel)`` events."""

    time_ms: int
    events: tuple[tuple[str, str], ...]


class Rejected(Exception):
    """A webhook refused with ``status``; ``outcome`` is its metric label."""

    def __init__(self, outcome: WebhookOutcome, status: int, message: str) -> None:
        super().__init__(message)
        self.outcome: WebhookOutcome = outcome
        self.status = status


def signature_of(secret: str, body: bytes) -> str:
    """Soketi's ``X-Pusher-Signature``: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(
    body: bytes, key: str | None, signature: str | None, *, app_key: str, secret: str, now_ms: int
) -> Webhook:
    """Authenticate and parse one webhook, or raise ``Rejected`` saying why."""
    expected = signature_of(secret, body).encode()
    given_key = (key or "").encode("utf-8", "surrogateescape")
    given_signature = (signature or "").encode("utf-8", "surrogateescape")
    # Both compared in full, in constant time, so neither reveals which one was wrong.
    key_ok = hmac.compare_digest(given_key, app_key.encode())
    if not (hmac.compare_digest(given_signature, expected) and key_ok):
        raise Rejected("forged", 401, "bad key or signature")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Rejected("invalid", 400, "body is not JSON") from None
    webhook = _shape(parsed)
    if webhook.time_ms < now_ms - MAX_AGE_MS or webhook.time_ms > now_ms + MAX_AHEAD_MS:
        raise Rejected("stale", 401, "time_ms outside the accepted window")
    return webhook


def _shape(parsed: object) -> Webhook:
    if not isinstance(parsed, dict):
        raise Rejected("invalid", 400, "body is not a JSON object")
    time_ms, events = parsed.get("time_ms"), parsed.get("events")
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not isinstance(events, list):
        raise Rejected("invalid", 400, "needs integer time_ms and an events list")
    pairs = []
    for event in events:
        if not isinstance(event, dict):
            raise Rejected("invalid", 400, "each event must be an object")
        name, channel = event.get("name"), event.get("channel")
        if isinstance(name, str) and isinstance(channel, str):
            pairs.append((name, channel))
    return Webhook(time_ms, tuple(pairs))


def changes_of(webhook: Webhook) -> list[Change]:
    """The presence changes a webhook reports, in order; other events and channels are ignored."""
    at = datetime.fromtimestamp(webhook.time_ms / 1000, UTC)
    found = []
    for name, channel in webhook.events:
        subject = subject_of(channel)
        if subject is not None and name in (OCCUPIED, VACATED):
            found.append(Change(subject, name == OCCUPIED, at))
    return found


def drift(
    occupied: Collection[str], stored: Mapping[str, PresenceState], *, at: datetime
) -> list[Change]:
    """What must change so the stored state matches Soketi's ``occupied`` channels.

    ``stored`` holds the states of every account online in the store or occupied in
    Soketi. States changed at or after ``at`` (when Soketi was asked) are newer than the
    answer and are left alone.
    """
    subjects = {s.key: s for s in filter(None, map(subject_of, occupied))}
    changes = []
    for key, subject in sorted(subjects.items()):
        state = stored.get(key)
        if state is None or (not state.online and state.since < at):
            changes.append(Change(subject, True, at))
    for key, state in sorted(stored.items()):
        gone = subject_of_key(key)
        if gone is not None and state.online and key not in subjects and state.since < at:
            changes.append(Change(gone, False, at))
    return changes


def event_of(change: Change, previous: PresenceState | None) -> Event:
    """The ``presence.*`` envelope of ``change``; its id names the state it replaces."""
    kind = "presence.online" if change.online else "presence.offline"
    replaced = "never" if previous is None else str(_ms(previous.since))
    digest = hashlib.sha256(f"{change.subject.key}|{kind}|{replaced}".encode()).hexdigest()
    envelope = {
        "id": f"presence-{digest[:32]}",
        "type": kind,
        "occurredAt": change.at.isoformat(timespec="milliseconds"),
        "data": {"subjectId": change.subject.id, "subjectType": change.subject.type},
        "source": "bazaar-fanout",
    }
    return parse(orjson.dumps(envelope))


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _to_ms(at: datetime) -> datetime:
    """``at`` truncated to milliseconds, as BSON stores it (compare-and-set compares it)."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class ReplayGuard:
    """Signatures of webhooks accepted in the last ``MAX_AGE_MS``, to refuse a replayed body."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def first_time(self, signature: str, time_ms: int, now_ms: int) -> bool:
        """Remember ``signature``; say whether it was new."""
        horizon = now_ms - MAX_AGE_MS
        for old in [s for s, at in self._seen.items() if at < horizon]:
            del self._seen[old]
        if signature in self._seen:
            return False
        self._seen[signature] = time_ms
        return True


class Presence:
    """Applies presence changes: store, publish, and keep ``accounts_online`` current."""

    def __init__(self, ctx: WebContext, clock: Callable[[], float] = time.time) -> None:
        self._ctx = ctx
        self._store = ctx.presence
        self._clock = clock
        self._replays = ReplayGuard()

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
            applied = [await self.apply(change) for change in changes]
            await self._count()
        except Exception as error:  # Soketi never retries: log; reconcile repairs
            log.warning("fanout.presence_failed", error=f"{type(error).__name__}: {error}")
            return web.json_response({"error": "presence not stored"}, status=503)
        return web.json_response({"changes": len(changes), "applied": sum(applied)})

    async def apply(self, change: Change) -> bool:
        """Publish and store ``change`` unless the stored state already says so or is newer."""
        change = Change(change.subject, change.online, _to_ms(change.at))
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

    async def reconcile(self) -> int:
        """Compare the store with Soketi's occupied personal channels; apply the drift."""
        at = _to_ms(datetime.fromtimestamp(self._clock(), UTC))
        occupied: set[str] = set()
        for prefix in PERSONAL_PREFIXES:
            occupied |= await self._ctx.soketi.occupied_channels(prefix)
        keys = {s.key for s in filter(None, map(subject_of, occupied))}
        stored = {state.key: state for state in await self._store.online()}
        stored.update(await self._store.many(keys - stored.keys()))
        applied = sum([await self.apply(change) for change in drift(occupied, stored, at=at)])
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
