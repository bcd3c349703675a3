"""Pure tests of presence ordering, the grace schedule, per-account locks and the chat fan-out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest

from handlers import route
from handlers.accounts import PRESENCE_CHANGED, PRESENCE_CONVERSATIONS_MAX
from handlers.model import Account, PresenceLookups
from schemas import Event, parse_event
from worker.web.presence import KeyedLocks
from worker.web.presence_rules import MAX_AGE_MS, Change, Pending, PersonalAccount, Recency

NOW_MS = 1_800_000_000_000
AT = datetime.fromtimestamp(NOW_MS / 1000, UTC)
SHOP = PersonalAccount("seller", "s1")
USER = PersonalAccount("user", "u1")


def test_personal_accounts_name_their_channel() -> None:
    """A user's channel is private-user-{id}, a shop's private-seller-{id}."""
    assert USER.channel == "private-user-u1"
    assert SHOP.channel == "private-seller-s1"


@pytest.mark.parametrize(
    ("arrivals", "admitted"),
    [
        pytest.param([("k", 10), ("k", 17)], [True, True], id="in order"),
        pytest.param([("k", 17), ("k", 10)], [True, False], id="vacate after the later occupy"),
        pytest.param([("k", 10), ("k", 10)], [True, True], id="same millisecond"),
        pytest.param([("a", 17), ("b", 10)], [True, True], id="accounts apart"),
    ],
)
def test_recency_ignores_what_is_older_than_the_newest(
    arrivals: list[tuple[str, int]], admitted: list[bool]
) -> None:
    """Of one account's webhooks, one older than the newest already seen is not applied."""
    recency = Recency()
    assert [recency.admit(key, NOW_MS + t) for key, t in arrivals] == admitted


def test_recency_forgets_what_verify_would_refuse_anyway() -> None:
    """Entries older than the webhook window are dropped, so memory stays bounded."""
    recency = Recency()
    for i in range(100):
        recency.admit(f"user:{i}", NOW_MS)
    recency.admit("user:late", NOW_MS + MAX_AGE_MS + 1)
    assert len(recency) == 1


def _offline(subject: PersonalAccount) -> Change:
    return Change(subject, False, AT)


def test_pending_offlines_come_due_in_order() -> None:
    """Held offlines are taken once due, earliest first; nothing is due before its time."""
    pending = Pending()
    assert pending.next_due_s() is None
    pending.add(_offline(USER), due_s=13.0)
    pending.add(_offline(SHOP), due_s=12.0)
    assert pending.next_due_s() == 12.0
    assert pending.pop_due(11.9) == []
    assert pending.pop_due(13.0) == [_offline(SHOP), _offline(USER)]
    assert len(pending) == 0


def test_pending_keeps_the_first_vacate_and_a_return_cancels_it() -> None:
    """A second vacate does not postpone the first; the account coming back cancels it."""
    pending = Pending()
    pending.add(_offline(USER), due_s=3.0)
    pending.add(Change(USER, False, AT.replace(second=59)), due_s=9.0)
    assert pending.next_due_s() == 3.0
    assert pending.cancel(USER.key)
    assert not pending.cancel(USER.key)
    assert pending.pop_due(100.0) == []


async def test_keyed_locks_serialise_one_key_in_arrival_order() -> None:
    """Holders of one key run one at a time in arrival order; other keys are not held up."""
    locks = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def hold(key: str, name: str, wait: bool = False) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            if wait:
                await release.wait()
            order.append(f"{name}-")

    first = asyncio.create_task(hold("k", "a", wait=True))
    await asyncio.sleep(0)
    second = asyncio.create_task(hold("k", "b"))
    other = asyncio.create_task(hold("other", "c"))
    await other
    assert order == ["a+", "c+", "c-"]
    release.set()
    await asyncio.gather(first, second)
    assert order == ["a+", "c+", "c-", "a-", "b+", "b-"]
    assert len(locks) == 0


def _presence(kind: str, subject_type: str, subject_id: str) -> Event:
    envelope = {
        "id": "presence-1",
        "type": kind,
        "occurredAt": "2027-01-15T08:00:00.000Z",
        "data": {"subjectId": subject_id, "subjectType": subject_type},
    }
    return parse_event(orjson.dumps(envelope))


@pytest.mark.parametrize(
    ("kind", "admin_event", "online"),
    [("presence.online", "user-online", True), ("presence.offline", "user-offline", False)],
)
def test_presence_reaches_the_admins_and_every_chat(
    kind: str, admin_event: str, online: bool
) -> None:
    """The admins get user-online/offline with the name; each chat gets presence-changed."""
    event = _presence(kind, "seller", "s1")
    found = PresenceLookups(Account("s1", "Spice Shop"), ("c1", "c2", "c1", "bad id"))
    deliveries = route(event).decide(event, found)
    assert [(d.channel, d.event) for d in deliveries] == [
        ("private-admin", admin_event),
        ("private-chat-c1", PRESENCE_CHANGED),
        ("private-chat-c2", PRESENCE_CHANGED),
    ]
    at = NOW_MS  # 2027-01-15T08:00Z
    assert deliveries[0].payload["name"] == "Spice Shop"
    for chat in deliveries[1:]:
        assert chat.payload == {
            "subjectId": "s1",
            "subjectType": "seller",
            "online": online,
            "at": at,
            "eventId": "presence-1",
            "timestamp": at,
        }


def test_presence_reaches_at_most_the_cap_of_chats() -> None:
    """An account in thousands of conversations reaches only the cap's worth of chats."""
    event = _presence("presence.online", "user", "u1")
    chats = tuple(f"c{i}" for i in range(PRESENCE_CONVERSATIONS_MAX + 50))
    deliveries = route(event).decide(event, PresenceLookups(None, chats))
    assert len(deliveries) == 1 + PRESENCE_CONVERSATIONS_MAX
    assert deliveries[0].payload["name"] is None
