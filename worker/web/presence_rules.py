"""Presence, the pure part: reading Soketi's webhooks and deciding what they change.

``verify`` authenticates a webhook (``X-Pusher-Key``, ``X-Pusher-Signature``: hex
HMAC-SHA256 of the raw body with the app secret; ``time_ms`` no older than 5 minutes nor more
than one minute ahead) and ``ReplayGuard`` refuses a body seen before. ``changes_of`` turns
``channel_occupied`` / ``channel_vacated`` of ``private-user-{id}`` / ``private-seller-{id}``
into ``Change`` values, ``drift`` compares the store with Soketi's occupied channels, and
``event_of`` builds the ``presence.*`` envelope whose id names the state it replaces.

Two in-memory rules keep one account's changes straight when webhooks race (separate HTTP
requests, handled concurrently and possibly out of order): ``Recency`` ignores a webhook
older than the newest one already seen for that account, and ``Pending`` holds a vacated
channel through the grace period, so a reconnect within it (a page reload) cancels the
offline instead of producing an offline/online pair.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import orjson

from handlers.channels import parse_channel, private_account
from schemas import Event
from worker.events import parse
from worker.mongo.presence import PresenceState

MAX_AGE_MS: Final = 5 * 60 * 1000
MAX_AHEAD_MS: Final = 60 * 1000
OCCUPIED: Final = "channel_occupied"
VACATED: Final = "channel_vacated"

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

    @property
    def channel(self) -> str:
        """Its personal channel, ``private-user-{id}`` or ``private-seller-{id}``."""
        return private_account(self.type, self.id)


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
    replaced = "never" if previous is None else str(int(previous.since.timestamp() * 1000))
    digest = hashlib.sha256(f"{change.subject.key}|{kind}|{replaced}".encode()).hexdigest()
    envelope = {
        "id": f"presence-{digest[:32]}",
        "type": kind,
        "occurredAt": change.at.isoformat(timespec="milliseconds"),
        "data": {"subjectId": change.subject.id, "subjectType": change.subject.type},
        "source": "bazaar-fanout",
    }
    return parse(orjson.dumps(envelope))


def to_ms(at: datetime) -> datetime:
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


class Recency:
    """The newest webhook ``time_ms`` seen per account: an older one arriving later is stale.

    Soketi sends each webhook in its own HTTP request, so a vacate and the occupy that
    follows it 7 ms later may arrive in either order; the later event is the truth. Entries
    older than ``horizon_ms`` before the newest webhook are forgotten: ``verify`` refuses
    webhooks that old anyway.
    """

    def __init__(self, horizon_ms: int = MAX_AGE_MS) -> None:
        self._horizon_ms = horizon_ms
        self._newest: OrderedDict[str, int] = OrderedDict()

    def admit(self, key: str, time_ms: int) -> bool:
        """Remember ``time_ms`` for ``key`` unless an event newer than it was already seen."""
        newest = self._newest.get(key)
        if newest is not None and time_ms < newest:
            return False
        self._newest[key] = time_ms
        self._newest.move_to_end(key)
        while self._newest:
            oldest_key, oldest = next(iter(self._newest.items()))
            if oldest >= time_ms - self._horizon_ms:
                break
            del self._newest[oldest_key]
        return True

    def __len__(self) -> int:
        return len(self._newest)


class Pending:
    """Vacated personal channels waiting out the grace period, one per account.

    The first vacate of an account keeps its due time: a reconciliation that sees the same
    empty channel again does not push the offline further away.
    """

    def __init__(self) -> None:
        self._due: dict[str, tuple[Change, float]] = {}

    def add(self, change: Change, due_s: float) -> None:
        """Hold ``change`` (an offline) until ``due_s``, unless one is already held."""
        self._due.setdefault(change.subject.key, (change, due_s))

    def cancel(self, key: str) -> bool:
        """Drop the offline held for ``key`` (the account came back); say whether one was."""
        return self._due.pop(key, None) is not None

    def next_due_s(self) -> float | None:
        """When the next held offline is due, or ``None`` when none is held."""
        return min((due for _, due in self._due.values()), default=None)

    def pop_due(self, now_s: float) -> list[Change]:
        """Take the offlines due at ``now_s``, earliest first."""
        due = sorted((d, key) for key, (_, d) in self._due.items() if d <= now_s)
        return [self._due.pop(key)[0] for _, key in due]

    def __len__(self) -> int:
        return len(self._due)
