"""What to decide: per event type, what to look up in MongoDB and what to push where.

``route(event)`` gives the event's ``Handler``; the worker calls
``handler.decide(event, await handler.load(event, store))``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from handlers import accounts, messages, orders, products, system
from handlers.model import NO_LOOKUPS, Delivery, NoLookups, Store
from schemas import Event

EventT = TypeVar("EventT")
LookupsT = TypeVar("LookupsT")


@dataclass(frozen=True, slots=True)
class Handler(Generic[EventT, LookupsT]):
    """How one event type is handled: ``load`` awaits the store, ``decide`` is pure."""

    load: Callable[[EventT, Store], Awaitable[LookupsT]]
    decide: Callable[[EventT, LookupsT], list[Delivery]]


async def load_nothing(event: object, store: Store) -> NoLookups:
    """The ``load`` of events that need no enrichment: it never touches the store."""
    return NO_LOOKUPS


def _pair(
    load: Callable[[EventT, Store], Awaitable[LookupsT]],
    decide: Callable[[EventT, LookupsT], list[Delivery]],
) -> Handler[Any, Any]:
    """A handler whose ``load`` and ``decide`` mypy has checked agree on event and lookups."""
    return Handler(load, decide)


#: Every catalogue type's handler.
HANDLERS: Mapping[str, Handler[Any, Any]] = {
    "message.created": _pair(messages.load_message_created, messages.decide_message_created),
    "typing.started": _pair(load_nothing, messages.decide_typing_started),
    "typing.stopped": _pair(load_nothing, messages.decide_typing_stopped),
    "order.created": _pair(orders.load_order_created, orders.decide_order_created),
    "order.status_changed": _pair(load_nothing, orders.decide_order_status_changed),
    "payment.received": _pair(load_nothing, orders.decide_payment_received),
    "product.stock_low": _pair(products.load_product, products.decide_product_stock_low),
    "product.approved": _pair(products.load_product, products.decide_product_approved),
    "product.rejected": _pair(products.load_product, products.decide_product_rejected),
    "user.registered": _pair(accounts.load_user_registered, accounts.decide_user_registered),
    "seller.registered": _pair(accounts.load_seller_registered, accounts.decide_seller_registered),
    "system.alert": _pair(load_nothing, system.decide_system_alert),
    "presence.online": _pair(accounts.load_presence, accounts.decide_presence_online),
    "presence.offline": _pair(accounts.load_presence, accounts.decide_presence_offline),
}


def route(event: Event) -> Handler[Any, Any]:
    """The handler of ``event``'s type (every parsed event has one)."""
    return HANDLERS[event.type]


__all__ = ["HANDLERS", "Handler", "load_nothing", "route"]
