"""WebSocket subscribers that count what they receive per event id: lost, duplicated, age.

Each subscriber is a :class:`devtools.watch.PusherSubscriber` on every watched channel
(private ones authenticated as a browser would be). A receipt is keyed by
``(channel, eventId)``; a key seen twice at one subscriber is a duplicate; an event whose
witness receipt never arrives at a subscriber is lost there. Receipts are tallied
incrementally inside ``wait_for``'s predicate, so waiting stays O(1) per message.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.stream import EPHEMERAL, BenchEvent
from devtools.watch import PusherSubscriber, Received, sign_channel

_QUIET_S = 0.5  # after the last expected receipt, how long nothing more may arrive
_QUIET_MAX_S = 3.0
_STALL_S = 20.0  # no new witness receipt for this long: the run is over, the rest is lost


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the subscribers connect and how they sign private channels."""

    host: str
    port: int
    key: str
    secret: str


@dataclass(slots=True)
class _Watch:
    """One subscriber's incremental tally."""

    sub: PusherSubscriber
    done: int = 0
    witnessed: dict[str, float] = field(default_factory=dict)  # event id -> receive wall time
    required: int = 0  # witnessed events that are not ephemeral
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: int = 0


@dataclass(frozen=True, slots=True)
class Tally:
    """What the subscribers got for one run."""

    expected: int
    receipts: int
    lost: int
    dropped: int  # ephemeral events never received (stale typing is dropped by design)
    duplicated: int
    unexpected: int
    first_receive: float  # wall-clock seconds
    last_receive: float
    ages_s: list[float]
    stalled: bool  # receipts stopped arriving before every event was witnessed


class Receivers:
    """``count`` subscribers on every watched channel, counting one run's receipts."""

    def __init__(self, endpoint: Endpoint, channels: Sequence[str], count: int) -> None:
        self._endpoint = endpoint
        self._channels = list(channels)
        self._count = count
        self._watches: list[_Watch] = []
        self._expected: dict[str, tuple[str, float]] = {}  # id -> (witness, sent wall time)
        self._optional: set[str] = set()  # typing events: the worker drops them when stale
        self._offset_s = time.time() - time.monotonic()
        self.on_first_receipt: Callable[[], None] | None = None
        self._first_seen = False

    async def __aenter__(self) -> Receivers:
        key, secret = self._endpoint.key, self._endpoint.secret

        def authorize(socket_id: str, channel: str) -> str:
            return sign_channel(key, secret, socket_id, channel)

        try:
            for _ in range(self._count):
                sub = PusherSubscriber()
                self._watches.append(_Watch(sub))
                await sub.connect(self._endpoint.host, self._endpoint.port, key)
                for channel in self._channels:
                    await sub.subscribe(channel, None if channel == "public" else authorize)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection."""
        for watch in self._watches:
            await watch.sub.close()

    def expect(self, events: Sequence[BenchEvent]) -> None:
        """Declare the events of this run; their ages count from ``sent`` (none until then)."""
        for event in events:
            self._expected[event.event_id] = (event.witness, 0.0)
            if event.type in EPHEMERAL:
                self._optional.add(event.event_id)

    def sent(self, event_id: str, at: float) -> None:
        """Record when ``event_id`` was stamped/sent (wall seconds), the zero of its age."""
        witness, _ = self._expected[event_id]
        self._expected[event_id] = (witness, at)

    async def wait(self, count: int, timeout_s: float, stall_s: float = _STALL_S) -> bool:
        """Wait until every subscriber witnessed ``count`` non-ephemeral events.

        False when nothing new was witnessed for ``stall_s`` or ``timeout_s`` passed.
        """
        deadline = time.monotonic() + timeout_s
        last = self._witnessed()
        while True:
            try:
                for watch in self._watches:
                    await watch.sub.wait_for(
                        lambda got, w=watch: self._consume(w, got) >= count,
                        max(0.01, min(stall_s, deadline - time.monotonic())),
                    )
                return True
            except TimeoutError:
                now = self._witnessed()
                if now == last or time.monotonic() >= deadline:
                    return False
                last = now

    def _witnessed(self) -> int:
        return sum(w.required for w in self._watches)

    async def finish(self, timeout_s: float) -> Tally:
        """Wait for every expected event (or ``timeout_s``), then a quiet spell, and tally."""
        complete = await self.wait(len(self._expected) - len(self._optional), timeout_s)
        await self._quiet()
        return self._tally(stalled=not complete)

    async def _quiet(self) -> None:
        """Let late or duplicate receipts arrive: until nothing new for ``_QUIET_S``."""
        deadline = time.monotonic() + _QUIET_MAX_S
        last = -1
        while time.monotonic() < deadline:
            total = sum(len(w.sub.events()) for w in self._watches)
            if total == last:
                return
            last = total
            await asyncio.sleep(_QUIET_S)

    def _consume(self, watch: _Watch, got: list[Received]) -> int:
        """Tally receipts not yet seen; return how many events this subscriber witnessed."""
        for received in got[watch.done :]:
            data = received.data
            event_id = data.get("eventId") if isinstance(data, dict) else None
            if not isinstance(event_id, str) or event_id not in self._expected:
                watch.unexpected += 1
                continue
            key = (received.channel, event_id)
            watch.seen[key] += 1
            if received.channel == self._expected[event_id][0] and event_id not in watch.witnessed:
                at = received.received_at_monotonic + self._offset_s
                watch.witnessed[event_id] = at
                if event_id not in self._optional:
                    watch.required += 1
                if not self._first_seen:
                    self._first_seen = True
                    if self.on_first_receipt is not None:
                        self.on_first_receipt()
        watch.done = len(got)
        return watch.required

    def _tally(self, *, stalled: bool) -> Tally:
        required = len(self._expected) - len(self._optional)
        for watch in self._watches:
            self._consume(watch, watch.sub.events())
        times = [at for w in self._watches for at in w.witnessed.values()]
        ages = [
            at - self._expected[event_id][1]
            for w in self._watches
            for event_id, at in w.witnessed.items()
            if self._expected[event_id][1] > 0
        ]
        return Tally(
            expected=len(self._expected) * len(self._watches),
            receipts=sum(sum(w.seen.values()) for w in self._watches),
            lost=sum(required - w.required for w in self._watches),
            dropped=sum(
                len(self._optional) - (len(w.witnessed) - w.required) for w in self._watches
            ),
            duplicated=sum(n - 1 for w in self._watches for n in w.seen.values() if n > 1),
            unexpected=sum(w.unexpected for w in self._watches),
            first_receive=min(times, default=0.0),
            last_receive=max(times, default=0.0),
            ages_s=ages,
            stalled=stalled,
        )
