"""Which acks may be merged: one ``basic.ack`` with ``multiple`` for a run of finished messages.

A ``multiple`` ack settles every unacked delivery on its channel up to its tag, so it may
only be sent when no message at or below that tag is still being worked on (in a batch,
on the per-message path, held for an open circuit, being retried or dead-lettered).
``OpenTags`` knows which deliveries are open, per channel, from arrival until their work
ends; ``plan`` splits the messages a batch is about to ack into the runs one ack can
cover and the rest, acked one by one. Nothing here talks to the broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

M = TypeVar("M")


def _key(message: object) -> tuple[object, int] | None:
    """The message's channel and delivery tag, or ``None`` when it has either not (a test's
    stand-in) or its channel is gone (aio-pika raises then): such a message is always acked
    on its own."""
    try:
        tag = getattr(message, "delivery_tag", None)
        channel = getattr(message, "channel", None)
    except Exception:  # aio-pika: ChannelInvalidStateError once the channel is closed
        return None
    if not isinstance(tag, int) or channel is None:
        return None
    return channel, tag


class OpenTags:
    """Delivery tags received and not yet finished, per channel (read once, on arrival)."""

    __slots__ = ("_keys", "_open")

    def __init__(self) -> None:
        self._open: dict[object, set[int]] = {}
        self._keys: dict[int, tuple[object, int]] = {}  # by id() of a message still open

    def add(self, message: object) -> None:
        """``message`` arrived: its tag is open until ``discard``."""
        key = _key(message)
        if key is not None:
            self._keys[id(message)] = key
            self._open.setdefault(key[0], set()).add(key[1])

    def discard(self, message: object) -> None:
        """``message``'s work is over (settled, handed back or abandoned)."""
        key = self._keys.pop(id(message), None)
        if key is None:
            return
        tags = self._open.get(key[0])
        if tags is not None:
            tags.discard(key[1])
            if not tags:
                del self._open[key[0]]

    def plan(self, messages: Sequence[M]) -> tuple[list[tuple[M, list[M]]], list[M]]:
        """Split ``messages`` (finished, about to be acked) into runs and the rest.

        A run is ``(last, covered)``: every open tag of ``last``'s channel up to ``last``'s
        belongs to ``covered``, so one ``multiple`` ack on ``last`` settles exactly them.
        A run of one is not worth it: its message goes with the rest.
        """
        by_channel: dict[object, dict[int, M]] = {}
        rest: list[M] = []
        for message in messages:
            key = self._keys.get(id(message))
            if key is None:
                rest.append(message)
            else:
                by_channel.setdefault(key[0], {})[key[1]] = message
        runs: list[tuple[M, list[M]]] = []
        for channel, mine in by_channel.items():
            covered: list[M] = []
            for tag in sorted(self._open.get(channel, ())):
                found = mine.get(tag)
                if found is None:  # an open delivery that is not ours: the run ends here
                    break
                covered.append(found)
            if len(covered) > 1:
                runs.append((covered[-1], covered))
                taken = {id(m) for m in covered}
                rest.extend(m for m in mine.values() if id(m) not in taken)
            else:
                rest.extend(mine.values())
        return runs, rest
