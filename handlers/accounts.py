"""Accounts: registrations (to the admins) and presence (to the admins and to the chats).

An account's presence reaches the admins (``user-online`` / ``user-offline`` on
``private-admin``) and every conversation it is a member of (``presence-changed`` on
``private-chat-{id}``, so the other member's inbox shows it online), at most
``PRESENCE_CONVERSATIONS_MAX`` of them: the most recently updated, as an inbox lists them.
"""

from __future__ import annotations

from typing import Final

from handlers import channels
from handlers.model import AccountLookups, Delivery, PresenceLookups, Store
from handlers.payloads import payload
from schemas import PresenceOffline, PresenceOnline, SellerRegistered, UserRegistered

#: The conversations one presence change reaches, at most: a shop with thousands of chats
#: costs one history entry and one Pusher event per chat, so only the latest hear it.
PRESENCE_CONVERSATIONS_MAX: Final = 100
#: The Pusher event a conversation's members receive when one of them comes or goes.
PRESENCE_CHANGED: Final = "presence-changed"


async def load_user_registered(event: UserRegistered, store: Store) -> AccountLookups:
    """The new user, from ``users``."""
    user_id = event.data.user_id
    return AccountLookups((await store.users((user_id,))).get(user_id))


def decide_user_registered(event: UserRegistered, found: AccountLookups) -> list[Delivery]:
    """``new-user`` to the admins, with the user's name and email."""
    user = found.account
    body = payload(event, name=user.name if user else None, email=user.email if user else None)
    return [Delivery(channels.PRIVATE_ADMIN, "new-user", body)]


async def load_seller_registered(event: SellerRegistered, store: Store) -> AccountLookups:
    """The new shop, from ``shops``."""
    shop_id = event.data.shop_id
    return AccountLookups((await store.shops((shop_id,))).get(shop_id))


def decide_seller_registered(event: SellerRegistered, found: AccountLookups) -> list[Delivery]:
    """``new-seller`` to the admins, with the shop's name."""
    body = payload(event, name=found.account.name if found.account else None)
    return [Delivery(channels.PRIVATE_ADMIN, "new-seller", body)]


async def load_presence(event: PresenceOnline | PresenceOffline, store: Store) -> PresenceLookups:
    """The account, from ``users`` or ``shops`` by ``subjectType``, and its conversations."""
    subject_id = event.data.subject_id
    lookup = store.users if event.data.subject_type == "user" else store.shops
    account = lookup((subject_id,))  # asked first: it may start before being awaited
    conversations = await store.conversations_of((subject_id,), PRESENCE_CONVERSATIONS_MAX)
    return PresenceLookups((await account).get(subject_id), tuple(conversations))


def decide_presence_online(event: PresenceOnline, found: PresenceLookups) -> list[Delivery]:
    """``user-online`` to the admins with the name; ``presence-changed`` to its chats."""
    body = payload(event, name=found.account.name if found.account else None)
    return [Delivery(channels.PRIVATE_ADMIN, "user-online", body), *_to_chats(event, found)]


def decide_presence_offline(event: PresenceOffline, found: PresenceLookups) -> list[Delivery]:
    """``user-offline`` to the admins with the name; ``presence-changed`` to its chats."""
    body = payload(event, name=found.account.name if found.account else None)
    return [Delivery(channels.PRIVATE_ADMIN, "user-offline", body), *_to_chats(event, found)]


def _to_chats(event: PresenceOnline | PresenceOffline, found: PresenceLookups) -> list[Delivery]:
    """``presence-changed`` ``{subjectId, subjectType, online, at}`` to each conversation."""
    body = payload(event, online=event.type == "presence.online", at=event.timestamp_ms)
    chats = found.conversations[:PRESENCE_CONVERSATIONS_MAX]
    return [
        Delivery(channels.private_chat(chat), PRESENCE_CHANGED, body)
        for chat in dict.fromkeys(chats)
        if channels.is_id(chat)
    ]
