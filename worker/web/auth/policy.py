"""Who may subscribe to which channel (contract section 5): exact names, a pure decision.

``parse_channel`` (``handlers.channels``) reads a name or refuses it; ``load_facts``
awaits the few MongoDB facts a name needs (a conversation's members, an order's parties);
``decide`` has no ``await``, no clock and no globals, and is tested with tables of cases.

=============================  ==============================================
channel                        allowed
=============================  ==============================================
``private-user-{id}``          role ``user`` or ``admin`` with that id
``private-seller-{id}``        role ``seller`` with that id
``private-admin``              role ``admin``
``private-cache-admin-stats``  role ``admin``
``private-chat-{id}``          any subject whose id is among the members
``private-order-{id}``         its customer (``user``), one of its shops
                               (``seller``), or any ``admin``
``public``                     never asked (pusher-js does not): refused
anything else                  refused
=============================  ==============================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from handlers.channels import PUBLIC, ChannelRef, parse_channel
from worker.web.auth.subject import Subject


@dataclass(frozen=True, slots=True)
class OrderParties:
    """Who an order belongs to: the customer's id and its shops' ids, as strings."""

    customer_id: str | None
    shop_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Facts:
    """What MongoDB said about the channel's conversation or order; absent means not found."""

    members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    orders: Mapping[str, OrderParties] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether the subject may subscribe, and a short machine reason either way."""

    allowed: bool
    reason: str


class AccessLookups(Protocol):
    """The MongoDB reads channel authorization needs (``worker.mongo.gateway.AccessStore``)."""

    async def conversation_members(self, conversation_id: str) -> frozenset[str] | None: ...

    async def order_parties(self, order_id: str) -> tuple[str | None, frozenset[str]] | None: ...


async def load_facts(ref: ChannelRef | None, lookups: AccessLookups) -> Facts:
    """Read only what ``ref`` needs: a conversation's members or an order's parties."""
    if ref is None:
        return Facts()
    if ref.kind == "chat":
        members = await lookups.conversation_members(ref.id)
        return Facts(members={} if members is None else {ref.id: members})
    if ref.kind == "order":
        parties = await lookups.order_parties(ref.id)
        if parties is None:
            return Facts()
        customer_id, shop_ids = parties
        return Facts(orders={ref.id: OrderParties(customer_id, shop_ids)})
    return Facts()


def decide(subject: Subject, channel: str, facts: Facts) -> Decision:
    """Whether ``subject`` may subscribe to ``channel``, given ``facts`` from MongoDB."""
    if channel == PUBLIC:
        return Decision(False, "public_channel_needs_no_auth")
    ref = parse_channel(channel)
    if ref is None:
        return Decision(False, "unknown_channel")
    if ref.kind == "admin":
        return _when(subject.role == "admin", "admin_only")
    if ref.kind == "admin_stats":  # private-cache-admin-stats: the admins' live figures
        return _when(subject.role == "admin", "admin_only")
    if ref.kind == "user":
        # Contract section 5: "role user or admin with that id" - an admin's own channel only.
        return _when(subject.role in ("user", "admin") and subject.id == ref.id, "not_your_channel")
    if ref.kind == "seller":
        return _when(subject.role == "seller" and subject.id == ref.id, "not_your_channel")
    if ref.kind == "chat":
        # Not found and not a member answer alike, so ids cannot be probed.
        return _when(subject.id in facts.members.get(ref.id, frozenset()), "not_a_member")
    parties = facts.orders.get(ref.id)
    if subject.role == "admin":
        return Decision(True, "allowed")
    if parties is None:
        return Decision(False, "not_an_order_party")
    customer = subject.role == "user" and subject.id == parties.customer_id
    shop = subject.role == "seller" and subject.id in parties.shop_ids
    return _when(customer or shop, "not_an_order_party")


def _when(allowed: bool, refusal: str) -> Decision:
    return Decision(True, "allowed") if allowed else Decision(False, refusal)
