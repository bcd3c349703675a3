"""Channel names (CONTRACT sections 3 and 5): the one place they are built and read.

Every builder refuses an id outside ``[A-Za-z0-9_-]{1,64}``, so no id can forge another
channel's name; schemas already guarantee that for ids from events, and ``is_id`` lets
handlers check ids read from MongoDB before building a name from them. ``parse_channel``
reads a name back exactly (authorization, presence webhooks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from schemas.base import ID_PATTERN

PRIVATE_ADMIN = "private-admin"
#: Admin live stats: a Pusher cache channel, so Soketi replays the last figures on subscribe.
ADMIN_STATS: Final = "private-cache-admin-stats"
PUBLIC = "public"
USER_PREFIX: Final = "private-user-"
SELLER_PREFIX: Final = "private-seller-"
CHAT_PREFIX: Final = "private-chat-"
ORDER_PREFIX: Final = "private-order-"
#: The prefixes of personal channels: someone on one is online (presence).
PERSONAL_PREFIXES: Final = (USER_PREFIX, SELLER_PREFIX)

_ID = re.compile(ID_PATTERN)

#: The kinds of channel a name can be read as.
Kind = Literal["user", "seller", "admin", "chat", "order", "admin_stats"]

_ID_BODY: Final = ID_PATTERN.removeprefix("^").removesuffix("$")
# One exact shape per kind; ``fullmatch`` means nothing may precede or follow the id.
_PATTERNS: Final[tuple[tuple[Kind, re.Pattern[str]], ...]] = (
    ("user", re.compile(rf"{USER_PREFIX}({_ID_BODY})", re.ASCII)),
    ("seller", re.compile(rf"{SELLER_PREFIX}({_ID_BODY})", re.ASCII)),
    ("chat", re.compile(rf"{CHAT_PREFIX}({_ID_BODY})", re.ASCII)),
    ("order", re.compile(rf"{ORDER_PREFIX}({_ID_BODY})", re.ASCII)),
)


@dataclass(frozen=True, slots=True)
class ChannelRef:
    """A channel name read exactly: its kind and the id it carries (``""`` for admin)."""

    kind: Kind
    id: str


def parse_channel(name: str) -> ChannelRef | None:
    """The exact reading of ``name``, or ``None`` for ``public`` and anything unknown."""
    if name == PRIVATE_ADMIN:
        return ChannelRef("admin", "")
    if name == ADMIN_STATS:
        return ChannelRef("admin_stats", "")
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(name)
        if match is not None:
            return ChannelRef(kind, match.group(1))
    return None


def is_id(value: str) -> bool:
    """Whether ``value`` is an id a channel name may carry."""
    return _ID.fullmatch(value) is not None


def _checked(account_id: str) -> str:
    if not is_id(account_id):
        raise ValueError(f"not a valid id for a channel name: {account_id[:80]!r}")
    return account_id


def private_user(user_id: str) -> str:
    """The personal channel of a user: ``private-user-{id}``."""
    return f"{USER_PREFIX}{_checked(user_id)}"


def private_seller(shop_id: str) -> str:
    """The personal channel of a shop: ``private-seller-{id}``."""
    return f"{SELLER_PREFIX}{_checked(shop_id)}"


def private_chat(conversation_id: str) -> str:
    """A conversation's channel: ``private-chat-{id}``."""
    return f"{CHAT_PREFIX}{_checked(conversation_id)}"


def private_order(order_id: str) -> str:
    """An order's channel: ``private-order-{id}``."""
    return f"{ORDER_PREFIX}{_checked(order_id)}"


def private_account(account_type: Literal["user", "seller"], account_id: str) -> str:
    """The personal channel of a user or a shop, by account type."""
    if account_type == "user":
        return private_user(account_id)
    return private_seller(account_id)
