"""Account events: ``user.registered``, ``seller.registered``, ``presence.online``/``offline``."""

from __future__ import annotations

from typing import Literal

from schemas.base import EnvelopeFields, Id, Model
from schemas.fields import AccountType


class UserRegisteredData(Model):
    """The new user's id."""

    user_id: Id


class UserRegistered(EnvelopeFields):
    """``user.registered``: a shopper signed up."""

    type: Literal["user.registered"]
    data: UserRegisteredData


class SellerRegisteredData(Model):
    """The new shop's id."""

    shop_id: Id


class SellerRegistered(EnvelopeFields):
    """``seller.registered``: a shop signed up."""

    type: Literal["seller.registered"]
    data: SellerRegisteredData


class PresenceData(Model):
    """The account whose personal channel became occupied or vacated."""

    subject_id: Id
    subject_type: AccountType


class PresenceOnlineData(PresenceData):
    """``presence.online`` data."""


class PresenceOfflineData(PresenceData):
    """``presence.offline`` data."""


class PresenceOnline(EnvelopeFields):
    """``presence.online``: an account came online (from a Soketi webhook)."""

    type: Literal["presence.online"]
    data: PresenceOnlineData


class PresenceOffline(EnvelopeFields):
    """``presence.offline``: an account went offline (from a Soketi webhook)."""

    type: Literal["presence.offline"]
    data: PresenceOfflineData
