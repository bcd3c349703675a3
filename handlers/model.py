"""Values handlers produce and consume: deliveries, looked-up records and the Store protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

#: A Pusher payload: JSON-serialisable, built by ``decide`` and never mutated afterwards.
Payload = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Pusher event to one channel: what Soketi is asked to trigger."""

    channel: str
    event: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class Account:
    """A user (collection ``users``) or a shop (collection ``shops``) as the worker sees it.

    ``avatar`` is what a front end puts into ``src``: a file name or URL, never an object.
    """

    id: str
    name: str | None
    avatar: str | None = None
    email: str | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class Product:
    """A product (collection ``products``): name, owning shop and its first image's ``src``."""

    id: str
    name: str | None
    shop_id: str | None
    image: str | None


class Store(Protocol):
    """The MongoDB lookups handlers may await; a missing document is simply absent from the map.

    Every method takes a set of ids (string form; the adapter also matches ObjectId ``_id``s)
    and returns the documents it found keyed by that string id. An unreachable database
    raises; it never answers with an empty map. A lookup may start when it is called, before
    it is awaited, so a handler that needs two asks for both first: one round trip, not two.
    """

    def users(self, ids: Collection[str]) -> Awaitable[Mapping[str, Account]]: ...

    def shops(self, ids: Collection[str]) -> Awaitable[Mapping[str, Account]]: ...

    def products(self, ids: Collection[str]) -> Awaitable[Mapping[str, Product]]: ...

    def conversations_of(
        self, member_ids: Collection[str], limit: int
    ) -> Awaitable[Sequence[str]]: ...


@dataclass(frozen=True, slots=True)
class NoLookups:
    """What ``load`` returns for an event that needs nothing from MongoDB."""


NO_LOOKUPS = NoLookups()


@dataclass(frozen=True, slots=True)
class AccountLookups:
    """One account (user or shop) an event names; ``None`` when MongoDB has no such document."""

    account: Account | None


@dataclass(frozen=True, slots=True)
class PresenceLookups:
    """The account whose presence changed, and its conversations (ids, most recent first)."""

    account: Account | None
    conversations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProductLookups:
    """The product an event names; ``None`` when MongoDB has no such document."""

    product: Product | None
