"""Keyed lanes: messages that share a key reach each ordered step in arrival order.

A lane (``handlers.ordering``: a conversation's events, or one order's) must reach
subscribers in publish order even though the worker handles hundreds of messages at once.
Holding a lock per lane for a message's whole processing would keep order, but it
serialises every MongoDB round trip of a lane and caps a busy chat at a few dozen messages
a second. So only the two steps where order
shows are ordered:

- ``NUMBER``: taking history cursors, so a channel's cursors follow publish order;
- ``SEND``: handing deliveries to Soketi (the trigger batcher keeps a channel's requests
  in the order they were handed over).

Each message takes a ``Turn`` in its lane on arrival, before its first ``await``. It runs
its lookups concurrently with everyone else; before an ordered step it waits until the
message ahead of it in the lane has passed that step (or finished: a duplicate, a failure,
a drop). Events without a lane get a turn that never waits. A lane exists only while one
of its turns is unfinished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Final

#: The ordered steps, in the order a message passes them.
NUMBER: Final = 0
SEND: Final = 1
_STEPS: Final = 2


class Turn:
    """One message's place in its lane (``Lanes.turn``).

    A step counts as passed for the turns behind only once every turn ahead has passed it
    too: a message that finishes early (a duplicate, a failure) hands its steps on when the
    one ahead of it passes them, so nobody overtakes a message still on its way.
    """

    __slots__ = ("_ahead", "_key", "_lanes", "_passed", "_then")

    def __init__(self, lanes: Lanes | None, key: str | None, ahead: Turn | None) -> None:
        self._lanes = lanes
        self._key = key
        self._ahead = ahead
        steps = _STEPS if lanes is not None else 0
        self._passed = [asyncio.Event() for _ in range(steps)]
        self._then: list[list[Callable[[], None]]] = [[] for _ in range(steps)]

    async def wait(self, step: int) -> None:
        """Return once every message ahead has passed ``step`` (at once without a lane)."""
        ahead = self._ahead
        if ahead is None:
            return
        await ahead._passed[step].wait()
        if step == _STEPS - 1:
            self._ahead = None  # everything ahead is past every step: let it be collected

    def passed(self, step: int) -> None:
        """This message has passed ``step`` and every step before it (after ``wait(step)``)."""
        for earlier in range(step + 1 if self._lanes is not None else 0):
            self._pass(earlier)

    def finish(self) -> None:
        """This message is done, whatever became of it: it no longer holds anyone up."""
        if self._lanes is None or self._key is None:
            return
        for step in range(_STEPS):
            if self._passed[step].is_set():
                continue
            ahead = self._ahead
            if ahead is None or ahead._passed[step].is_set():
                self._pass(step)
            else:
                ahead._then[step].append(partial(self._pass, step))
        self._ahead = None

    def _pass(self, step: int) -> None:
        event = self._passed[step]
        if event.is_set():
            return
        event.set()
        then, self._then[step] = self._then[step], []
        for callback in then:
            callback()
        if step == _STEPS - 1 and self._lanes is not None and self._key is not None:
            # Past every step, and so is everyone ahead: a newcomer need not wait for us.
            self._lanes._leave(self._key, self)


#: The turn of a message without a lane.
UNORDERED: Final = Turn(None, None, None)


class Lanes:
    """One lane per key: the last turn taken in it, dropped once that turn is past every step."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, Turn] = {}

    def __len__(self) -> int:
        """How many lanes have a turn not yet past every step."""
        return len(self._last)

    def turn(self, key: str | None) -> Turn:
        """A new turn at the end of ``key``'s lane (``None``: no lane, never waits).

        Take it before the message's first ``await``: the place in line is taken here.
        """
        if key is None:
            return UNORDERED
        turn = Turn(self, key, self._last.get(key))
        self._last[key] = turn
        return turn

    def _leave(self, key: str, turn: Turn) -> None:
        if self._last.get(key) is turn:
            del self._last[key]
