"""Keyed lanes: messages that share a key are handled one at a time, in arrival order.

A chat's events (``message.created``, ``typing.*``) all go to one ``private-chat-{id}``
channel, and subscribers must see them in publish order even though the worker handles
hundreds of messages at once. Each conversation gets a lane: an ``asyncio.Lock``, which
admits its waiters first-come first-served, so a message enters its lane in the order it
was delivered as long as it asks for the lane before its first ``await``. Events without a
lane (``None``) never wait. A lane exists only while someone holds or waits for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

import orjson

#: Event type families whose ``data.conversationId`` names the lane.
LANED_FAMILIES = ("message.", "typing.")


def lane_key(body: bytes) -> str | None:
    """The conversation a raw message belongs to, or ``None`` (no lane) for anything else.

    Cheap and forgiving on purpose: it runs before parsing, and whatever it cannot read
    simply gets no lane; the pipeline's own parse decides whether the message is valid.
    """
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict):
        return None
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type.startswith(LANED_FAMILIES):
        return None
    data = envelope.get("data")
    if not isinstance(data, dict):
        return None
    conversation = data.get("conversationId")
    return conversation if isinstance(conversation, str) and conversation else None


@dataclass(slots=True)
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holders plus waiters; the lane is dropped when it reaches 0


class Lanes:
    """One FIFO lane per key, created on first use and dropped when idle."""

    __slots__ = ("_lanes",)

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}

    def __len__(self) -> int:
        """How many lanes are held or awaited right now."""
        return len(self._lanes)

    def hold(self, key: str | None) -> Held:
        """An async context manager holding ``key``'s lane (``None``: no lane, no waiting).

        Call it, and enter it, before the message's first ``await``: a waiter's place in
        line is taken when it is entered.
        """
        return Held(self, key)

    def _join(self, key: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.users += 1
        return lane

    def _leave(self, key: str, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0:
            del self._lanes[key]


class Held:
    """Holding one lane; returned by ``Lanes.hold``."""

    __slots__ = ("_key", "_lane", "_lanes")

    def __init__(self, lanes: Lanes, key: str | None) -> None:
        self._lanes = lanes
        self._key = key
        self._lane: _Lane | None = None

    async def __aenter__(self) -> None:
        if self._key is None:
            return
        lane = self._lanes._join(self._key)
        try:
            # Uncontended, this returns without yielding; contended, it queues us FIFO.
            await lane.lock.acquire()
        except BaseException:  # cancelled while waiting: give the place up
            self._lanes._leave(self._key, lane)
            raise
        self._lane = lane

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lane, self._lane = self._lane, None
        if lane is None or self._key is None:
            return
        lane.lock.release()
        self._lanes._leave(self._key, lane)
