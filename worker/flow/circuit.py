"""Circuit breakers, one per downstream (Soketi, MongoDB).

A run of transient failures opens a circuit: the worker stops consuming, holds the messages
it already has, reports not-ready, and probes the downstream with backoff. The first good
probe closes the circuit and consuming resumes, so an outage neither churns every message
through the retry tiers nor floods the dead-letter queue. Wrong Soketi credentials
(``Misconfigured``) open the Soketi circuit at once and say so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

import structlog

from worker.errors import (
    FanoutError,
    Interrupted,
    Misconfigured,
    SoketiUnavailable,
    StoreUnavailable,
)

log = structlog.get_logger("fanout")

State = Literal["closed", "open"]
Probe = Callable[[], Awaitable[None]]


class Circuit:
    """One downstream's breaker: closed, or open with a reason and a probing task."""

    def __init__(
        self,
        name: str,
        probe: Probe,
        *,
        threshold: int = 5,
        initial_backoff_s: float = 0.25,
        max_backoff_s: float = 15.0,
        on_change: Callable[[Circuit], None] = lambda circuit: None,
    ) -> None:
        self.name = name
        self.reason = ""
        self._probe = probe
        self._threshold = threshold
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._on_change = on_change
        self._failures = 0
        self._closed = asyncio.Event()
        self._closed.set()
        self._prober: asyncio.Task[None] | None = None
        self._misconfigured = False

    @property
    def misconfigured(self) -> bool:
        """Open because the downstream refused our credentials, not because it is down."""
        return self.state == "open" and self._misconfigured

    @property
    def state(self) -> State:
        """``closed`` while the downstream is believed healthy."""
        return "closed" if self._closed.is_set() else "open"

    def record_success(self) -> None:
        """A call to the downstream worked: forget earlier failures."""
        self._failures = 0

    def record_failure(self, error: FanoutError) -> None:
        """A call failed transiently (or with wrong credentials); open after a run of them."""
        self._failures += 1
        if self.state == "open":
            return
        if isinstance(error, Misconfigured) or self._failures >= self._threshold:
            self._open(error)

    async def wait_closed(self) -> None:
        """Return once the circuit is closed."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop probing (worker shutdown)."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober

    def _open(self, error: FanoutError) -> None:
        self.reason = str(error)
        self._misconfigured = isinstance(error, Misconfigured)
        self._closed.clear()
        if isinstance(error, Misconfigured):
            log.critical(
                "fanout.misconfigured",
                downstream=self.name,
                error=self.reason,
                action="stopped consuming until a signed probe is accepted",
            )
        else:
            log.error("fanout.circuit_opened", downstream=self.name, error=self.reason)
        self._on_change(self)
        self._prober = asyncio.create_task(self._probe_until_healthy(), name=f"probe-{self.name}")

    async def _probe_until_healthy(self) -> None:
        delay_s = self._initial_backoff_s
        probes = 0
        while True:
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))  # jitter only
            probes += 1
            try:
                await self._probe()
            except Exception as error:  # any failure keeps the circuit open
                self.reason = str(error) or type(error).__name__
                delay_s = min(delay_s * 2, self._max_backoff_s)
                continue
            break
        self._failures = 0
        self.reason = ""
        self._closed.set()
        self._prober = None
        log.info("fanout.circuit_closed", downstream=self.name, probes=probes)
        self._on_change(self)


class CircuitGate:
    """The gate in front of Soketi calls: open while the circuit is closed."""

    def __init__(self, circuit: Circuit) -> None:
        self._circuit = circuit
        self._released = asyncio.Event()

    def is_open(self) -> bool:
        """True while the circuit is closed."""
        return self._circuit.state == "closed"

    def release(self) -> None:
        """Shutdown: wake every waiter with ``Interrupted``."""
        self._released.set()

    async def wait(self) -> None:
        """Return once the circuit is closed; raise ``Interrupted`` on shutdown."""
        if self.is_open():
            return
        await first_of(self._circuit.wait_closed(), self._released.wait())
        if not self.is_open():
            raise Interrupted("worker stopping while Soketi was unavailable")


async def first_of(*waits: Coroutine[Any, Any, object]) -> None:
    """Return once the first of ``waits`` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class Circuits:
    """The worker's circuits by downstream, and which one an error belongs to."""

    def __init__(self, soketi: Circuit, mongodb: Circuit) -> None:
        self.soketi = soketi
        self.mongodb = mongodb

    @property
    def all(self) -> tuple[Circuit, Circuit]:
        """Every circuit."""
        return (self.soketi, self.mongodb)

    def all_closed(self) -> bool:
        """True when every downstream is believed healthy."""
        return all(c.state == "closed" for c in self.all)

    def may_process(self) -> bool:
        """True when messages may be processed up to the Soketi call.

        An open MongoDB circuit stops everything (nothing can be checked or enriched), and so
        do wrong Soketi credentials; while Soketi is merely down, messages are processed and
        recorded in history, then wait at the ``CircuitGate`` before the Soketi call.
        """
        return self.mongodb.state == "closed" and not self.soketi.misconfigured

    async def wait_may_process(self) -> None:
        """Return once ``may_process()`` holds."""
        while not self.may_process():
            await self.mongodb.wait_closed()
            if self.soketi.misconfigured:
                await self.soketi.wait_closed()

    def owner(self, error: BaseException) -> Circuit | None:
        """The circuit a failure counts against, or ``None`` for errors of the message itself."""
        if isinstance(error, SoketiUnavailable | Misconfigured):
            return self.soketi
        if isinstance(error, StoreUnavailable):
            return self.mongodb
        return None

    async def wait_all_closed(self) -> None:
        """Return once every circuit is closed."""
        while not self.all_closed():
            for circuit in self.all:
                await circuit.wait_closed()

    async def close(self) -> None:
        """Stop every probe."""
        for circuit in self.all:
            await circuit.close()
