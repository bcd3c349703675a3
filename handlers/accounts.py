"""Accounts: registrations and presence, all to the admins."""

from __future__ import annotations

from handlers import channels
from handlers.model import AccountLookups, Delivery, Store
from handlers.payloads import payload
from schemas import PresenceOffline, PresenceOnline, SellerRegistered, UserRegistered


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


async def load_presence(event: PresenceOnline | PresenceOffline, store: Store) -> AccountLookups:
    """The account, from ``users`` or ``shops`` according to ``subjectType``."""
    subject_id = event.data.subject_id
    lookup = store.users if event.data.subject_type == "user" else store.shops
    return AccountLookups((await lookup((subject_id,))).get(subject_id))


def decide_presence_online(event: PresenceOnline, found: AccountLookups) -> list[Delivery]:
    """``user-online`` to the admins, with the account's name."""
    body = payload(event, name=found.account.name if found.account else None)
    return [Delivery(channels.PRIVATE_ADMIN, "user-online", body)]


def decide_presence_offline(event: PresenceOffline, found: AccountLookups) -> list[Delivery]:
    """``user-offline`` to the admins, with the account's name."""
    body = payload(event, name=found.account.name if found.account else None)
    return [Delivery(channels.PRIVATE_ADMIN, "user-offline", body)]
